"""The embedded platform as a user runs it: `mlcycle up`, a pipeline of their own added the way
docs/pipelines.md says and run with `mlcycle run`, its champion served and read back with the plain
clients, a service killed mid-run, `mlcycle down`.

Everything runs as the `mlcycle` command in a state directory of this module's own, on free ports
on 127.0.0.1 (its own PostgreSQL, supervisord, Airflow on PostgreSQL, MLflow UI, Ray head).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipelines.core.settings import PROJECT_DIR
from tests import loadgen
from tests.alerting import Webhook, webhook_receiver
from tests.services import free_port_pairs
from tests.specs import tumour_pipeline, write_spec

pytestmark = pytest.mark.e2e
TRIGGERED = "tumours"  # the pipeline the browser test triggers from the form

MLCYCLE = str(Path(sys.executable).parent / "mlcycle")
SERVICES = {
    "postgresql",
    "statsd-exporter",  # with Prometheus, which `make tools` installs
    "prometheus",
    "alertmanager",  # `make tools` installs it too
    "ray",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "mlflow",
    "serve-sync",
}


def mlcycle(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    # from the project's root, as a user runs it (Ray's workers import `serving` from there)
    return subprocess.run([MLCYCLE, *args], env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=timeout)


def services(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """`mlcycle ps` as {service: (state, health)}."""
    out = mlcycle(env, "ps", timeout=120).stdout
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture(scope="module")
def team_webhook() -> Iterator[tuple[Webhook, str]]:
    """The team's receiver, on 127.0.0.1: `mlcycle up` routes the platform's Alertmanager to it
    (`MLCYCLE_ALERTS_WEBHOOK_URL`), as a team points it at its chat or pager."""
    with webhook_receiver() as (url, hook):
        yield hook, url


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, team_webhook: tuple[Webhook, str]) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("platform")
    pipelines = root / "pipelines"
    write_spec(pipelines, "churn", merge=True, training={"n_trials": 2, "max_epochs": 5, "pruner": "none"})
    tumour_pipeline(pipelines, root / "data", batch={"parallelism": 1, "outputs": {"table": True, "parquet": True}})
    airflow, mlflow, serve, gcs, stats, metrics, fallback, prom, statsd, statsd_http, ray_metrics, am = free_port_pairs(
        12
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCYCLE_", "RAY_", "AIRFLOW", "MLFLOW_"))}
    env.update(
        {
            "MLCYCLE_STATE_DIR": str(root / "state"),
            "MLCYCLE_PIPELINES_DIR": str(pipelines),
            "MLCYCLE_AIRFLOW_PORT": str(airflow),
            "MLCYCLE_MLFLOW_PORT": str(mlflow),
            "MLCYCLE_MLFLOW_UI_URL": f"http://127.0.0.1:{mlflow}",
            "MLCYCLE_SERVE_PORT": str(serve),
            "MLCYCLE_RAY_ADDRESS": f"127.0.0.1:{gcs}",
            "MLCYCLE_HAPROXY_STATS_PORT": str(stats),
            "MLCYCLE_HAPROXY_METRICS_PORT": str(metrics),
            "MLCYCLE_SERVE_FALLBACK_PORT": str(fallback),
            "MLCYCLE_PROMETHEUS_PORT": str(prom),
            "MLCYCLE_STATSD_UDP_PORT": str(statsd),
            "MLCYCLE_STATSD_HTTP_PORT": str(statsd_http),
            "MLCYCLE_RAY_METRICS_PORT": str(ray_metrics),
            "MLCYCLE_ALERTMANAGER_PORT": str(am),
            "MLCYCLE_ALERTS_WEBHOOK_URL": team_webhook[1],
        }
    )
    started = mlcycle(env, "up")
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield env
    finally:
        mlcycle(env, "down", timeout=300)


def test_up_starts_every_service_healthy_and_a_second_up_reuses_them(up: dict[str, str]) -> None:
    assert services(up) == {name: ("RUNNING", "healthy") for name in SERVICES}
    home = Path(up["MLCYCLE_STATE_DIR"]) / "platform"
    ctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(home / "supervisord.conf"), "pid"]
    pids = {
        name: subprocess.run([*ctl, name], capture_output=True, text=True).stdout for name in SERVICES - {"postgresql"}
    }
    again = mlcycle(up, "up")
    assert again.returncode == 0 and "==> supervisord" not in again.stdout, again.stdout  # nothing started anew
    assert services(up) == {name: ("RUNNING", "healthy") for name in SERVICES}
    for name in ("ray", "airflow-api-server", "airflow-scheduler", "mlflow"):  # the same processes
        assert subprocess.run([*ctl, name], capture_output=True, text=True).stdout == pids[name]
    # secrets: mode 600; supervisord's socket: its owner only; one log file per service
    state = Path(up["MLCYCLE_STATE_DIR"])
    for secret in (state / "airflow" / "simple_auth_manager_passwords.json", state / "serving-api-key"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "supervisor.sock").stat().st_mode) == 0o700
    assert {p.stem for p in (home / "logs").glob("*.log")} >= SERVICES - {"postgresql"}
    assert "password" not in (home / "supervisord.conf").read_text().lower()


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def platform_processes(state_dir: str) -> set[int]:
    """Every process of the platform: those that name its state directory (supervisord, the
    embedded PostgreSQL) or carry it in their environment, and all their children."""
    import psutil

    pids: set[int] = set()
    for p in psutil.process_iter(["cmdline", "environ"]):
        with contextlib.suppress(psutil.Error):
            if (
                state_dir in " ".join(p.info["cmdline"] or [])
                or (p.info["environ"] or {}).get("MLCYCLE_STATE_DIR") == state_dir
            ):
                pids |= {p.pid, *(c.pid for c in p.children(recursive=True))}
    return pids


RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default --min/--max-worker-port


def ray_owned(name: str, cmdline: str, port: int) -> bool:
    """A socket of Ray's own servers: its daemons and actors, or a worker/driver gRPC port. Pure."""
    return (
        name in ("raylet", "gcs_server")
        or name.startswith("ray::")
        or "site-packages/ray/" in cmdline
        or "ray.util.client.server" in cmdline
        or port in RAY_WORKER_PORTS
    )


def test_every_socket_the_platform_listens_on_is_on_loopback_but_rays_own(up: dict[str, str]) -> None:
    """Airflow, MLflow, Prometheus, the StatsD bridge and Serve's HAProxy listen on 127.0.0.1
    only; PostgreSQL on a Unix socket. Ray 2.60's own servers (GCS, raylet, workers, agents, the
    client server) are the known exception: `--node-ip-address=127.0.0.1` is "resolved" to the
    host's address, and they listen there or on every interface (guarded by Ray's token; see
    docs/reliability.md, "Security checks"). (Clients' UDP sockets, e.g. Airflow's StatsD sender, listen for nothing.)"""
    import psutil

    pids = platform_processes(up["MLCYCLE_STATE_DIR"])
    listening = [
        c
        for c in psutil.net_connections(kind="inet")
        if c.pid in pids and (c.status == psutil.CONN_LISTEN or c.laddr.port == int(up["MLCYCLE_STATSD_UDP_PORT"]))
    ]
    ports = {c.laddr.port: c.laddr.ip for c in listening}
    for port in ("MLCYCLE_AIRFLOW_PORT", "MLCYCLE_MLFLOW_PORT", "MLCYCLE_SERVE_PORT", "MLCYCLE_PROMETHEUS_PORT"):
        assert ports.get(int(up[port])) == "127.0.0.1", (port, ports)
    assert ports.get(int(up["MLCYCLE_STATSD_UDP_PORT"])) == "127.0.0.1", ports
    wide = set()
    for c in listening:
        if c.laddr.ip in LOOPBACK:
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(c.pid)
            if not ray_owned(proc.name(), " ".join(proc.cmdline()), c.laddr.port):
                wide.add((c.laddr.ip, c.laddr.port, proc.name()))
    assert sorted(wide) == [], wide


