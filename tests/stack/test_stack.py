"""The whole platform as Compose runs it, driven the way its users reach it.

In order, on one stack: every service healthy and published on 127.0.0.1 only; one step on
runtime `docker` from the `step` image gives what the local runtime gives; `churn_lifecycle`
triggered through Airflow's REST API v2 with params (what the UI's Trigger form sends) succeeds
with every step in a container of its own; MLflow's REST API names the champion, whose artifacts
are in SeaweedFS; the online features are in Redis; Ray Serve answers with that version given an
API key, 401 without; Prometheus has Serve's and Airflow's metrics; after `down` and `up` the
champion still serves and nothing is lost. Each test also passes alone (`pytest tests/stack -k
<one>`): the lifecycle run and the champion they share are fixtures of conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

from pipelines.core.system import executable
from pipelines.local import stack as stack_mod
from pipelines.local.stack import Stack
from tests.stack.conftest import DAG, PIPELINE, ROOT, TIMINGS, Lifecycle, _airflow, _champion, _mlflow_login, _url


def _known_customers() -> list[int]:
    """Two customers of the bundled world that every run's window (and so the online store) holds."""
    from datetime import UTC, datetime

    from pipelines.core.spec import SyntheticSource, load_spec
    from pipelines.local.demo import known_since

    spec = load_spec(ROOT / "include" / "pipelines" / f"{PIPELINE}.yaml")
    assert isinstance(spec.source, SyntheticSource)
    ids = known_since(spec.source, None, datetime.now(UTC).date(), spec.entity.join_key, spec.entity.timestamp)
    return [int(i) for i in ids[:2]]


def _predict(stack: Stack, key: str | None) -> httpx.Response:
    headers = {"x-api-key": key} if key else {}
    body = {"instances": [{"entity_id": e} for e in _known_customers()]}
    return httpx.post(_url(stack, "SERVE_PORT", f"/v1/pipelines/{PIPELINE}/predict"), json=body, headers=headers)


