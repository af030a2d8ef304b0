from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pipelines.cli import main
from pipelines.core.pod import (
    XCOM_PATH,
    container_of,
    pod_manifest,
    pod_name,
    resource_requirements,
    to_v1pod,
    tolerations,
)
from pipelines.core.settings import Settings
from pipelines.core.spec import Resources, load_spec
from tests.conftest import CHURN_SPEC

SPEC = load_spec(CHURN_SPEC)
K8S_VERSION = "1.34"


def _cluster(**kw: object) -> Settings:
    base = {
        "profile": "cluster",
        "database_url": "postgresql://u@db/p",
        "artifact_root": "s3://bucket/prefix",
        "s3_endpoint_url": "http://s3:8333",
        "image": "registry.example/mlcycle-step:1.2.3",
        "k8s_namespace": "ml",
        "k8s_service_account": "steps",
        "k8s_env_secret": "mlcycle-env",
    }
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def test_train_pod_asks_for_a_gpu_node() -> None:
    pod = pod_manifest(SPEC, "train", "run-1", _cluster())
    c = container_of(pod)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["limits"]["memory"] == "16Gi"
    assert "nodeSelector" not in pod["spec"]  # the bundled spec names no cluster label
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"


# A real cluster's placement, as the Helm chart's settings ConfigMap gives it to Airflow's workers:
# a GPU pool labelled pool=a100 and tainted gpu=true:NoSchedule (and NoExecute with a grace), AMD
# GPUs, a private registry, the cluster's own UID.
POOL = {
    "MLCYCLE_K8S_GPU_NODE_SELECTOR": '{"pool": "a100"}',
    "MLCYCLE_K8S_GPU_TOLERATIONS": '[{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},'
    ' {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 300}]',
    "MLCYCLE_K8S_GPU_RESOURCE": "amd.com/gpu",
    "MLCYCLE_K8S_IMAGE_PULL_SECRETS": '["registry-creds"]',
    "MLCYCLE_K8S_RUN_AS_USER": "20001",
    "MLCYCLE_K8S_RUN_AS_GROUP": "20001",
    "MLCYCLE_K8S_FS_GROUP": "20001",
}