def test_a_users_numeric_pipeline_runs_with_mlcycle_run_and_is_served(up: dict[str, str]) -> None:
    """A file source, 30 numeric features and no categorical one, added as docs/pipelines.md says."""
    done = mlcycle(up, "run", "tumours", "--wait")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    for step in ("ingest", "validate", "features", "train", "evaluate", "promote", "canary"):
        assert f"  {step}" in done.stdout
    assert "success" in done.stdout and "mlcycle-tumours v1" in done.stdout
    # the endpoint serves the champion: entity id only (features from the online store)
    assert predict(up, "tumours", 569)["predictions"][0]["version"] == 1
    # the plain clients, configured by `mlcycle env` alone
    exports = mlcycle(up, "env", "--pipeline", "tumours").stdout
    plain = {k: v for k, v in up.items() if not k.startswith("MLCYCLE_")}
    plain.update(dict(t.split("=", 1) for t in shlex.split(exports, comments=True) if t != "export"))
    script = (
        "import json, mlflow\n"
        "from feast import FeatureStore\n"
        f"store = FeatureStore(repo_path={str(PROJECT_DIR / 'feature_repo')!r})\n"
        "online = store.get_online_features(features=store.get_feature_service('tumours_features_v1'),\n"
        "    entity_rows=[{'patient_id': 569}]).to_dict()\n"
        "champion = mlflow.MlflowClient().get_model_version_by_alias('mlcycle-tumours', 'champion')\n"
        "print(json.dumps({'radius': online['mean_radius'][0], 'champion': champion.version}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=plain, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert str(got["champion"]) == "1" and got["radius"] == pytest.approx(7.76)  # the dataset's last patient


def test_prometheus_scrapes_ray_serve_haproxy_and_airflow(up: dict[str, str]) -> None:
    """After the tumours run and its predictions: every target up, Airflow's and Serve's series in."""
    prometheus = f"http://127.0.0.1:{up['MLCYCLE_PROMETHEUS_PORT']}/api/v1"

    def count(query: str) -> float:
        result = httpx.get(f"{prometheus}/query", params={"query": query}, timeout=10).json()["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    airflow, serve = 'count({job="airflow", __name__=~"airflow_.+"})', 'count({__name__=~"ray_serve_deployment_.+"})'
    deadline = time.monotonic() + 120  # Ray reports every few seconds, Prometheus scrapes every 15 s
    while True:
        targets = httpx.get(f"{prometheus}/targets", timeout=10).json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if (set(health.values()) == {"up"} and count(airflow) and count(serve)) or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert health == {"ray": "up", "haproxy": "up", "airflow": "up", "prometheus": "up"}, targets
    assert count(airflow) > 0 and count(serve) > 0


def test_a_calm_platform_delivers_no_alert_while_its_rules_are_loaded(
    up: dict[str, str], team_webhook: tuple[Webhook, str]
) -> None:
    """Up, the user's pipeline trained, promoted and served, Prometheus scraping: every pipeline's
    burn-rate rules are loaded and healthy, none fires, and the team's webhook got nothing."""
    prometheus = f"http://127.0.0.1:{up['MLCYCLE_PROMETHEUS_PORT']}/api/v1"
    groups = httpx.get(f"{prometheus}/rules", timeout=10).json()["data"]["groups"]
    burn = [r for g in groups for r in g["rules"] if r["name"] == "MlcycleErrorBudgetBurn"]
    assert {r["labels"]["pipeline"] for r in burn} == {"churn", "tumours"}, burn
    assert all(r["health"] == "ok" and r["state"] == "inactive" for r in burn), burn
    assert team_webhook[0].received == [], "a calm platform delivered alerts"


def predict(env: dict[str, str], pipeline: str, entity_id: int) -> dict[str, Any]:
    """One prediction by entity id from the platform's endpoint, once it serves the pipeline (the
    canary or serve-sync may be deploying it)."""
    key = (Path(env["MLCYCLE_STATE_DIR"]) / "serving-api-key").read_text().strip()
    url = f"http://127.0.0.1:{env['MLCYCLE_SERVE_PORT']}/v1/pipelines/{pipeline}/predict"
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.post(url, json={"instances": [{"entity_id": entity_id}]}, headers={"x-api-key": key}, timeout=30)
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def token(env: dict[str, str], user: str) -> dict[str, str]:
    passwords = airflow_passwords(env)
    url = f"http://127.0.0.1:{env['MLCYCLE_AIRFLOW_PORT']}/auth/token"
    login = httpx.post(url, json={"username": user, "password": passwords[user]}, timeout=30)
    login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def test_the_platform_api_answers_from_the_records_behind_airflows_login(up: dict[str, str]) -> None:
    """`/api/ml/*` after the tumours run: checked against the run records and the registry."""
    api = f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}/api/ml"
    admin, viewer = token(up, "admin"), token(up, "viewer")
    denied = httpx.get(f"{api}/pipelines", timeout=30)
    assert denied.status_code == 401 and denied.json()["reason"]
    listed = httpx.get(f"{api}/pipelines", params={"limit": 1}, headers=admin, timeout=60).json()
    assert listed["total"] == 2 and listed["next_offset"] == 1 and len(listed["items"]) == 1
    second = httpx.get(f"{api}/pipelines", params={"limit": 1, "offset": 1}, headers=admin, timeout=60).json()
    assert [p["pipeline"] for p in listed["items"] + second["items"]] == ["churn", "tumours"]
    assert second["items"][0]["champion"] == 1 and second["next_offset"] is None

    detail = httpx.get(f"{api}/pipelines/tumours", headers=viewer, timeout=60).json()
    assert detail["champion"]["version"] == 1 and detail["last_drift_check"] is None
    canary = detail["canary"]  # the first model: deployed as champion, no walk
    assert canary["outcome"] == "deployed" and canary["weights"] == {"1": 100.0} and canary["steps"] == []
    run_id = detail["champion"]["run_id"]
    models = httpx.get(f"{api}/pipelines/tumours/models", headers=admin, timeout=60).json()
    assert models["total"] == 1
    lineage = models["items"][0]["lineage"]
    assert models["items"][0]["aliases"] == ["challenger", "champion"] and lineage["lifecycle_run"] == run_id
    script = (
        "import json\n"
        "from pipelines.core.settings import load_settings\n"
        "from pipelines.io.runs import run_steps\n"
        f"rows = run_steps(load_settings(), 'tumours', {run_id!r})\n"
        "print(json.dumps({r.step: r.outputs.get('content_hash') for r in rows}))\n"
    )
    records = subprocess.run([sys.executable, "-c", script], env=up, cwd=PROJECT_DIR, capture_output=True, text=True)
    hashes = json.loads(records.stdout.strip().splitlines()[-1])
    assert lineage["data_hash"] == hashes["validate"] or lineage["data_hash"] == hashes["ingest"]
    report = httpx.get(f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}{lineage['validation_report']}", headers=viewer)
    assert report.status_code == 200 and "back to the run" in report.text

    resources_answer_from_the_same_records(api, admin, viewer, run_id, lineage["data_hash"])

    # the trace of one served prediction: request id -> version -> training run -> data -> report
    served = predict(up, "tumours", 7)
    deadline = time.monotonic() + 30
    while (
        got := httpx.get(f"{api}/predictions/{served['request_id']}", headers=viewer, timeout=60)
    ).status_code == 404:
        assert time.monotonic() < deadline, got.text  # the request log is flushed off the request path
        time.sleep(1)
    answer = got.json()["answers"][0]
    assert answer["entity_id"] == "7" and answer["score"] == pytest.approx(served["predictions"][0]["score"])
    assert answer["model"]["version"] == 1 and answer["model"]["lineage"]["lifecycle_run"] == run_id
    assert httpx.get(f"{api}/predictions/not-a-uuid", headers=admin).status_code == 404

    # labels for served predictions: all rows or none; the trace then shows the outcome
    labels = {"labels": [{"entity_id": 7, "label": 0, "request_id": served["request_id"]}]}
    assert httpx.post(f"{api}/pipelines/tumours/labels", json=labels, headers=viewer, timeout=60).status_code == 403
    bad = {"labels": [*labels["labels"], {"entity_id": 8, "label": 3}]}
    refused = httpx.post(f"{api}/pipelines/tumours/labels", json=bad, headers=admin, timeout=60)
    assert refused.status_code == 422 and "row 1: label 3 is not 0 or 1" in refused.json()["reason"]
    assert httpx.get(f"{api}/predictions/{served['request_id']}", headers=viewer).json()["answers"][0]["label"] is None
    loaded = httpx.post(f"{api}/pipelines/tumours/labels", json=labels, headers=admin, timeout=60)
    assert loaded.status_code == 201 and loaded.json()["loaded"] == 1
    assert httpx.get(f"{api}/predictions/{served['request_id']}", headers=viewer).json()["answers"][0]["label"] == 0

    drift = httpx.get(f"{api}/pipelines/tumours/drift", headers=admin, timeout=60).json()
    assert drift["total"] == 0 and drift["items"] == []
    not_a_page = httpx.get(f"{api}/pipelines", params={"limit": 0}, headers=admin, timeout=60)
    assert not_a_page.status_code == 422 and not_a_page.json()["reason"].startswith("query.limit:")
    missing = httpx.get(f"{api}/pipelines/nope", headers=admin, timeout=60)
    assert missing.status_code == 404 and "known" in missing.json()["reason"]
    assert missing.json()["field"] == "pipeline" and up["MLCYCLE_PIPELINES_DIR"] not in missing.text  # no server path

    # triggering: the viewer may not; a bad param is refused; the admin's run exists in Airflow
    body = {"conf": {"n_trials": 1, "dry_run": True}}
    assert httpx.post(f"{api}/pipelines/tumours/runs", json=body, headers=viewer, timeout=60).status_code == 403
    bad = httpx.post(f"{api}/pipelines/tumours/runs", json={"conf": {"n_trials": 0}}, headers=admin, timeout=60)
    assert bad.status_code == 422 and "n_trials" in bad.json()["reason"]
    made = httpx.post(f"{api}/pipelines/tumours/runs", json=body, headers=admin, timeout=60)
    assert made.status_code == 201, made.text
    dag_run = httpx.get(
        f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}/api/v2/dags/tumours_lifecycle/dagRuns/{made.json()['run_id']}",
        headers=admin,
        timeout=60,
    ).json()
    assert dag_run["conf"] == body["conf"]
    trail = httpx.get(f"{api}/pipelines/tumours/audit", params={"action": "trigger"}, headers=viewer, timeout=60)
    first = trail.json()["items"][0]  # the run just triggered, audited with the user who asked
    assert (first["actor"], first["run_id"], first["detail"]["via"]) == ("admin", made.json()["run_id"], "api")
    openapi = httpx.get(f"{api}/openapi.json", timeout=30)
    assert openapi.status_code == 200 and "/pipelines/{pipeline}/runs" in openapi.json()["paths"]


