"""The pod of a step, built purely from the spec, the step, the run and the settings.

The pod is the single source of truth for both runtimes: `kubernetes` launches it, `local` runs its
container's command, args and env as a subprocess. Nothing here talks to a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import models as k8s

    from pipelines.core.k8s import Toleration
    from pipelines.core.settings import Settings
    from pipelines.core.spec import PipelineSpec, Resources

XCOM_PATH = "/airflow/xcom/return.json"
CONTAINER = "base"  # the name KubernetesPodOperator reads logs from
HOME = "/home/mlcycle"  # the images' HOME (Dockerfile)
WRITABLE = {"tmp": "/tmp", "home": HOME, "results": XCOM_PATH.rsplit("/", 1)[0]}  # noqa: S108 - the pod's own emptyDir
"""What a step writes outside the artifact store (temporary files, the libraries' caches under HOME,
its result), each an emptyDir: the container's root filesystem is read-only."""
RAY_STEPS = frozenset({"canary"})
"""The steps that drive Ray Serve (deploy, move traffic): pods that get the Ray token."""


def drives_ray(step: str, spec: PipelineSpec | None = None) -> bool:
    """Whether a step's pod gets the Ray cluster's token (`k8s_ray_secret`): the steps that drive
    Ray Serve, and the batch partition of a pipeline whose `batch.runtime` is `ray` (it submits
    its Ray Data job to the cluster). Pure."""
    batch = spec.batch if spec is not None else None
    return step in RAY_STEPS or (step == "batch" and batch is not None and batch.runtime == "ray")


def docker_env_from(settings: Settings, step: str, spec: PipelineSpec | None = None) -> list[str]:
    """The variables a step container of runtime `docker` takes from the worker's environment, as
    its pod takes its Secrets: the database and S3 for every step, the Ray token for the steps
    that drive Ray only (`drives_ray`). Pure."""
    return [*settings.docker_env_from, *(settings.docker_ray_env_from if drives_ray(step, spec) else [])]


def secret_refs(settings: Settings, step: str, spec: PipelineSpec | None = None) -> list[dict[str, Any]]:
    """The step container's `envFrom`: the Secret of every step (database, S3) and, for a step that
    drives Ray (`drives_ray`), the Ray token's Secret; never the serving keys. Pure."""
    names = [settings.k8s_env_secret, settings.k8s_ray_secret if drives_ray(step, spec) else None]
    return [{"secretRef": {"name": n}} for n in names if n]


def pod_name(pipeline: str, step: str, worker: int | None = None) -> str:
    """A DNS-1123 name prefix (KubernetesPodOperator appends a random suffix). Pure."""
    suffix = f"-{worker}" if worker is not None else ""
    name = re.sub(r"[^a-z0-9-]+", "-", f"mlcycle-{pipeline}-{step}".lower()).strip("-")
    return name[: 50 - len(suffix)].rstrip("-") + suffix


def step_command(pipeline: str, step: str, run_id: str, worker: int | None = None) -> tuple[list[str], list[str]]:
    """The container's command and args: the one console script every runtime runs. Pure."""
    args = ["step", step, "--pipeline", pipeline, "--run-id", run_id]
    return ["mlcycle"], args + (["--worker", str(worker)] if worker is not None else [])


def resource_requirements(res: Resources, gpu_resource: str = "nvidia.com/gpu") -> dict[str, dict[str, str]]:
    """Requests and limits of a step. CPU and memory are requested as limited (Guaranteed QoS for
    a step that asks for a GPU); a GPU is an extended resource (the spec's name, else the
    platform's `gpu_resource`), so request equals limit. Pure."""
    requests = {"cpu": res.cpu, "memory": res.memory}
    limits = {"cpu": res.cpu, "memory": res.memory}
    if res.gpu:
        name = res.gpu_resource or gpu_resource
        requests[name] = str(res.gpu)
        limits[name] = str(res.gpu)
    return {"requests": requests, "limits": limits}


def tolerations(
    res: Resources, pool: Sequence[Toleration] = (), gpu_resource: str = "nvidia.com/gpu"
) -> list[dict[str, Any]]:
    """The spec's tolerations; a GPU step also gets the GPU pool's (`pool`, from the settings) and
    tolerates the usual GPU-node taint (`<gpu resource>: NoSchedule`): one toleration per taint
    (key and effect), the spec's first. Pure."""
    out = [t.manifest() for t in res.tolerations]
    if res.gpu:
        taint = {"key": res.gpu_resource or gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        for t in [*(p.manifest() for p in pool), taint]:
            if not any((o.get("key"), o.get("effect")) == (t.get("key"), t.get("effect")) for o in out):
                out.append(t)
    return out


def pod_manifest(
    spec: PipelineSpec,
    step: str,
    run_id: str,
    settings: Settings,
    airflow: dict[str, str] | None = None,
    worker: int | None = None,
) -> dict[str, Any]:
    """The step's pod (one trial worker's, with `worker`) as a plain Kubernetes manifest. Pure."""
    res = spec.resources.for_step(step)
    command, args = step_command(spec.name, step, run_id, worker)
    env = {**settings.pod_env(), "MLCYCLE_XCOM_PATH": XCOM_PATH, **(airflow or {})}
    if res.gpu:
        env["NVIDIA_VISIBLE_DEVICES"] = "all"
        env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "args": args,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": resource_requirements(res, settings.k8s_gpu_resource),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": settings.k8s_run_as_user,
            "runAsGroup": settings.k8s_run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": name, "mountPath": path} for name, path in WRITABLE.items()],
    }
    refs = secret_refs(settings, step, spec)
    if refs:
        container["envFrom"] = refs
    labels = {
        "app.kubernetes.io/name": "mlcycle",
        "app.kubernetes.io/component": "step",
        "mlcycle.io/pipeline": spec.name,
        "mlcycle.io/step": step,
    }
    if worker is not None:
        labels["mlcycle.io/worker"] = str(worker)
    if drives_ray(step, spec):  # what the chart's NetworkPolicy lets reach the Ray head
        labels["mlcycle.io/ray-client"] = "true"
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.k8s_service_account,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.k8s_run_as_user,
            "runAsGroup": settings.k8s_run_as_group,
            "fsGroup": settings.k8s_fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": name, "emptyDir": {}} for name in WRITABLE],
        # a step calls no Kubernetes API: no token in the pod
        "automountServiceAccountToken": False,
    }
    if settings.k8s_image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.k8s_image_pull_secrets]
    selector = {**(settings.k8s_gpu_node_selector if res.gpu else {}), **res.node_selector}
    if selector:
        pod_spec["nodeSelector"] = selector
    tols = tolerations(res, settings.k8s_gpu_tolerations, settings.k8s_gpu_resource)
    if tols:
        pod_spec["tolerations"] = tols
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec.name, step, worker),
            "namespace": settings.k8s_namespace,
            "labels": labels,
            "annotations": {"mlcycle.io/run-id": run_id},
        },
        "spec": pod_spec,
    }


def to_v1pod(manifest: dict[str, Any]) -> k8s.V1Pod:
    """The manifest as the kubernetes client's `V1Pod` (for KubernetesPodOperator)."""
    import json

    from kubernetes.client import ApiClient

    response = type("Response", (), {"data": json.dumps(manifest)})()
    pod: k8s.V1Pod = ApiClient().deserialize(response, "V1Pod")
    return pod


def container_of(manifest: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifest["spec"]["containers"]
    return next(c for c in containers if c["name"] == CONTAINER)