def test_the_platforms_gpu_pool_places_gpu_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in POOL.items():
        monkeypatch.setenv(k, v)
    settings = _cluster()
    train = pod_manifest(SPEC, "train", "run-1", settings)
    kubernetes_validate.validate(train, K8S_VERSION, strict=True)
    assert train["spec"]["nodeSelector"] == {"pool": "a100"}  # the pool's label alone
    assert train["spec"]["tolerations"] == [
        {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]  # one toleration per taint (key and effect)
    assert container_of(train)["resources"]["limits"]["amd.com/gpu"] == "1"
    assert train["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert train["spec"]["securityContext"]["runAsUser"] == train["spec"]["securityContext"]["fsGroup"] == 20001
    assert container_of(train)["securityContext"]["runAsUser"] == 20001
    ingest = pod_manifest(SPEC, "ingest", "run-1", settings)
    assert "nodeSelector" not in ingest["spec"] and "tolerations" not in ingest["spec"]
    assert ingest["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]  # every step's image
    # A pipeline may add to the pool's placement without repeating it.
    mine = SPEC.model_copy(
        update={"resources": SPEC.resources.model_validate({"default": {"gpu": 1, "node_selector": {"zone": "b"}}})}
    )
    assert pod_manifest(mine, "ingest", "r", settings)["spec"]["nodeSelector"] == {"pool": "a100", "zone": "b"}


def test_settings_take_every_toleration_field_and_refuse_a_bad_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCYCLE_K8S_GPU_TOLERATIONS", POOL["MLCYCLE_K8S_GPU_TOLERATIONS"])
    (_, grace) = _cluster().k8s_gpu_tolerations
    assert grace.manifest()["tolerationSeconds"] == 300
    monkeypatch.setenv(
        "MLCYCLE_K8S_GPU_TOLERATIONS", '[{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}]'
    )
    with pytest.raises(ValueError, match="tolerationSeconds applies to effect NoExecute only"):
        _cluster()


def test_cpu_step_has_no_gpu_and_no_gpu_toleration() -> None:
    pod = pod_manifest(SPEC, "ingest", "run-1", _cluster())
    c = container_of(pod)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "tolerations" not in pod["spec"] and "nodeSelector" not in pod["spec"]


def test_pod_runs_the_step_command_with_settings_env_and_secret_ref() -> None:
    pod = pod_manifest(
        SPEC,
        "validate",
        "manual__2026-01-01T00:00:00+00:00",
        _cluster(),
        airflow={"MLCYCLE_AIRFLOW_DAG_ID": "churn_lifecycle"},
    )
    c = container_of(pod)
    assert c["image"] == "registry.example/mlcycle-step:1.2.3"
    assert c["command"] == ["mlcycle"]
    assert c["args"] == ["step", "validate", "--pipeline", "churn", "--run-id", "manual__2026-01-01T00:00:00+00:00"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MLCYCLE_PROFILE"] == "cluster"
    assert env["MLCYCLE_ARTIFACT_ROOT"] == "s3://bucket/prefix"
    assert env["MLCYCLE_XCOM_PATH"] == XCOM_PATH
    assert env["MLCYCLE_AIRFLOW_DAG_ID"] == "churn_lifecycle"
    assert "MLCYCLE_DATABASE_URL" not in env  # a secret: only through the Secret reference
    assert c["envFrom"] == [{"secretRef": {"name": "mlcycle-env"}}]
    assert pod["metadata"]["namespace"] == "ml"
    assert pod["spec"]["serviceAccountName"] == "steps"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("step", ["ingest", "validate", "features", "train"])
def test_rendered_pods_are_valid_against_the_kubernetes_schema(step: str) -> None:
    pod = pod_manifest(SPEC, step, "manual__2026-01-01T00:00:00+00:00", _cluster())
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_broken_pod() -> None:
    pod = pod_manifest(SPEC, "train", "r", _cluster())
    container_of(pod)["resources"]["limits"]["cpu"] = {"not": "a quantity"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_v1pod_round_trip() -> None:
    pod = pod_manifest(SPEC, "train", "r", _cluster())
    v1 = to_v1pod(pod)
    assert v1.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert v1.spec.tolerations[0].key == "nvidia.com/gpu"
    assert v1.spec.node_selector is None
    assert v1.spec.containers[0].args[-1] == "r"


def test_pure_helpers() -> None:
    assert pod_name("Churn_V2", "train") == "mlcycle-churn-v2-train"
    res = Resources(
        gpu=2, tolerations=[{"key": "nvidia.com/gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}]
    )
    assert tolerations(res) == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}]
    assert resource_requirements(Resources(gpu=2, gpu_resource="amd.com/gpu"))["limits"]["amd.com/gpu"] == "2"


def test_cli_pod_render(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLCYCLE_STATE_DIR", str(tmp_path))
    assert main(["pod", "render", "--pipeline", "churn", "--step", "train", "--run-id", "r1"]) == 0
    pod = yaml.safe_load(capsys.readouterr().out)
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert container_of(pod)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main(["pod", "render", "--pipeline", "churn", "--step", "trian"]) == 2
    assert "unknown step 'trian'" in capsys.readouterr().err
    assert main(["pod", "render", "--pipeline", "nope", "--step", "train"]) == 2
    assert "no pipeline 'nope'" in capsys.readouterr().err


def test_the_canary_pod_knows_the_ray_cluster() -> None:
    """The canary step deploys to Ray Serve: its pod carries the cluster's address."""
    pod = pod_manifest(SPEC, "canary", "run-1", _cluster(ray_address="ray://ray-head:10001", serve_port=8001))
    env = {e["name"]: e["value"] for e in container_of(pod)["env"]}
    assert env["MLCYCLE_RAY_ADDRESS"] == "ray://ray-head:10001"
    assert env["MLCYCLE_SERVE_PORT"] == "8001"
    assert "MLCYCLE_RAY_ADDRESS" not in {
        e["name"] for e in container_of(pod_manifest(SPEC, "canary", "r", _cluster()))["env"]
    }


def test_a_step_uses_as_many_threads_as_its_cpus() -> None:
    from pipelines.core.k8s import cpu_threads

    assert cpu_threads("4", 16) == 4
    assert cpu_threads("4", 2) == 2  # never more than the machine has
    assert cpu_threads("500m", 8) == 1 and cpu_threads("2500m", 8) == 2
    assert cpu_threads("1", None) == 1