def resources_answer_from_the_same_records(
    api: str, admin: dict[str, str], viewer: dict[str, str], run_id: str, data_hash: str
) -> None:
    """`/api/ml/models`, `deployments`, `experiments`, `features`, `health` after the tumours run,
    as the viewer: its registered version, what Serve runs, its study's trials, its feature views."""
    models = httpx.get(f"{api}/models", headers=viewer, timeout=60).json()
    by_name = {m["pipeline"]: m for m in models["items"]}
    assert models["total"] == 2 and by_name["churn"]["versions"] == 0  # churn never trained here
    assert (by_name["tumours"]["latest"], by_name["tumours"]["aliases"]) == (1, {"challenger": 1, "champion": 1})
    v1 = httpx.get(f"{api}/models/tumours/versions/1", headers=viewer, timeout=60).json()
    assert (v1["lineage"]["lifecycle_run"], v1["lineage"]["data_hash"]) == (run_id, data_hash)
    assert (
        v1["lineage"]["steps"]["promote"] == "succeeded" and v1["lineage"]["feature_service"] == "tumours_features_v1"
    )
    assert v1["artifacts"]["sealed"] and any(name.endswith(".onnx") for name in v1["artifacts"]["sha256"])
    assert v1["metrics"] and v1["audit"] and {e["version"] for e in v1["audit"]} == {1}
    missing = httpx.get(f"{api}/models/tumours/versions/99", headers=viewer, timeout=60)
    assert missing.status_code == 404 and missing.json()["field"] == "version"
    unknown = httpx.get(f"{api}/deployments", params={"pipeline": "nope"}, headers=viewer, timeout=60)
    assert unknown.status_code == 404 and unknown.json()["field"] == "pipeline"

    served = httpx.get(f"{api}/deployments", params={"pipeline": "tumours"}, headers=viewer, timeout=60).json()
    deployment = served["items"][0]
    assert deployment["serving"]["weights"] == {"1": 100.0} and deployment["unavailable"] is None, deployment
    assert deployment["canary"]["outcome"] == "deployed" and deployment["canary"]["run_id"] == run_id

    studies = httpx.get(f"{api}/experiments", params={"pipeline": "tumours"}, headers=viewer, timeout=60).json()
    study = next(s for s in studies["items"] if s["run_id"] == run_id)
    assert study["study"] == f"tumours:{run_id}" and study["mlflow_run_id"] == v1["lineage"]["training_run"]
    assert sum(study["states"].values()) == len(study["trials"]) >= 1 and study["states"].get("COMPLETE", 0) >= 1
    complete = [t for t in study["trials"] if t["state"] == "COMPLETE"]
    assert all(t["mlflow_run_id"] and t["value"] is not None for t in complete)
    best = max if study["direction"] == "maximize" else min
    assert study["best"]["value"] == best(t["value"] for t in complete)

    features = httpx.get(f"{api}/features", params={"pipeline": "tumours"}, headers=viewer, timeout=120).json()
    tumours = features["items"][0]
    assert tumours["versions"] == {"1": "tumours_features_v1"}
    services = {s["name"]: s["feature_views"] for s in tumours["feature_services"]}
    views = {v["name"]: v for v in tumours["feature_views"]}
    assert services["tumours_features_v1"] and set(services["tumours_features_v1"]) <= set(views)
    assert all(v["last_materialized"] and v["features"] for v in views.values())

    health = httpx.get(f"{api}/health", headers=viewer, timeout=60).json()
    assert health["status"] == "up", health
    assert [r["service"] for r in health["services"]] == [
        "database",
        "object_store",
        "mlflow",
        "serve",
        "airflow_scheduler",
    ]
    assert httpx.get(f"{api}/health", timeout=30).status_code == 401
    page = httpx.get(f"{api.removesuffix('/api/ml')}/mlcycle/page", headers=admin, timeout=60)
    assert page.status_code == 200 and '<a href="/api/ml/experiments?pipeline=churn">' in page.text


def test_the_page_shows_what_the_platforms_alertmanager_fires_for_the_pipeline(up: dict[str, str]) -> None:
    """The page's Alerts section reads `mlcycle up`'s Alertmanager: an event for churn shows there, escaped."""
    from datetime import UTC, datetime

    from pipelines.core.alerts import rollback_alert
    from pipelines.core.settings import Settings
    from pipelines.io.alerts import send

    base, admin = f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}", token(up, "admin")
    page = httpx.get(f"{base}/mlcycle/page?pipeline=churn", headers=admin, timeout=60)
    assert page.status_code == 200 and "<h2>Alerts" in page.text
    event = rollback_alert("churn", 9, 1, "page drill <b>", datetime.now(UTC))
    assert send(Settings(alertmanager_url=f"http://127.0.0.1:{up['MLCYCLE_ALERTMANAGER_PORT']}"), [event])
    page = httpx.get(f"{base}/mlcycle/page?pipeline=churn", headers=admin, timeout=60)
    assert "churn: v9 rolled back, v1 stays champion: page drill &lt;b&gt;" in page.text, page.text[:3000]


