"""Runtime `docker`: the pod -> container mapping (pure); real containers run in tests/integration."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from operators.container import container_config, fit_to_engine, memory_bytes, nano_cpus, read_xcom, split_lines
from pipelines.core.pod import XCOM_PATH, container_of, pod_manifest
from pipelines.core.settings import Settings
from pipelines.core.spec import load_spec
from tests.conftest import CHURN_SPEC

SPEC = load_spec(CHURN_SPEC)
SECRETS = ["MLCYCLE_DATABASE_URL", "AWS_SECRET_ACCESS_KEY"]


def _settings() -> Settings:
    return Settings(
        profile="cluster",
        database_url="postgresql://u@db/p",
        artifact_root="s3://bucket/prefix",
        s3_endpoint_url="http://seaweedfs:8333",
        image="mlcycle-step:test",
    )


@pytest.mark.parametrize(
    ("quantity", "expected"), [("2", 2_000_000_000), ("0.5", 500_000_000), ("250m", 250_000_000), ("1500m", 1.5e9)]
)
def test_cpu_quantities(quantity: str, expected: float) -> None:
    assert nano_cpus(quantity) == int(expected)


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("512Mi", 512 * 2**20), ("4Gi", 4 * 2**30), ("1G", 10**9), ("1000", 1000), ("1.5Gi", int(1.5 * 2**30))],
)
def test_memory_quantities(quantity: str, expected: int) -> None:
    assert memory_bytes(quantity) == expected


@pytest.mark.parametrize("bad", ["", "two", "1x", "-1", "2Gi"])
def test_bad_cpu_quantities_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="CPU quantity"):
        nano_cpus(bad)


@pytest.mark.parametrize("bad", ["", "lots", "4GB", "-1Gi"])
def test_bad_memory_quantities_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="memory quantity"):
        memory_bytes(bad)


def test_the_container_is_the_pod() -> None:
    pod = pod_manifest(SPEC, "train", "run-1", _settings(), {"MLCYCLE_AIRFLOW_DAG_ID": "churn_lifecycle"})
    c = container_of(pod)
    worker = {"MLCYCLE_DATABASE_URL": "postgresql://u:pw@db/p", "UNRELATED": "x", "MLCYCLE_PROFILE": "embedded"}
    cfg = container_config(pod, worker, [*SECRETS, "MLCYCLE_PROFILE"], network="mlcycle_default")
    assert cfg["image"] == "mlcycle-step:test"
    assert cfg["entrypoint"] == c["command"] == ["mlcycle"]
    assert cfg["command"] == c["args"] == ["step", "train", "--pipeline", "churn", "--run-id", "run-1"]
    env = cfg["environment"]
    # every variable of the pod, the named secrets that are set, nothing else of the worker's
    assert {k: env[k] for k in (i["name"] for i in c["env"])} == {i["name"]: i["value"] for i in c["env"]}
    assert env["MLCYCLE_DATABASE_URL"] == "postgresql://u:pw@db/p"
    assert "UNRELATED" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["MLCYCLE_PROFILE"] == "cluster"  # the pod's own value wins over the worker's
    assert env["MLCYCLE_XCOM_PATH"] == XCOM_PATH
    limits = c["resources"]["limits"]
    assert cfg["nano_cpus"] == nano_cpus(limits["cpu"])
    assert cfg["mem_limit"] == memory_bytes(limits["memory"])
    # the pod's GPU limit is one device request for that many GPUs
    assert cfg["device_requests"] == [{"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]}]
    assert cfg["user"] == "10001" and cfg["cap_drop"] == ["ALL"]
    assert cfg["security_opt"] == ["no-new-privileges"]
    assert cfg["network"] == "mlcycle_default"
    assert cfg["labels"]["mlcycle.io/step"] == "train" and cfg["labels"]["mlcycle.io/run-id"] == "run-1"
    assert cfg["name"].startswith(pod["metadata"]["name"] + "-")


def test_a_cpu_step_asks_for_no_device_and_joins_no_network() -> None:
    cfg = container_config(pod_manifest(SPEC, "ingest", "r", _settings()), {}, SECRETS)
    assert "device_requests" not in cfg and "network" not in cfg
    assert container_config(pod_manifest(SPEC, "ingest", "r", _settings()), {}, SECRETS)["name"] != cfg["name"]


def _tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_xcom_from_the_container_archive() -> None:
    assert read_xcom(_tar("return.json", json.dumps({"rows": 3}).encode())) == {"rows": 3}
    assert read_xcom(_tar("return.json", b"")) is None
    with pytest.raises(json.JSONDecodeError):
        read_xcom(_tar("return.json", b"{not json"))


def test_the_container_is_fitted_to_a_small_cpu_only_engine() -> None:
    cfg = container_config(pod_manifest(SPEC, "train", "r", _settings()), {}, SECRETS)
    wanted = cfg["nano_cpus"]
    assert wanted == 4 * 10**9 and "device_requests" in cfg
    notes = fit_to_engine(cfg, ncpu=2, has_gpu=False)
    assert cfg["nano_cpus"] == 2 * 10**9 and "device_requests" not in cfg
    assert notes == [
        "CPU limit 4 lowered to the engine's 2 CPUs",
        "asks for 1 GPU(s); this Docker engine has no NVIDIA runtime: running on the CPU",
    ]


def test_a_gpu_engine_keeps_the_request_and_policy_is_honoured() -> None:
    cfg = container_config(pod_manifest(SPEC, "train", "r", _settings()), {}, SECRETS)
    assert fit_to_engine(dict(cfg), ncpu=64, has_gpu=True) == []
    kept = dict(cfg)
    fit_to_engine(kept, ncpu=64, has_gpu=True)
    assert kept["device_requests"] == cfg["device_requests"]
    with pytest.raises(RuntimeError, match="no NVIDIA runtime"):
        fit_to_engine(dict(cfg), ncpu=64, has_gpu=False, gpu_policy="require")
    off = dict(cfg)
    assert "MLCYCLE_DOCKER_GPU=off" in fit_to_engine(off, ncpu=64, has_gpu=True, gpu_policy="off")[0]
    assert "device_requests" not in off


def test_log_chunks_become_whole_lines() -> None:
    text = "première ligne\r\nsecond\n\nlast without newline".encode()
    for size in (1, 2, 3, 7, len(text)):  # cut anywhere, in the middle of a character too
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(split_lines(chunks)) == ["première ligne", "second", "", "last without newline"]
    assert list(split_lines([])) == []


def test_the_containers_of_one_step_are_found_by_pipeline_step_worker_and_run() -> None:
    from operators.container import same_step_filters

    pod = pod_manifest(SPEC, "train", "run-1", _settings(), {}, worker=1)
    labels = container_config(pod, {}, [])["labels"]
    assert same_step_filters(labels) == [
        "mlcycle.io/pipeline=churn",
        "mlcycle.io/step=train",
        "mlcycle.io/worker=1",
        "mlcycle.io/run-id=run-1",
    ]
    assert same_step_filters({"mlcycle.io/step": "t"}) == ["mlcycle.io/step=t"]
