"""Whole DAG runs through Airflow (`airflow dags test`), every task on the local runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from pipelines.core.settings import PROJECT_DIR, Settings
from pipelines.io import db
from pipelines.io.registry import audit
from pipelines.io.storage import open_storage, read_parquet
from pipelines.local.local_airflow import airflow_env
from tests.alerting import alert_receiver, delay_s
from tests.conftest import churn_spec_dict
from tests.e2e.conftest import KEY
from tests.integration.helpers import SHORT_CANARY, run, small_spec
from tests.services import ray_listeners

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("airflow")


def _airflow(
    args: list[str], settings: Settings, home: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = airflow_env(settings, dict(os.environ))
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir),
            "MLCYCLE_ARTIFACT_ROOT": str(settings.artifact_root),
            **(extra or {}),
        }
    )
    exe = str(Path(sys.executable).parent / "airflow")
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=600)


def _latest_run(settings: Settings, pipeline: str = "churn") -> tuple[str, dict[str, tuple[str, int]]]:
    with db.connect(settings) as conn:
        row = conn.execute(
            "SELECT run_id FROM step_runs WHERE pipeline=%s AND run_id LIKE 'manual__%%'"
            " ORDER BY started_at DESC LIMIT 1",
            (pipeline,),
        ).fetchone()
        assert row is not None
        steps = conn.execute(
            "SELECT DISTINCT ON (step) step, status, attempt FROM step_runs"
            " WHERE pipeline=%s AND run_id=%s ORDER BY step, attempt DESC",
            (pipeline, row[0]),
        ).fetchall()
    return row[0], {s: (status, attempt) for s, status, attempt in steps}


SERVE_PROCESSES = ("haproxy", "ray::ProxyActor", "ray::HAProxyManager", "ray::ServeController", "ray::ServeReplica")
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def _assert_serve_listens_on_loopback(gcs_port: int) -> None:
    """Every socket that Serve opens on the embedded head is on 127.0.0.1, but one per Ray worker
    process: Ray's core-worker gRPC port, which Ray binds on every interface and guards with its
    token (docs/serving.md: "What listens where"). Before serving/binds.py, the ingress replica had a second
    one, Serve's inter-deployment gRPC server, open to every interface without authentication."""
    listeners = ray_listeners(gcs_port)
    serve = [(name, ip, port) for name, ip, port in listeners if name.startswith(SERVE_PROCESSES)]
    assert {name for name, _, _ in serve} >= {"haproxy", "ray::ServeReplica:churn:ingress"}, listeners
    assert all(ip in LOOPBACK for name, ip, _ in serve if name == "haproxy"), serve
    wide: dict[str, int] = {}
    for name, ip, _ in serve:
        if ip not in LOOPBACK:
            wide[name] = wide.get(name, 0) + 1
    assert all(n == 1 for n in wide.values()), serve


FAST = {"n_trials": 3, "max_epochs": 4, "early_stopping_patience": 2, "pruner": "median", "batch_size": 128}
EVAL = {"min_primary": 0.6, "bootstrap_samples": 200, "max_latency_ms_per_row": 50.0}