def test_mlcycle_batch_run_publishes_predictions_that_the_api_and_the_page_list(up: dict[str, str]) -> None:
    """`mlcycle batch run --wait` after the tumours run: `tumours_batch` (pin, one partition,
    publish) through the platform's Airflow, its summary printed; `/api/ml/pipelines/tumours/batch`
    answers the run as the records hold it, behind the login, and the page lists it."""
    done = mlcycle(up, "batch", "run", "--pipeline", "tumours", "--wait", timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    found = re.search(r"==> tumours_batch (\S+): success", done.stdout)
    assert found, done.stdout[-3000:]
    run_id = found.group(1)
    assert f"  {run_id}  v1  " in done.stdout and "predictions: tumours_predictions_latest, " in done.stdout

    base, viewer = f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}", token(up, "viewer")
    api = f"{base}/api/ml/pipelines"
    listed = httpx.get(f"{api}/tumours/batch", headers=viewer, timeout=60).json()
    assert (listed["pipeline"], listed["total"], listed["next_offset"]) == ("tumours", 1, None), listed
    run = listed["items"][0]
    assert (run["run_id"], run["version"], run["partitions"]) == (run_id, 1, 1)
    assert run["rows_scored"] > 0 and run["rows_scored"] + run["rows_quarantined"] == 569  # every patient
    assert run["outputs"]["view"] == "tumours_predictions_latest" and len(run["outputs"]["parquet"]) == 1
    assert datetime.fromisoformat(run["published_at"]) > datetime.fromisoformat(run["as_of"]) and run["seconds"] > 0
    script = (  # the records behind the answer: the latest view holds the run's rows
        "from pipelines.core.settings import load_settings\nfrom pipelines.io import db\n"
        "with db.connect(load_settings()) as conn:\n"
        "    print(conn.execute('SELECT count(*), min(run_id) FROM tumours_predictions_latest').fetchone())\n"
    )
    rows = subprocess.run([sys.executable, "-c", script], env=up, cwd=PROJECT_DIR, capture_output=True, text=True)
    assert rows.stdout.strip().splitlines()[-1] == str((run["rows_scored"], run_id)), rows.stderr[-2000:]
    for past in (1, 2**64):  # past the end, and past PostgreSQL's bigint: an empty page
        assert httpx.get(f"{api}/tumours/batch", params={"offset": past}, headers=viewer).json()["items"] == []
    assert httpx.get(f"{api}/churn/batch", headers=viewer, timeout=60).json()["items"] == []  # no run published
    assert httpx.get(f"{api}/tumours/batch", timeout=30).status_code == 401
    missing = httpx.get(f"{api}/nope/batch", headers=viewer, timeout=60)
    assert missing.status_code == 404 and missing.json() == httpx.get(f"{api}/nope", headers=viewer).json()
    trail = httpx.get(f"{api}/tumours/audit", params={"action": "trigger"}, headers=viewer, timeout=60).json()
    assert trail["items"][0]["run_id"] == run_id and trail["items"][0]["detail"]["dag"] == "tumours_batch"

    page = httpx.get(f"{base}/mlcycle/page", params={"pipeline": "tumours"}, headers=viewer, timeout=60)
    section = page.text[page.text.index("<h2>Batch predictions</h2>") :]
    assert run_id in section and f"<td class='num'>{run['rows_scored']}</td>" in section
    assert "tumours_predictions_latest" in section


def test_steering_through_the_api_is_the_admins_with_a_reason_and_the_viewers_never(up: dict[str, str]) -> None:
    """Pin, unpin and roll back through `/api/ml` as Airflow users: the viewer is refused (403),
    the admin's actions are recorded with their name and reason (docs/steering.md)."""
    api = f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}/api/ml/pipelines/tumours"
    admin, viewer = token(up, "admin"), token(up, "viewer")
    why = {"reason": "release freeze"}
    for action in ("pin", "unpin", "rollback"):
        assert httpx.post(f"{api}/{action}", json=why, headers=viewer, timeout=60).status_code == 403
    assert httpx.post(f"{api}/pin", json={}, headers=admin, timeout=60).status_code == 422  # no reason
    form = httpx.post(f"{api}/pin", data=why, headers=admin, timeout=60)
    assert form.status_code == 415 and "application/json" in form.json()["reason"]
    pinned = httpx.post(f"{api}/pin", json=why, headers=admin, timeout=60)
    assert pinned.status_code == 201 and (pinned.json()["by"], pinned.json()["version"]) == ("admin", 1)
    assert httpx.post(f"{api}/pin", json=why, headers=admin, timeout=60).status_code == 409  # pinned already
    shown = httpx.get(api, headers=viewer, timeout=60).json()["pin"]
    assert (shown["by"], shown["reason"]) == ("admin", "release freeze")
    assert httpx.post(f"{api}/unpin", json={"reason": "over"}, headers=admin, timeout=60).status_code == 200
    assert httpx.get(f"{api}/pin", headers=viewer, timeout=60).json()["pin"] is None
    first = httpx.post(f"{api}/rollback", json={"reason": "why not"}, headers=admin, timeout=60)
    assert first.status_code == 409 and "first champion on record" in first.json()["reason"]


def test_the_platform_api_fuzzed_from_its_openapi_answers_no_5xx_and_every_4xx_says_why(up: dict[str, str]) -> None:
    """Schemathesis against the running api-server: every `/api/ml` operation, with requests from
    its OpenAPI description and against it; reads as admin, writes as the viewer (refused 403, or
    422 first: nothing is triggered or loaded), and every operation without a token (401)."""
    from tests.fuzz import fuzz

    base = f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}/api/ml"
    schema = httpx.get(f"{base}/openapi.json", headers=token(up, "admin"), timeout=60).json()
    resources = {"/models", "/models/{pipeline}/versions/{version}", "/deployments", "/experiments", "/features"}
    assert resources | {"/health", "/pipelines"} <= set(schema["paths"]), schema["paths"]
    signed = fuzz(schema, base, {"GET": token(up, "admin"), "POST": token(up, "viewer")}, examples=15)
    anonymous = fuzz(schema, base, examples=3)
    assert signed.problems == [] and anonymous.problems == [], (signed.problems + anonymous.problems)[:5]
    assert signed.statuses[200] > 0 and signed.statuses[404] > 0 and signed.statuses[422] > 0, signed.statuses
    # FastAPI reads a route's body before its dependencies (the login among them): a body it cannot
    # decode at all (bytes that are not UTF-8) is a 400 "error parsing the body" before the 401
    assert set(anonymous.statuses) <= {400, 401, 403, 404, 422} and anonymous.statuses[401] > 0, anonymous.statuses


