"""What the application is made of besides its ingress: a version in a deployment of its own
(`ModelVersion`), the contract and online features a replica starts with, the deployments'
version and resources."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ray import serve

from pipelines.core.settings import load_settings, spec_for
from serving.binds import bind_replica_grpc
from serving.config import FeatureRuleArgs, ServingArgs, replica_options
from serving.contract import RequestContract, contract_from_args, request_contract
from serving.online import OnlineFeatures, open_online_features
from serving.records import Instance, Result
from serving.versions import LocalVersion


@serve.deployment
class ModelVersion:
    """One version in a deployment of its own (`serving.version_deployments`)."""

    def __init__(self, static: dict[str, Any], version: int, max_batch_size: int) -> None:
        bind_replica_grpc()  # the ingress calls it at the node's address
        settings = load_settings()
        online = online_features(static, settings)
        nullable = static_contract(static, settings).nullable
        self.local = LocalVersion.load(settings, static, version, online, max_batch_size, nullable)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.local.resize(int(config["max_batch_size"]))

    async def predict(self, instances: list[Instance]) -> list[Result]:
        return await self.local.predict(instances)


def static_contract(static: dict[str, Any], settings: Any) -> RequestContract:
    """The request contract the application was built with, or, where its arguments carry none
    (a hand-written Serve config), the pipeline spec's."""
    if static.get("contract"):
        rules = {name: FeatureRuleArgs.model_validate(r) for name, r in static["contract"].items()}
        return contract_from_args(rules, static.get("unknown_categories", "refuse"))
    return request_contract(spec_for(settings, static["pipeline"]), static["features"])


def online_features(static: dict[str, Any], settings: Any) -> OnlineFeatures | None:
    if not static["online_features"]:
        return None
    return open_online_features(spec_for(settings, static["pipeline"]), settings, static["features"])


def deployment_version(static: dict[str, Any]) -> str:
    """The deployments' version: the fixed arguments and the serving code. Serve restarts replicas
    when it changes, and only reconfigures them in place (`user_config`) when it does not;
    `serve.run` would otherwise draw a random version on every call and restart replicas for a
    weight change."""
    digest = hashlib.sha256(json.dumps(static, sort_keys=True).encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):  # the whole serving package
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def actor_resources(cpus: float, gpus: float) -> dict[str, float]:
    """What a replica asks Ray for: its CPUs and, for GPU serving, its GPUs (Ray places it on a
    GPU node and sets CUDA_VISIBLE_DEVICES; KubeRay's autoscaler adds a GPU worker for it). Pure."""
    return {"num_cpus": cpus, **({"num_gpus": gpus} if gpus > 0 else {})}


INGRESS_ONGOING = 256
STATIC_KEYS = {
    "pipeline",
    "model_name",
    "entity_key",
    "features",
    "api_keys_env",
    "online_features",
    "replica_cpus",
    "gpus",
    "version_deployments",
    "contract",
    "unknown_categories",
}
"""The arguments fixed for a replica's life (a change restarts replicas); the rest is `user_config`."""


def deployment_plan(parsed: ServingArgs) -> dict[str, Any]:
    """What Serve is given for the application besides the ingress's `user_config`: the static
    arguments, the deployments' version, their options and bounds, the version deployments. Pure."""
    static = parsed.model_dump(include=STATIC_KEYS)
    return {
        "static": static,
        "version": deployment_version(static),
        "options": {
            "ray_actor_options": actor_resources(parsed.replica_cpus, parsed.gpus),
            # fixed, or Serve's autoscaling: not a static key, so a change of either keeps the replicas
            **replica_options(parsed.replicas, parsed.autoscaling),
            # Serve's per-request access log costs more than it tells: the request log has every request.
            "logging_config": {"enable_access_log": False},
        },
        # above the app's own bound, so the app sheds (503 + Retry-After) before Serve would
        "ingress_ongoing": max(INGRESS_ONGOING, parsed.max_concurrent_requests + 64),
        # A version admits two full batches at a time (Serve's default of 5 would cap batches at 5).
        "version_deployments": {
            v.version: max(16, 2 * parsed.max_batch_size) for v in parsed.versions if parsed.version_deployments
        },
        "max_batch_size": parsed.max_batch_size if parsed.version_deployments else None,
        "route_prefix": parsed.route_prefix,
    }


def layout(parsed: ServingArgs) -> str:
    """The fingerprint of `deployment_plan`: two arguments of one layout differ only in what the
    ingress replicas apply in place (versions, weights, shadow, canary, batching). Pure."""
    plan = json.dumps(deployment_plan(parsed), sort_keys=True, default=str)
    return hashlib.sha256(plan.encode()).hexdigest()[:16]