def test_lifecycle_dag_runs_to_a_served_champion_then_rejects_a_worse_model(
    workspace: Settings, airflow_home: Path, ray_head: dict[str, str]
) -> None:
    source = {"kind": "synthetic", "customers": 500, "months": 8, "seed": 21}
    small_spec(workspace, source, training=FAST, evaluation=EVAL)
    assert _airflow(["db", "migrate"], workspace, airflow_home).returncode == 0
    done = _airflow(["dags", "test", "churn_lifecycle"], workspace, airflow_home, ray_head)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    run_id, steps = _latest_run(workspace)
    lifecycle = ("ingest", "validate", "features", "train", "evaluate", "promote", "embed", "canary")
    assert steps == {s: ("succeeded", 1) for s in lifecycle}
    # The champion answers on Ray Serve with its version, behind the API key.
    url = f"http://127.0.0.1:{ray_head['MLCYCLE_SERVE_PORT']}/v1/pipelines/churn/predict"
    body = {"instances": [{"entity_id": 3}]}
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    served = httpx.post(url, json=body, headers={"x-api-key": KEY}, timeout=30)
    assert served.status_code == 200, served.text
    assert served.json()["predictions"][0]["version"] == 1
    # The champion's vector space answers similarity queries, with its version.
    similar = httpx.get(
        url.replace("/predict", "/similar"), params={"entity_id": 3, "k": 5}, headers={"x-api-key": KEY}
    )
    assert similar.status_code == 200, similar.text
    assert similar.json()["version"] == 1 and len(similar.json()["neighbours"]) == 5
    _assert_serve_listens_on_loopback(int(ray_head["MLCYCLE_TEST_GCS_PORT"]))
    storage = open_storage(workspace)
    train = read_parquet(storage, f"churn/{run_id}/features/train.parquet")
    assert len(train) > 500 and "usage_hours_30d" in train.columns
    assert storage.exists(f"churn/{run_id}/validate/report.html")
    assert storage.exists(f"churn/{run_id}/evaluate/report.html")
    assert "MLCYCLE_RESULT" in done.stdout + done.stderr  # the step output reached the task log
    rows = audit(workspace, "churn")
    assert [(r["alias"], r["to_version"], r["run_id"]) for r in rows] == [
        ("challenger", 1, run_id),
        ("champion", 1, run_id),
    ]

    # A second run whose model is worse: the gate rejects it, promote is skipped, the champion stays.
    crippled = churn_spec_dict()["model"]
    crippled["search_space"] = {"learning_rate": {"type": "float", "low": 1e-7, "high": 1.1e-7}}
    small_spec(
        workspace,
        source,
        training={**FAST, "n_trials": 1, "max_epochs": 1, "pruner": "none"},
        evaluation=EVAL,
        model=crippled,
    )
    done = _airflow(["dags", "test", "churn_lifecycle"], workspace, airflow_home, ray_head)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    second, steps = _latest_run(workspace)
    assert "canary" not in steps  # skipped by Airflow with promote: it never ran
    assert second != run_id
    assert steps["evaluate"] == ("succeeded", 1)
    assert steps["promote"] == ("skipped", 1)
    assert "the champion stays" in done.stdout + done.stderr
    assert audit(workspace, "churn") == rows