@pytest.mark.timeout(900)  # the lifecycle, a dead task's heartbeat timeout (60 s) and its retry delay
def test_a_killed_scheduler_is_back_within_30s_and_the_run_in_flight_finishes(up: dict[str, str]) -> None:
    triggered = mlcycle(up, "run", "churn")
    assert triggered.returncode == 0, triggered.stderr[-3000:]
    home = Path(up["MLCYCLE_STATE_DIR"]) / "platform"
    ctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(home / "supervisord.conf")]
    time.sleep(10)  # the run is in its first tasks
    pid = int(subprocess.run([*ctl, "pid", "airflow-scheduler"], capture_output=True, text=True).stdout)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    while True:
        new = subprocess.run([*ctl, "pid", "airflow-scheduler"], capture_output=True, text=True).stdout.strip()
        if new.isdigit() and int(new) not in (0, pid) and services(up)["airflow-scheduler"] == ("RUNNING", "healthy"):
            break
        assert time.monotonic() - killed < 30, "the scheduler is not back within 30 s"
        time.sleep(1)
    # the run goes on to its end (a task whose process died with the scheduler is retried)
    run_id = triggered.stdout.split()[2]
    script = (
        "import sys\n"
        "from pipelines.core.settings import load_settings\n"
        "from pipelines.local.platform import Platform\n"
        "c = Platform(load_settings()).client()\n"
        f"print(c.wait_run('churn_lifecycle', {run_id!r}, timeout=780)['state'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=up, cwd=PROJECT_DIR, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]  # a timeout names each task's state
    assert out.stdout.strip().splitlines()[-1] == "success", out.stdout[-2000:] + out.stderr[-2000:]


def in_platform(env: dict[str, str], code: str) -> Any:
    """Run `code` in a Python with the platform's settings (`load_settings()` on `mlcycle up`'s
    environment, as a user's script has them); its last printed line, read as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def partition_process(run_id: str, worker: int) -> Any:
    """The `mlcycle step batch ... --worker N` process of the run, found by its command line."""
    import psutil

    tail = ["step", "batch", "--pipeline", "churn", "--run-id", run_id, "--worker", str(worker)]
    found = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-len(tail) :] == tail]
    assert len(found) == 1, found
    return found[0]


# Holds partition 1's attempt where it has scored and written its rows but not yet recorded its
# outcome: its `step_runs` row locked (FOR UPDATE) once it runs, until the test says so.
HOLD_PARTITION = """
import sys, time
from pipelines.core.settings import load_settings
from pipelines.io import db
run_id, deadline = sys.argv[1], time.monotonic() + 600
mine = "pipeline='churn' AND run_id=%s AND step='batch' AND worker=1"
with db.connect(load_settings()) as conn:
    while not conn.execute(f"SELECT 1 FROM step_runs WHERE {mine} AND status='running' FOR UPDATE", (run_id,)).fetchone():
        assert time.monotonic() < deadline, "partition 1 did not start"
        time.sleep(0.2)
    blocked = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type='Lock' AND query LIKE 'UPDATE step_runs%%'"
    while not conn.execute(blocked).fetchone()[0]:  # a snapshot in a transaction: cleared each time
        conn.execute("SELECT pg_stat_clear_snapshot()")
        assert time.monotonic() < deadline, "partition 1 did not finish its work"
        time.sleep(0.2)
    rows = conn.execute(
        "SELECT count(*) FROM batch_predictions WHERE pipeline='churn' AND run_id=%s AND partition=1", (run_id,)
    ).fetchone()[0]
    print(rows, flush=True)
    sys.stdin.readline()
"""


MOVE_CHAMPION = (
    "import json\nfrom pipelines.core.settings import load_settings\n"
    "from tests.integration.helpers import copy_as_champion\n"
    "print(json.dumps(copy_as_champion(load_settings(), 'churn')))\n"
)


def test_a_batch_run_survives_a_killed_partition_and_scores_each_entity_once_with_the_pinned_version(
    up: dict[str, str],
) -> None:
    """The bundled churn pipeline's `churn_batch` DAG (its champion trained by the run above) on
    the running platform: the offline store's customers in two partitions of 100-row chunks.
    Right after `pin`, the `champion` alias moves to another version. Partition 1's process is
    held where it has scored and committed its rows but not recorded its outcome, and SIGKILLed
    there; Airflow retries it (after the move), and the retry's rows must replace the first
    attempt's. The published output, the view and the run's rows, holds each pinned entity exactly
    once, every row with the pinned version.
    Needs the churn champion of `test_a_killed_scheduler_is_back_within_30s_and_the_run_in_flight_finishes`
    (alone: `-k "killed_scheduler or batch_run"`)."""

    base = f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}/api/v2/dags/churn_batch"
    admin = token(up, "admin")
    spec_path = Path(up["MLCYCLE_PIPELINES_DIR"]) / "churn.yaml"
    original = spec_path.read_text()
    spec = yaml.safe_load(original)
    spec["batch"] = {**spec["batch"], "parallelism": 2, "chunk_rows": 100}  # the least; read by each task
    spec["retry_delay_s"] = 2  # the killed partition's retry comes soon
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    champion = in_platform(
        up,
        "from pipelines.core.settings import load_settings\n"
        "from pipelines.io.registry import champion_version\n"
        "print(champion_version(load_settings(), 'churn'))\n",
    )
    mover = holder = None
    try:
        made = httpx.post(f"{base}/dagRuns", json={"logical_date": None, "conf": {}}, headers=admin, timeout=60)
        assert made.status_code == 200, made.text
        run_id = made.json()["dag_run_id"]
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_PARTITION, run_id],
            env=up,
            cwd=PROJECT_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        tasks = f"{base}/dagRuns/{run_id}/taskInstances"

        def states() -> dict[tuple[str, int], dict[str, Any]]:
            found = httpx.get(tasks, headers=admin, timeout=60).json()["task_instances"]
            return {(t["task_id"], t["map_index"]): t for t in found}

        wait_for(lambda: states().get(("pin", -1), {}).get("state") == "success", "the pin did not succeed", 600)
        mover = subprocess.Popen(
            [sys.executable, "-c", MOVE_CHAMPION], env=up, cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True
        )
        first_rows = (holder.stdout.readline() if holder.stdout else "").strip()  # partition 1 is held
        assert first_rows.isdigit() and int(first_rows) > 0, f"partition 1 was not held: {first_rows!r}"
        victim = partition_process(run_id, 1)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)  # gone (not our child: psutil cannot tell its status)
        holder.communicate("go\n", timeout=60)
        moved_to = int((mover.communicate(timeout=300)[0] or "0").strip().splitlines()[-1])
        moved_at = datetime.now().astimezone()
        assert moved_to != champion

        runs = f"{base}/dagRuns/{run_id}"
        wait_for(
            lambda: httpx.get(runs, headers=admin, timeout=60).json()["state"] in ("success", "failed"), "no end", 900
        )
        assert httpx.get(runs, headers=admin, timeout=60).json()["state"] == "success", states()
        retried = states()[("score", 1)]
        assert retried["try_number"] >= 2, retried  # Airflow ran the killed partition again
        # ... after the alias moved: the retry could only have read the new champion
        assert datetime.fromisoformat(retried["start_date"].replace("Z", "+00:00")) > moved_at, (retried, moved_at)

        got = in_platform(
            up,
            "import json\nfrom pipelines.core.settings import load_settings\nfrom pipelines.io import db\n"
            "from pipelines.io.registry import champion_version\nfrom pipelines.io.storage import open_storage\n"
            "s = load_settings()\n"
            f"pin = json.loads(open_storage(s).read_bytes('churn/{run_id}/batch_pin/manifest.json'))\n"
            "with db.connect(s) as conn:\n"
            '    rows = conn.execute("SELECT count(*), count(DISTINCT entity_id), array_agg(DISTINCT version)"\n'
            f"        \" FROM batch_predictions WHERE pipeline='churn' AND run_id=%s\", ({run_id!r},)).fetchone()\n"
            '    view = conn.execute("SELECT count(*), count(DISTINCT entity_id), array_agg(DISTINCT version),"\n'
            '        " array_agg(DISTINCT run_id) FROM churn_predictions_latest").fetchone()\n'
            "print(json.dumps({'pin': pin, 'rows': rows, 'view': view, 'champion': champion_version(s, 'churn')}))\n",
        )
        pin, entities = got["pin"], got["pin"]["entities"]
        assert pin["version"] == champion and got["champion"] == moved_to  # pinned before the move
        assert entities > 1000 and sum(pin["partition_rows"]) == entities
        assert got["rows"] == [entities, entities, [champion]]  # each entity once, none lost, the pinned version
        assert got["view"] == [entities, entities, [champion], [run_id]]  # published: this run's rows alone
    finally:
        spec_path.write_text(original)
        if holder is not None and holder.poll() is None:
            holder.kill()
        if mover is not None:
            mover.wait(300)
            in_platform(  # the champion back where the run above left it (serve-sync follows it)
                up,
                "import mlflow\nfrom pipelines.core.settings import load_settings\n"
                "from pipelines.io.registry import CHAMPION, model_name\nfrom pipelines.io.tracking import setup_mlflow\n"
                "setup_mlflow(load_settings(), 'churn')\n"
                f"mlflow.MlflowClient().set_registered_model_alias(model_name('churn'), CHAMPION, '{champion}')\n"
                "print(1)\n",
            )


ARTIFACTS = Path(os.environ.get("MLCYCLE_TEST_ARTIFACTS", PROJECT_DIR / ".test-artifacts")) / "browser"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through its WebDriver (`make tools` installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "no chromium/chromedriver: `make tools` installs Debian's (tools/browser.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    session = webdriver.Chrome(options=options, service=Service(driver))
    session.implicitly_wait(20)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield session
    finally:
        session.save_screenshot(str(ARTIFACTS / "last.png"))  # where it stood, pass or fail
        session.quit()


def serve_and_label(env: dict[str, str], pipeline: str, per_class: int = 20) -> dict[str, Any]:
    """Live traffic whose outcomes arrive: `per_class` patients of each class served in one request
    and their true labels posted for it through the platform API. Returns the served answer."""
    import csv

    spec = yaml.safe_load((Path(env["MLCYCLE_PIPELINES_DIR"]) / f"{pipeline}.yaml").read_text())
    join, label = spec["entity"]["join_key"], spec["label"]["column"]
    with open(spec["source"]["path"]) as f:
        rows = [(int(r[join]), int(r[label])) for r in csv.DictReader(f)]
    chosen = [r for r in rows if r[1] == 1][:per_class] + [r for r in rows if r[1] == 0][:per_class]
    key = (Path(env["MLCYCLE_STATE_DIR"]) / "serving-api-key").read_text().strip()
    url = f"http://127.0.0.1:{env['MLCYCLE_SERVE_PORT']}/v1/pipelines/{pipeline}/predict"
    body = {"instances": [{"entity_id": e} for e, _ in chosen]}
    answer = httpx.post(url, json=body, headers={"x-api-key": key}, timeout=60)
    assert answer.status_code == 200, answer.text
    served = dict(answer.json())
    api = f"http://127.0.0.1:{env['MLCYCLE_AIRFLOW_PORT']}/api/ml"
    labels = {"labels": [{"entity_id": e, "label": y, "request_id": served["request_id"]} for e, y in chosen]}
    loaded = httpx.post(f"{api}/pipelines/{pipeline}/labels", json=labels, headers=token(env, "admin"), timeout=60)
    assert loaded.status_code == 201 and loaded.json()["loaded"] == len(chosen), loaded.text
    viewer = token(env, "viewer")
    wait_for(  # the request log is flushed off the request path
        lambda: httpx.get(f"{api}/predictions/{served['request_id']}", headers=viewer, timeout=60).status_code == 200,
        "the labelled predictions never reached the request log",
    )
    return served


def test_the_mlcycle_page_in_a_real_browser(up: dict[str, str], browser: Any) -> None:
    """Open the mlcycle page without a session and be sent to Airflow's login, which leads back to
    it; see the champion of the user's pipeline (promoted by its first run) with its live metric
    from labelled traffic and no challenger; the demo pipeline's champion under the UI's own
    navigation; follow a Report link and a trace lookup, and trigger a run from the Trigger form
    with a changed param."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base = f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}"
    passwords = airflow_passwords(up)
    served = serve_and_label(up, TRIGGERED)  # the champion's traffic, and its outcomes

    # no session: the page sends the browser to Airflow's login, as the UI does for its own pages
    browser.get(f"{base}/mlcycle/page?pipeline={TRIGGERED}")
    wait_for(lambda: "/auth/login" in browser.current_url, "the page without a session did not go to the login")
    assert "next=" in browser.current_url and "mlcycle" in browser.current_url, browser.current_url
    assert "Not authenticated" not in browser.page_source
    browser.save_screenshot(str(ARTIFACTS / "login.png"))
    log_in(browser, passwords["admin"])
    assert f"pipeline={TRIGGERED}" in browser.current_url

    # after its first model's promotion: the champion's live metric, and no challenger beside it
    recorded = httpx.get(f"{base}/api/ml/pipelines/{TRIGGERED}", headers=token(up, "viewer"), timeout=60).json()
    version = recorded["champion"]["version"]
    live = browser.find_element(By.ID, "live-champion").text
    figure = re.match(rf"v{version} \(champion\): live roc_auc (0\.\d{{4}}|1\.0000) on (\d+) labels", live)
    assert figure is not None and int(figure.group(2)) >= len(served["predictions"]), live
    assert browser.find_elements(By.CSS_SELECTOR, f"circle[data-version='{version}'][r='6']")  # its point, ringed
    challenger = browser.find_element(By.CSS_SELECTOR, "[data-alias=challenger]").text
    assert "no challenger" in challenger and f"v{version} is the champion" in challenger, challenger
    browser.save_screenshot(str(ARTIFACTS / "page-after-promotion.png"))

    # the page, under the UI's own navigation: churn (the demo's pipeline, run by the test before)
    browser.get(f"{base}/plugin/mlcycle")
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe"))
    champion = browser.find_element(By.CSS_SELECTOR, "[data-alias=champion]").text
    recorded = httpx.get(f"{base}/api/ml/pipelines/churn", headers=token(up, "viewer"), timeout=60).json()["champion"]
    assert champion.startswith(f"champion\nv{recorded['version']} roc_auc {recorded['metric'][8:14]}"), champion
    timing = browser.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return {response_ms: n.responseEnd - n.startTime, load_ms: n.loadEventEnd - n.startTime};"
    )
    (ARTIFACTS / "page-timing.json").write_text(json.dumps(timing))
    browser.switch_to.default_content()
    browser.save_screenshot(str(ARTIFACTS / "page.png"))

    # a trace lookup of a prediction served now (by the user's pipeline: the lookup spans the pipelines)
    served = predict(up, "tumours", 8)
    tumours = httpx.get(f"{base}/api/ml/pipelines/tumours", headers=token(up, "viewer"), timeout=60).json()
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe"))
    deadline = time.monotonic() + 30  # the request log is flushed off the request path
    while True:
        field = browser.find_element(By.NAME, "request_id")
        field.clear()
        field.send_keys(served["request_id"], Keys.ENTER)
        wait_for(lambda: served["request_id"] in browser.current_url, "the trace form was not submitted")
        if browser.find_elements(By.ID, "trace") or time.monotonic() > deadline:
            break
        time.sleep(2)
    trace = browser.find_element(By.ID, "trace").text
    assert "tumours 8" in trace and re.search(rf"v{tumours['champion']['version']} (challenger )?champion ", trace), (
        trace
    )
    browser.save_screenshot(str(ARTIFACTS / "trace.png"))

    # a Report link of the last runs leaves the frame for the report page, which leads back
    browser.find_element(By.CSS_SELECTOR, "td.reports a[href$='/validate']").click()
    browser.switch_to.default_content()
    wait_for(lambda: "/mlcycle/reports/" in browser.current_url, "the Report link did not open the report page")
    assert "back to the run" in browser.find_element(By.TAG_NAME, "header").text
    assert browser.find_element(By.CSS_SELECTOR, "iframe").get_attribute("src").endswith("/validate/report.html")
    browser.save_screenshot(str(ARTIFACTS / "report.png"))

    # the Trigger form, with a changed param: the run it makes succeeds
    browser.get(f"{base}/dags/{TRIGGERED}_lifecycle")
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Trigger Dag']").click()
    spec = yaml.safe_load((Path(up["MLCYCLE_PIPELINES_DIR"]) / f"{TRIGGERED}.yaml").read_text())
    default = int(spec["training"]["n_trials"])
    changed = 1 if default != 1 else 2
    trials = browser.find_element(By.NAME, "element_n_trials")
    assert trials.get_attribute("value") == str(default)  # the form shows the spec's default
    trials.send_keys(Keys.CONTROL, "a")
    trials.send_keys(str(changed))
    browser.find_element(By.CSS_SELECTOR, "[id='switch:element_dry_run']").click()
    browser.save_screenshot(str(ARTIFACTS / "trigger-form.png"))
    buttons = browser.find_elements(By.CSS_SELECTOR, "[role=dialog] button")
    next(b for b in buttons if b.text.strip() == "Trigger").click()
    admin = token(up, "admin")
    runs_url = f"{base}/api/v2/dags/{TRIGGERED}_lifecycle/dagRuns"

    def made() -> dict[str, Any] | None:
        runs = httpx.get(runs_url, params={"order_by": "-run_after", "limit": 5}, headers=admin, timeout=30).json()
        mine = (r for r in runs["dag_runs"] if r["triggered_by"] == "ui" and r["conf"].get("n_trials") == changed)
        return next(mine, None)

    wait_for(lambda: made() is not None, f"no run with n_trials {changed} was made by the form")
    run = made()
    assert run is not None and run["conf"]["dry_run"] is True, run
    started_by = ("trigger", "admin", run["dag_run_id"], "ui")  # Airflow's own form, audited all the same
    wait_for(lambda: started_by in approval_events(up, TRIGGERED, ("trigger",)), "the form's run was not audited", 120)
    deadline = time.monotonic() + 600
    while (state := httpx.get(f"{runs_url}/{run['dag_run_id']}", headers=admin, timeout=30).json()["state"]) not in (
        "success",
        "failed",
    ):
        assert time.monotonic() < deadline, f"the run from the form is still {state}"
        time.sleep(5)
    assert state == "success"