def _host_env(stack: Stack) -> dict[str, str]:
    """The stack's settings as seen from this host (published ports on 127.0.0.1)."""
    v = stack.values
    return {
        **os.environ,
        "MLCYCLE_PROFILE": "cluster",
        "MLCYCLE_DATABASE_URL": f"postgresql://mlcycle:{v['POSTGRES_PASSWORD']}@127.0.0.1:{stack.port('POSTGRES_PORT')}/mlcycle",
        "MLCYCLE_ARTIFACT_ROOT": "s3://mlcycle/artifacts",
        "MLCYCLE_S3_ENDPOINT_URL": _url(stack, "S3_PORT"),
        "AWS_ACCESS_KEY_ID": v["S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": v["S3_SECRET_KEY"],
    }


def _service(stack: Stack, name: str) -> Any:
    return next(c for c in stack.containers() if c.labels.get("com.docker.compose.service") == name)


def test_every_service_is_healthy_and_on_loopback_only(stack: Stack) -> None:
    health = stack.health()
    expected = {
        "postgres",
        "seaweedfs",
        "redis",
        "statsd-exporter",
        "prometheus",
        "alertmanager",
        "mlflow",
        "ray-head",
        "airflow-init",
        "serving-role",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    }
    assert set(health) == expected
    assert health.pop("airflow-init") == "exited(0)"
    assert health.pop("serving-role") == "exited(0)"
    assert set(health.values()) == {"healthy"}, health
    published = 0
    for c in stack.containers():
        for bindings in (c.attrs["HostConfig"].get("PortBindings") or {}).values():
            for b in bindings:
                assert b["HostIp"] == "127.0.0.1", (c.name, b)
                published += 1
    assert published == 8
    # the same PostgreSQL as the embedded profile's
    version = _service(stack, "postgres").exec_run(
        ["psql", "-h", "/tmp", "-U", "mlcycle", "-tAc", "SHOW server_version_num"]
    )
    assert version.exit_code == 0 and int(version.output) >= 180000, version.output
    # a request without credentials is refused by every authenticated surface
    assert httpx.get(_url(stack, "AIRFLOW_PORT", "/api/v2/dags")).status_code == 401
    assert httpx.get(_url(stack, "S3_PORT", "/mlcycle/")).status_code == 403
    assert httpx.get(_url(stack, "MLFLOW_PORT", "/api/2.0/mlflow/experiments/search")).status_code == 401


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEYS?$|ACCESS_KEY", re.IGNORECASE)


def test_containers_are_unprivileged_and_the_images_hold_no_secret(stack: Stack, tmp_path: Path) -> None:
    """Every container runs as uid 10001 without privileges and cannot gain any; no image (the
    four the stack runs steps and services from) has a secret in its environment, its history or
    its files: detect-secrets over the project files each image carries, against the repository's
    reviewed baseline, and none of this stack's secret values anywhere."""
    import docker

    client = docker.from_env()
    images = {}
    for c in stack.containers():
        service = c.labels["com.docker.compose.service"]
        assert c.attrs["Config"]["User"] == "10001:10001", service
        host = c.attrs["HostConfig"]
        assert not host["Privileged"] and "no-new-privileges:true" in (host.get("SecurityOpt") or []), service
        images[c.image.id] = c.image
    step = client.images.get(f"mlcycle-step:{stack.values.get('IMAGE_TAG', 'latest')}")
    images[step.id] = step
    assert len(images) == 4, [i.tags for i in images.values()]
    secrets = [v for k, v in stack.values.items() if k in stack_mod.SECRETS and v]
    for n, image in enumerate(images.values()):
        config = image.attrs["Config"]
        assert config["User"] == "10001:10001", image.tags
        for item in config.get("Env") or []:
            name, _, value = item.partition("=")
            assert not (SECRET_NAME.search(name) and value), (image.tags, name)
        described = json.dumps([config, image.history()])
        assert not [s for s in secrets if s in described], image.tags
        root = tmp_path / f"image{n}"
        root.mkdir()
        box = client.containers.create(image.id, command=["true"])
        try:
            for folder in ("/opt/mlcycle", "/opt/stack"):
                with contextlib.suppress(docker.errors.NotFound):
                    stream, _ = box.get_archive(folder)
                    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                        tar.extractall(root, filter="data")
        finally:
            box.remove()
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
        assert files, image.tags
        baseline = json.loads((ROOT / ".secrets.baseline").read_text())["results"]
        known = {(f, s["hashed_secret"]) for f, found in baseline.items() for s in found}
        for folder in {f.split("/", 1)[0] for f in files}:
            inside = [f.split("/", 1)[1] for f in files if f.startswith(folder + "/")]
            scan = subprocess.run(
                [executable("detect-secrets"), "scan", *inside], cwd=root / folder, capture_output=True, text=True
            )  # `scan`, not the hook: the image's files are no git checkout
            assert scan.returncode == 0, scan.stderr[-2000:]
            found = json.loads(scan.stdout)["results"]
            new = [
                (f, s["type"], s["line_number"])
                for f, hits in found.items()
                for s in hits
                if (f, s["hashed_secret"]) not in known
            ]
            assert new == [], (image.tags, new)
        for f in files:
            data = (root / f).read_bytes()
            assert not [s for s in secrets if s.encode() in data], (image.tags, f)


def test_a_step_on_runtime_docker_gives_what_the_local_runtime_gives(stack: Stack) -> None:
    """`ingest` of one pipeline, once as a container of the `step` image on the stack's network,
    once as a process on this host against the published ports: the same snapshot."""
    from operators.container import DockerContainer, container_config
    from operators.local import LocalProcess
    from pipelines.core.params import ENV
    from pipelines.core.pod import pod_manifest
    from pipelines.core.settings import Settings, scoped_environ, spec_for

    host_env = _host_env(stack)
    with scoped_environ(host_env):
        settings = Settings()
    spec = spec_for(settings, PIPELINE)
    v = stack.values
    in_stack = {
        "MLCYCLE_DATABASE_URL": f"postgresql://mlcycle:{v['POSTGRES_PASSWORD']}@postgres:5432/mlcycle",
        "AWS_ACCESS_KEY_ID": v["S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": v["S3_SECRET_KEY"],
    }
    docker_settings = settings.model_copy(
        update={"s3_endpoint_url": "http://seaweedfs:8333", "image": "mlcycle-step:latest"}
    )
    # one run's parameters for both, as the operator hands them to every pod of a run: one window
    params = {ENV: json.dumps({"as_of": "2026-11-01T00:00:00+00:00", "trigger": "manual"})}
    manifest = pod_manifest(spec, "ingest", "runtime-docker", docker_settings, params)
    config = container_config(manifest, in_stack, docker_settings.docker_env_from, f"{stack.project}_default")
    lines: list[str] = []
    in_container = DockerContainer(manifest, config, "Never").run(lines.append)
    assert any("ingest" in line for line in lines)

    local_manifest = pod_manifest(spec, "ingest", "runtime-local", settings, params)
    with scoped_environ(host_env):
        local = LocalProcess(local_manifest, cwd=str(ROOT)).run(lambda _: None)
    volatile = {"snapshot", "seconds", "reused"}
    assert in_container["rows"] > 0
    assert {k: v for k, v in in_container.items() if k not in volatile} == {
        k: v for k, v in local.items() if k not in volatile
    }
    assert in_container["snapshot"].startswith("s3://mlcycle/artifacts/")
    assert in_container["snapshot"].replace("runtime-docker", "runtime-local") == local["snapshot"]
    assert in_container["window"]["end"] == "2026-11-01T00:00:00+00:00"


def test_the_lifecycle_triggered_through_the_rest_api(lifecycle: Lifecycle) -> None:
    import docker

    run, states = lifecycle.run, lifecycle.states
    assert run["state"] == "success", states
    assert run["conf"] == lifecycle.conf == {"n_trials": 2}
    assert set(states.values()) == {"success"}, states
    # every step ran in a container of its own, from the step image, since removed
    mine = lifecycle.started
    assert sorted(a["mlcycle.io/step"] for a in mine) == sorted(states), mine
    assert {a["image"] for a in mine} == {"mlcycle-step:latest"}
    client = docker.from_env()
    assert client.containers.list(all=True, filters={"label": f"mlcycle.io/run-id={lifecycle.run_id}"}) == []


def test_mlflow_names_the_champion_and_its_artifacts_are_in_seaweedfs(stack: Stack, lifecycle: Lifecycle) -> None:
    import boto3

    champion = _champion(stack)
    assert int(champion["version"]) == 1
    run = httpx.get(
        _url(stack, "MLFLOW_PORT", "/api/2.0/mlflow/runs/get"),
        params={"run_id": champion["run_id"]},
        auth=_mlflow_login(stack),
    )
    run.raise_for_status()
    assert run.json()["run"]["info"]["status"] == "FINISHED"
    source = champion["source"]
    assert source.startswith("s3://mlcycle/") or source.startswith("models:/"), source
    s3 = boto3.client(
        "s3",
        endpoint_url=_url(stack, "S3_PORT"),
        aws_access_key_id=stack.values["S3_ACCESS_KEY"],
        aws_secret_access_key=stack.values["S3_SECRET_KEY"],
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlcycle", Prefix="artifacts/mlflow/").get("Contents", [])]
    assert any(k.endswith("model.onnx") for k in keys), keys[:20]
    snapshots = s3.list_objects_v2(Bucket="mlcycle", Prefix=f"artifacts/{PIPELINE}/{lifecycle.run_id}/")
    assert snapshots.get("KeyCount", 0) > 0


def test_the_online_features_are_in_redis(stack: Stack, lifecycle: Lifecycle) -> None:
    """The cluster profile's Feast online store is the stack's Redis (MLCYCLE_REDIS_URL), which the
    lifecycle's run materialized."""
    out = stack.compose("exec", "-T", "redis", "redis-cli", "dbsize", capture=True).stdout
    assert int(out.strip()) > 0, out


def _served_version(stack: Stack, timeout: float = 300) -> int:
    key = stack.values["SERVING_API_KEYS"].split(",")[0]
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = _predict(stack, key)
            if r.status_code == 200:
                versions = {p["version"] for p in r.json()["predictions"]}
                assert len(versions) == 1, versions
                return int(versions.pop())
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the champion is not served")
        time.sleep(3)


def test_ray_serve_answers_with_the_champion_given_a_key(stack: Stack, champion: int) -> None:
    assert _served_version(stack) == champion
    assert _predict(stack, None).status_code == 401
    assert _predict(stack, "not-a-key").status_code == 401


def test_prometheus_scrapes_serving_and_airflow(stack: Stack, champion: int) -> None:
    """Ray's metrics (Serve's request counter after a prediction of the champion) and Airflow's
    StatsD metrics (through `mlcycle statsd-exporter`) reach Prometheus."""
    assert _served_version(stack) == champion  # a request for the counter to count

    def query(q: str) -> list[Any]:
        r = httpx.get(_url(stack, "PROMETHEUS_PORT", "/api/v1/query"), params={"query": q}, timeout=10)
        result: list[Any] = r.json()["data"]["result"]
        return result

    deadline = time.monotonic() + 180
    while True:
        targets = httpx.get(_url(stack, "PROMETHEUS_PORT", "/api/v1/targets")).json()["data"]["activeTargets"]
        up = {t["labels"]["job"]: t["health"] for t in targets}
        serve = query("ray_serve_num_http_requests_total")
        airflow = query('{__name__=~"airflow_.+", job="airflow"}')
        if up.get("ray") == up.get("airflow") == "up" and serve and airflow:
            break
        assert time.monotonic() < deadline, (up, len(serve), len(airflow))
        time.sleep(5)


def test_prometheus_evaluates_the_rules_and_the_scheduler_reaches_the_stacks_alertmanager(stack: Stack) -> None:
    """Prometheus loads the request log's and the bundled pipelines' rules (all healthy) and sends
    to the stack's Alertmanager; an event sent from the scheduler's container (where Airflow's
    failure notifier runs) over the stack's network is what the Alertmanager lists on 127.0.0.1."""
    groups = httpx.get(_url(stack, "PROMETHEUS_PORT", "/api/v1/rules"), timeout=10).json()["data"]["groups"]
    assert {"mlcycle-request-log", f"mlcycle-{PIPELINE}"} <= {g["name"] for g in groups}, groups
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    deadline = time.monotonic() + 60
    while not (
        active := httpx.get(_url(stack, "PROMETHEUS_PORT", "/api/v1/alertmanagers"), timeout=10).json()["data"][
            "activeAlertmanagers"
        ]
    ):
        assert time.monotonic() < deadline, "Prometheus knows no Alertmanager"
        time.sleep(2)
    assert [a["url"].rsplit(":", 1)[-1] for a in active] == ["9093/api/v2/alerts"], active
    script = (
        "from datetime import UTC, datetime\n"
        "from pipelines.core.alerts import drift_alert\n"
        "from pipelines.core.settings import load_settings\n"
        "from pipelines.io.alerts import send\n"
        f"assert send(load_settings(), [drift_alert({PIPELINE!r}, 7, 'drift', ['stack drill'], datetime.now(UTC))])\n"
    )
    sent = _service(stack, "airflow-scheduler").exec_run(["python3", "-c", script])
    assert sent.exit_code == 0, sent.output.decode()[-2000:]
    listed = httpx.get(_url(stack, "ALERTMANAGER_PORT", "/api/v2/alerts"), timeout=10).json()
    drill = [a for a in listed if a["labels"]["alertname"] == "MlcycleDriftFound"]
    assert [a["labels"]["pipeline"] for a in drill] == [PIPELINE], listed
    assert "stack drill" in drill[0]["annotations"]["summary"]


def test_down_and_up_keeps_everything(stack: Stack, lifecycle: Lifecycle, champion: int) -> None:
    started = time.monotonic()
    stack.down()
    TIMINGS["down_s"] = round(time.monotonic() - started, 1)
    assert stack.containers() == []
    TIMINGS["restart_s"] = stack.up(timeout=900)
    # PostgreSQL was stopped cleanly (SIGINT, its fast shutdown), not killed after Docker's grace
    # period: it starts without crash recovery
    postgres = _service(stack, "postgres")
    log = postgres.logs().decode()
    assert "database system was shut down at" in log and "not properly shut down" not in log, log[-3000:]
    assert int(_champion(stack)["version"]) == champion
    assert _served_version(stack) == champion
    airflow = _airflow(stack)
    run = airflow.api("GET", f"/dags/{DAG}/dagRuns/{lifecycle.run_id}")
    assert run["state"] == "success"
