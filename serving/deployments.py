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
from serving.config import FeatureRuleArgs
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