def airflow_passwords(env: dict[str, str]) -> dict[str, str]:
    """The users' passwords Airflow's simple auth manager generated for this platform."""
    found = json.loads((Path(env["MLCYCLE_STATE_DIR"]) / "airflow" / "simple_auth_manager_passwords.json").read_text())
    return dict(found)


def log_in(browser: Any, password: str, user: str = "admin") -> None:
    """Fill Airflow's login form, where an unauthenticated page sent the browser, and wait to be
    led back to the mlcycle page."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.NAME, "username").send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: "/mlcycle/page" in browser.current_url, "the login did not lead back to the page")


def full_page_screenshot(browser: Any, path: Path) -> None:
    """The whole page in one image: the window grown to the document's height for the shot."""
    width, height = browser.get_window_size().values()
    browser.set_window_size(width, max(height, browser.execute_script("return document.body.scrollHeight") + 120))
    browser.save_screenshot(str(path))
    browser.set_window_size(width, height)


def wait_for(condition: Any, message: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.5)


GATED = "gated"  # a pipeline whose spec asks a person to approve each challenger


def approval_events(
    env: dict[str, str], pipeline: str, actions: tuple[str, ...] = ("approve", "reject")
) -> list[tuple[str, str, str, str]]:
    """The pipeline's audit events of `actions`, newest first: (action, actor, run, reason or, for
    a trigger, how it came)."""
    script = (
        "import json\n"
        "from pipelines.core.settings import load_settings\n"
        "from pipelines.io.audit import events\n"
        f"rows = [e for e in events(load_settings(), {pipeline!r}) if e['action'] in {actions!r}]\n"
        "print(json.dumps([[e['action'], e['actor'], e['run_id'], e['reason'] or e['detail'].get('via')]"
        " for e in rows]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return [tuple(e) for e in json.loads(out.stdout.strip().splitlines()[-1])]


def test_a_manual_approval_waits_for_a_reviewer_whose_approval_promotes_and_whose_reject_skips_promotion(
    up: dict[str, str], browser: Any
) -> None:
    """`promotion.approval: manual` on a tiny pipeline: a run waits at its approval (Airflow's HITL
    task) with the evaluation summary; a viewer is refused (Airflow's REST API, the platform API,
    the CLI); the admin approves through Airflow's REST API: promote and the canary run, v1 is
    champion. A second run, rejected with `mlcycle model reject --reason`, skips promote and the
    canary: the champion stays v1. A third is approved by clicking Approve on the mlcycle page, and
    its champion rolled back by clicking Roll back there: v1 again. Each decision and the rollback
    is audited with the Airflow user and the reason, and the page's audit shows them."""
    from selenium.webdriver.common.by import By

    from tests.integration.helpers import SHORT_CANARY

    started = time.monotonic()
    write_spec(
        Path(up["MLCYCLE_PIPELINES_DIR"]),
        GATED,
        merge=True,
        source={"kind": "synthetic", "customers": 300, "months": 6, "seed": 5},
        training={"n_trials": 1, "max_epochs": 2, "pruner": "none"},
        evaluation={"min_primary": 0.5, "min_improvement": -1.0, "bootstrap_samples": 50, "beat_baseline": False},
        # 10 s at 20 %: the page's wrk (2 connections, 20 ms apart) gives the challenger its
        # min_requests even where each answer takes 100 ms (4 s gave 14 of 15 on a busy host)
        canary={**SHORT_CANARY, "dwell_s": 10},
        promotion={"approval": "manual", "approval_timeout_h": 1},
    )
    base = f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}"
    admin, viewer = token(up, "admin"), token(up, "viewer")
    dag = f"{GATED}_lifecycle"
    api = f"{base}/api/ml/pipelines/{GATED}/approvals"
    wait_for(lambda: httpx.get(f"{base}/api/v2/dags/{dag}", headers=admin, timeout=60).status_code == 200, "", 180)
    httpx.patch(f"{base}/api/v2/dags/{dag}", json={"is_paused": False}, headers=admin, timeout=60).raise_for_status()

    def waiting_run() -> str:
        made = httpx.post(f"{base}/api/v2/dags/{dag}/dagRuns", json={"logical_date": None}, headers=admin, timeout=60)
        run_id = str(made.json()["dag_run_id"])

        def waiting() -> bool:
            items = httpx.get(api, headers=viewer, timeout=60).json()["items"]
            return any(a["run_id"] == run_id and a["state"] == "waiting" for a in items)

        wait_for(waiting, "the run never waited at its approval", 600)
        return run_id

    def finished(run_id: str) -> tuple[str, str, str]:
        runs = f"{base}/api/v2/dags/{dag}/dagRuns/{run_id}"
        ended = ("success", "failed")
        wait_for(lambda: httpx.get(runs, headers=admin, timeout=60).json()["state"] in ended, "no end", 300)
        tis = httpx.get(f"{runs}/taskInstances", headers=admin, timeout=60).json()["task_instances"]
        states = {t["task_id"]: t["state"] for t in tis}
        return states["approval"], states["promote"], states["canary"]

    def champion() -> int | None:
        found = httpx.get(f"{base}/api/ml/pipelines/{GATED}", headers=viewer, timeout=60).json()["champion"]
        return found["version"] if found else None

    first = waiting_run()
    hitl = f"{base}/api/v2/dags/{dag}/dagRuns/{first}/taskInstances/approval/-1/hitlDetails"
    detail = httpx.get(hitl, headers=viewer, timeout=60).json()
    assert detail["subject"] == f"Promote {GATED}'s challenger of run {first}?"
    assert "No champion yet: the challenger's roc_auc is" in detail["body"] and "**Gates:**" in detail["body"]
    assert f"[Evaluation report](/mlcycle/reports/{dag}/" in detail["body"]
    # a viewer may read it, and answer it nowhere
    answer = {"chosen_options": ["Approve"], "params_input": {"reason": "slices checked"}}
    assert httpx.patch(hitl, json=answer, headers=viewer, timeout=60).status_code == 403
    body = {"run_id": first, "decision": "approve", "reason": "x"}
    assert httpx.post(api, json=body, headers=viewer, timeout=60).status_code == 403
    as_viewer = mlcycle(up, "model", "approve", GATED, "--run", first, "--user", "viewer", timeout=120)
    assert as_viewer.returncode == 1 and "refused (403)" in as_viewer.stdout, as_viewer.stdout + as_viewer.stderr
    approved = httpx.patch(hitl, json=answer, headers=admin, timeout=60)
    assert approved.status_code == 200 and approved.json()["responded_by"]["name"] == "admin", approved.text
    assert finished(first) == ("success", "success", "success")
    assert champion() == 1

    second = waiting_run()
    items = httpx.get(api, headers=viewer, timeout=60).json()["items"]
    assert "| roc_auc | champion v1 | challenger |" in next(a for a in items if a["run_id"] == second)["body"]
    rejected = mlcycle(up, "model", "reject", GATED, "--run", second, "--reason", "holdout looks off", timeout=120)
    assert rejected.returncode == 0, rejected.stdout + rejected.stderr
    assert finished(second) == ("success", "skipped", "skipped")
    assert champion() == 1
    assert approval_events(up, GATED) == [
        ("reject", "admin", second, "holdout looks off"),
        ("approve", "admin", first, "slices checked"),
    ]

    # the reviewer on the mlcycle page: the waiting run's summary, a reason, the Approve button
    third = waiting_run()
    page = f"{base}/mlcycle/page?pipeline={GATED}"
    browser.get(page)
    log_in(browser, airflow_passwords(up)["admin"])
    form = browser.find_element(By.CSS_SELECTOR, f"form.approval[data-run='{third}']")
    assert "| roc_auc | champion v1 | challenger |" in form.find_element(By.TAG_NAME, "pre").text
    form.find_element(By.NAME, "reason").send_keys("reviewed on the page")
    full_page_screenshot(browser, ARTIFACTS / "approval-waiting.png")
    # live traffic from wrk, gently, through the canary and the rollback (bounded: SIGINT, 400 s at most)
    key = (Path(up["MLCYCLE_STATE_DIR"]) / "serving-api-key").read_text().strip()
    endpoint = f"http://127.0.0.1:{up['MLCYCLE_SERVE_PORT']}/v1/pipelines/{GATED}"
    bodies = [json.dumps({"instances": [{"entity_id": e}]}) for e in range(1, 51)]
    proc, work = loadgen.start(
        f"{endpoint}/predict", bodies, {"x-api-key": key}, connections=2, seconds=400, delay_ms=20
    )

    def loaded() -> list[int]:
        return list(httpx.get(f"{endpoint}/readyz", headers={"x-api-key": key}, timeout=30).json()["versions"])

    try:
        form.find_element(By.CSS_SELECTOR, "button[data-decision=approve]").click()
        output = form.find_element(By.TAG_NAME, "output")
        wait_for(lambda: output.text == "approved by admin", f"the page's approval was not taken: {output.text!r}")
        assert finished(third) == ("success", "success", "success")
        promoted = champion()
        assert promoted is not None and promoted > 1

        # ... and the Roll back button: the champion before it is restored, and served alone
        browser.get(page)
        steer = browser.find_element(By.CSS_SELECTOR, "form[data-steer]")
        assert browser.find_element(By.CSS_SELECTOR, "[data-alias=champion]").text.startswith(f"champion\nv{promoted} ")
        steer.find_element(By.NAME, "reason").send_keys("page rollback drill")
        clicked = time.monotonic()
        steer.find_element(By.CSS_SELECTOR, "button[value=rollback]").click()
        wait_for(lambda: champion() == 1, "the page's Roll back did not restore v1", 120)
        wait_for(lambda: loaded() == [1], "Serve did not serve v1 alone after the page's rollback", 120)
        print(f"page rollback: click to v1 served alone in {time.monotonic() - clicked:.1f} s")
    finally:
        proc.send_signal(signal.SIGINT)  # wrk prints what it measured and ends
    load = loadgen.finish(proc, work, 2, 0)
    assert load.requests > 0 and load.non_2xx == 0 and load.socket_errors == 0, load
    print(f"wrk through the canary and the rollback: {load.requests} requests, {load.non_2xx} non-2xx")
    wait_for(  # the page reloads itself after the action
        lambda: browser.find_element(By.CSS_SELECTOR, "[data-alias=champion]").text.startswith("champion\nv1 "),
        "the page did not show the restored champion",
    )
    serving = browser.find_element(By.CSS_SELECTOR, "[data-serving=moved]").text
    assert serving == "Since then: v1 is champion and serves all traffic (rollback by admin: page rollback drill)"
    audit = browser.find_element(By.CSS_SELECTOR, "table.audit").text.splitlines()[1:]  # newest first
    assert "admin (user) rollback v1" in audit[0] and "page rollback drill" in audit[0], audit[:4]
    assert any("admin (user) approve" in row and third in row and "reviewed on the page" in row for row in audit)
    full_page_screenshot(browser, ARTIFACTS / "steering-audit.png")
    # runs started through Airflow's own REST API are on the trail too (the scheduler's listener)
    triggers = approval_events(up, GATED, ("trigger",))
    assert triggers == [("trigger", "admin", run, "rest_api") for run in (third, second, first)], triggers
    print(f"approval e2e: {time.monotonic() - started:.0f} s")