def _bundled_lifecycle(
    workspace: Settings, airflow_home: Path, ray_head: dict[str, str], name: str
) -> tuple[str, dict[str, Any]]:
    """Run a bundled pipeline's whole DAG (a short budget, a short canary, drift checks from 30
    requests): its run id and the
    evaluation report; every lifecycle step succeeded at its first attempt and v1 is champion."""
    import yaml

    assert workspace.pipelines_dir is not None
    spec = yaml.safe_load((PROJECT_DIR / "include" / "pipelines" / f"{name}.yaml").read_text())
    spec["training"].update(n_trials=6, time_budget_s=40, max_epochs=15)
    spec["evaluation"].update(bootstrap_samples=100, max_latency_ms_per_row=50.0)
    spec["canary"] = SHORT_CANARY
    spec["drift"]["min_requests"] = 30
    workspace.pipelines_dir.mkdir(parents=True, exist_ok=True)
    (workspace.pipelines_dir / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert _airflow(["db", "migrate"], workspace, airflow_home).returncode == 0
    done = _airflow(["dags", "test", f"{name}_lifecycle"], workspace, airflow_home, ray_head)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    run_id, steps = _latest_run(workspace, name)
    lifecycle = ("ingest", "validate", "features", "train", "evaluate", "promote", "canary")
    assert steps == {s: ("succeeded", 1) for s in lifecycle}
    trained = json.loads(open_storage(workspace).read_bytes(f"{name}/{run_id}/train/manifest.json"))
    assert set(trained["families"]) == {"linear", "lightgbm", "tabular_mlp"}  # every family searched
    assert [(r["alias"], r["to_version"]) for r in audit(workspace, name)] == [("challenger", 1), ("champion", 1)]
    return run_id, json.loads(open_storage(workspace).read_bytes(f"{name}/{run_id}/evaluate/report.json"))


def test_a_regression_pipeline_runs_its_lifecycle_to_a_served_champion_predicting_values(
    workspace: Settings, airflow_home: Path, ray_head: dict[str, str]
) -> None:
    """The bundled diabetes pipeline (a regression label, data from a package's own files, every
    model family in one search) through its whole DAG: the champion serves the predicted
    progression, in the label's units, and the gates were errors."""
    _, report = _bundled_lifecycle(workspace, airflow_home, ray_head, "diabetes")
    metrics = report["challenger"]["metrics"]
    assert set(metrics) == {"rmse", "mae", "r2"} and report["verdict"]["primary_metric"] == "rmse"
    assert metrics["rmse"] < 70 and metrics["r2"] > 0.1  # better than predicting the mean (std 77)
    url = f"http://127.0.0.1:{ray_head['MLCYCLE_SERVE_PORT']}/v1/pipelines/diabetes/predict"
    served = httpx.post(url, json={"instances": [{"entity_id": 3}, {"entity_id": 400}]}, headers={"x-api-key": KEY})
    assert served.status_code == 200, served.text
    predictions = served.json()["predictions"]
    assert [p["version"] for p in predictions] == [1, 1]
    assert all(20 < p["score"] < 400 for p in predictions), predictions  # a progression, not a probability


def test_a_multiclass_pipeline_serves_the_class_and_logs_what_labels_are_scored_against(
    workspace: Settings, airflow_home: Path, ray_head: dict[str, str], tmp_path: Path
) -> None:
    """The bundled wine pipeline (three cultivars) through its whole DAG: the gates were macro F1,
    the champion answers each wine's cultivar with every cultivar's probability, the request log
    keeps them, and labels loaded as class names are scored against them (the A/B's and the
    drift check's live metric)."""
    from pipelines.core.spec import FileSource, load_spec
    from pipelines.io.catalog import trace
    from pipelines.io.labels import load_labels
    from pipelines.io.requestlog import labelled
    from pipelines.steps.drift import live_performance

    run_id, report = _bundled_lifecycle(workspace, airflow_home, ray_head, "wine")
    metrics = report["challenger"]["metrics"]
    assert (
        set(metrics) == {"macro_f1", "accuracy", "multi_log_loss"} and report["verdict"]["primary_metric"] == "macro_f1"
    )
    assert metrics["macro_f1"] > 0.8  # chance is about 0.33
    storage = open_storage(workspace)
    assert storage.exists(f"wine/{run_id}/evaluate/report.html")
    shares = json.loads(storage.read_bytes(f"wine/{run_id}/features/manifest.json"))["splits"]["train"]["class_shares"]
    assert set(shares) == {"barolo", "grignolino", "barbera"} and sum(shares.values()) == pytest.approx(1.0)
    truth = read_parquet(storage, f"wine/{run_id}/validate/validated.parquet").set_index("wine_id")["cultivar"]
    url = f"http://127.0.0.1:{ray_head['MLCYCLE_SERVE_PORT']}/v1/pipelines/wine/predict"
    ids = [int(i) for i in truth.index[:40]]
    served = httpx.post(url, json={"instances": [{"entity_id": i} for i in ids]}, headers={"x-api-key": KEY})
    assert served.status_code == 200, served.text
    predictions = served.json()["predictions"]
    assert {p["version"] for p in predictions} == {1}
    for p in predictions:
        assert set(p["probabilities"]) == {"barolo", "grignolino", "barbera"}
        assert p["class"] == max(p["probabilities"], key=p["probabilities"].get)
        assert p["score"] == pytest.approx(p["probabilities"][p["class"]], abs=1e-6)
    right = sum(p["class"] == truth[p["entity_id"]] for p in predictions)
    assert right >= 32, predictions  # the wines it trained on, mostly: told apart, not guessed
    labels = tmp_path / "labels.csv"
    rid = served.json()["request_id"]
    pd.DataFrame({"wine_id": ids, "cultivar": [truth[i] for i in ids], "request_id": rid}).to_csv(labels, index=False)
    spec = load_spec(workspace.pipelines_dir / "wine.yaml")  # type: ignore[operator]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the request log is written off the request path
        with db.connect(workspace) as conn:
            logged = conn.execute(
                "SELECT entity_id, predicted_class, probabilities FROM inference_requests WHERE pipeline = 'wine'"
            ).fetchall()
        if len(logged) >= len(ids):
            break
        time.sleep(0.5)
    by_entity = {int(e): (c, p) for e, c, p in logged}
    first = predictions[0]
    assert by_entity[first["entity_id"]][0] == first["class"]
    assert by_entity[first["entity_id"]][1] == pytest.approx([first["probabilities"][c] for c in spec.classes])
    assert load_labels(workspace, spec, FileSource(kind="file", path=str(labels))) == len(ids)
    rows = labelled(workspace, "wine", [1])
    assert len(rows) == len(ids) and all(len(score) == 3 for _, score, _ in rows)
    live = live_performance(spec.evaluation, rows, metrics["macro_f1"], "multiclass")
    assert live is not None and live["metric"] == "macro_f1" and live["value"] > 0.7
    chain = trace(workspace, rid, {"wine"})
    assert chain is not None
    traced = {a["entity_id"]: a for a in chain}[str(first["entity_id"])]
    assert traced["class"] == first["class"] and traced["label"] == truth[first["entity_id"]]  # names, not indices
    checked = run(workspace, "drift", "check-wine", pipeline="wine")  # the served window against training
    assert checked["requests"] == len(ids) and checked["prediction"]["on"] == "predicted class"
    assert set(checked["prediction"]["shares_current"]) <= set(spec.classes)
    assert checked["performance"]["metric"] == "macro_f1" and checked["performance"]["labelled"] == len(ids)


def test_rejected_data_fails_the_run_without_retries_and_alertmanager_is_told(
    workspace: Settings, airflow_home: Path, churn_df: pd.DataFrame, tmp_path: Path
) -> None:
    bad = churn_df.copy()
    bad["plan"] = "unknown"
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    small_spec(workspace, {"kind": "file", "path": str(tmp_path / "bad.parquet")})
    assert _airflow(["db", "migrate"], workspace, airflow_home).returncode == 0
    with alert_receiver(tmp_path) as (am, hook):
        began = time.time()
        extra = {"MLCYCLE_ALERTMANAGER_URL": am}
        done = _airflow(["dags", "test", "churn_lifecycle"], workspace, airflow_home, extra)
        # the task's on_failure_callback (operators/notifier.py), in the task's own process
        hook.wait("MlcycleRunFailed", began)
        arrived, alert = hook.firing("MlcycleRunFailed")[0]
    print(f"\nfailed Airflow task -> MlcycleRunFailed at the webhook: {delay_s(alert, arrived):.1f}s after the failure")
    assert alert["labels"]["pipeline"] == "churn" and alert["labels"]["task_id"] == "validate"
    assert alert["labels"]["dag_id"] == "churn_lifecycle" and "/tasks/validate" in alert["annotations"]["log_url"]
    assert "the data is rejected" in alert["annotations"]["error"]
    assert not hook.firing("MlcycleStepRetriesExhausted")  # one try: nothing was retried
    assert done.returncode != 0
    run_id, steps = _latest_run(workspace)
    # Bad data is not worth retrying: validate failed once, features never ran.
    assert steps == {"ingest": ("succeeded", 1), "validate": ("failed", 1)}
    assert "the data is rejected" in done.stdout + done.stderr
    assert not open_storage(workspace).list(f"churn/{run_id}/features")