def online_grant(env: dict[str, str], pipeline: str, action: str) -> list[str]:
    """GRANT or REVOKE the serving role's SELECT on the pipeline's Feast online tables, as the
    platform's owner (a broken grant: a fault the serving path meets as errors); returns them."""
    script = (
        "import json, sys\n"
        "from psycopg import sql\n"
        "from pipelines.core.settings import load_settings\n"
        "from pipelines.core.spec.loading import load_spec\n"
        "from pipelines.io import db\n"
        "from serving.online import PostgresOnlineTables\n"
        "settings = load_settings()\n"
        f"spec = load_spec(settings.specs_path / '{pipeline}.yaml')\n"
        "tables = [v.table for v in PostgresOnlineTables(spec, settings, []).views]\n"
        f"verb = sql.SQL({'GRANT SELECT ON {} TO {}' if action == 'grant' else 'REVOKE SELECT ON {} FROM {}'!r})\n"
        "with db.connect(settings, autocommit=True) as conn:\n"
        "    for t in tables:\n"
        "        conn.execute(verb.format(sql.Identifier(t), sql.Identifier(db.SERVING_ROLE)))\n"
        "print(json.dumps(tables))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_rolled_back_canary_its_failed_step_and_an_error_burst_reach_the_teams_webhook(
    up: dict[str, str], team_webhook: tuple[Webhook, str]
) -> None:
    """On the running platform, each delivered by its Alertmanager to the team's webhook, with the
    seconds from the event to the delivery printed:
    - a lifecycle run of the user's pipeline whose canary cannot get its requests (no traffic,
      min_requests out of reach) rolls back: `MlcycleCanaryRolledBack`, and its canary task,
      failed for good, `MlcycleRunFailed` with the task and its log URL (Airflow's notifier);
    - the serving role's read of the pipeline's online tables revoked (a broken grant) while
      requests come: each answers 503 and counts as an error; Prometheus's burn-rate rule over
      Ray's own counter fires `MlcycleErrorBudgetBurn`; the grant back, the endpoint answers."""
    hook, _ = team_webhook
    base = f"http://127.0.0.1:{up['MLCYCLE_AIRFLOW_PORT']}"
    admin = token(up, "admin")
    spec_path = Path(up["MLCYCLE_PIPELINES_DIR"]) / "tumours.yaml"
    original = spec_path.read_text()
    spec = yaml.safe_load(original)
    spec["evaluation"] = {**spec.get("evaluation", {}), "min_improvement": -1.0, "beat_baseline": False}
    spec["canary"] = {"steps": [50, 100], "dwell_s": 2, "min_requests": 1_000_000}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        made = httpx.post(
            f"{base}/api/v2/dags/tumours_lifecycle/dagRuns",
            json={"logical_date": None, "conf": {"n_trials": 1}},
            headers=admin,
            timeout=60,
        )
        assert made.status_code == 200, made.text
        run_id = made.json()["dag_run_id"]

        # the error burst, while the run trains: a request every 0.2 s until the burn alert is
        # delivered (Ray reports the counter, Prometheus scrapes and evaluates every 15 s,
        # Alertmanager waits 30 s to group), 300 s at most
        key = (Path(up["MLCYCLE_STATE_DIR"]) / "serving-api-key").read_text().strip()
        url = f"http://127.0.0.1:{up['MLCYCLE_SERVE_PORT']}/v1/pipelines/tumours/predict"
        tables = online_grant(up, "tumours", "revoke")
        began, statuses = time.time(), []
        try:
            with httpx.Client(headers={"x-api-key": key}, timeout=30) as client:
                while not hook.firing("MlcycleErrorBudgetBurn") and time.time() - began < 300:
                    statuses.append(client.post(url, json={"instances": [{"entity_id": 7}]}).status_code)
                    time.sleep(0.2)
        finally:
            online_grant(up, "tumours", "grant")
        took, burn = hook.wait("MlcycleErrorBudgetBurn", began, limit_s=1, pipeline="tumours")
        print(
            f"\nerror burst ({len(statuses)} requests, {tables}) -> {burn['labels']['alertname']} at the webhook: {took:.1f}s"
        )
        assert set(statuses) == {503}, statuses
        assert burn["labels"]["severity"] == "critical"
        assert predict(up, "tumours", 7)["predictions"]  # the grant back: served again

        # the rolled-back canary and its failed task
        runs = f"{base}/api/v2/dags/tumours_lifecycle/dagRuns/{run_id}"
        wait_for(
            lambda: httpx.get(runs, headers=admin, timeout=60).json()["state"] in ("success", "failed"), "no end", 900
        )
        assert httpx.get(runs, headers=admin, timeout=60).json()["state"] == "failed"
        for name in ("MlcycleCanaryRolledBack", "MlcycleRunFailed"):
            _, alert = hook.wait(name, began, limit_s=120, pipeline="tumours")
            sent = datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp()
            delivered = next(t for t, a in hook.firing(name) if a["labels"].get("pipeline") == "tumours")
            print(f"{name} -> at the webhook {delivered - sent:.1f}s after the event")
        failed = next(a for _, a in hook.firing("MlcycleRunFailed") if a["labels"].get("pipeline") == "tumours")
        assert failed["labels"]["task_id"] == "canary" and failed["labels"]["dag_id"] == "tumours_lifecycle"
        assert "/dags/tumours_lifecycle/" in failed["annotations"]["log_url"], failed["annotations"]
    finally:
        spec_path.write_text(original)


def test_down_stops_everything_and_keeps_the_data(up: dict[str, str]) -> None:
    down = mlcycle(up, "down", timeout=300)
    assert down.returncode == 0, down.stderr
    assert all(state != "RUNNING" for state, _ in services(up).values())
    for port in ("MLCYCLE_AIRFLOW_PORT", "MLCYCLE_MLFLOW_PORT", "MLCYCLE_SERVE_PORT"):  # nothing answers
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{up[port]}/", timeout=5)
    state = Path(up["MLCYCLE_STATE_DIR"])
    assert (state / "pg" / "PG_VERSION").exists() and any((state / "artifacts" / "tumours").iterdir())
