"""The closed loop, all through a real Airflow (api-server, scheduler, dag-processor):

lifecycle (REST trigger) -> champion served -> calm traffic -> drift DAG: no Asset event ->
drifted traffic -> drift DAG: Asset event -> the scheduler starts the lifecycle -> new challenger
-> canary under live traffic -> promoted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest

from pipelines.core.settings import Settings
from pipelines.io import db
from pipelines.io.registry import audit
from pipelines.local.local_airflow import LocalAirflow
from pipelines.local.traffic import SteadyTraffic, predict_rows
from pipelines.ml.datagen import CATEGORICAL, NUMERIC, ChurnConfig, generate_churn
from tests.e2e.conftest import KEY
from tests.integration.helpers import SHORT_CANARY, small_spec
from tests.services import free_port_pairs

pytestmark = pytest.mark.e2e

SOURCE = {"kind": "synthetic", "customers": 600, "months": 8, "seed": 31}
FAST = {"n_trials": 2, "max_epochs": 4, "early_stopping_patience": 2, "pruner": "none", "batch_size": 128}
EVAL = {"min_primary": 0.6, "min_improvement": -0.2, "bootstrap_samples": 100, "max_latency_ms_per_row": 50.0}
DRIFT = {"schedule": None, "window_hours": 1, "min_requests": 200, "cooldown_hours": 1}
FEATURES = list(NUMERIC + CATEGORICAL)


@pytest.fixture
def airflow(workspace: Settings, ray_head: dict[str, str]) -> Iterator[LocalAirflow]:
    small_spec(
        workspace,
        SOURCE,
        schedule=None,
        training=FAST,
        evaluation=EVAL,
        canary={**SHORT_CANARY, "steps": [50, 100]},
        drift=DRIFT,
    )
    env = {
        **ray_head,
        "MLCYCLE_PIPELINES_DIR": str(workspace.pipelines_dir),
        "MLCYCLE_ARTIFACT_ROOT": str(workspace.artifact_root),
    }
    af = LocalAirflow(workspace, port=free_port_pairs(1)[0], extra_env=env)
    with af:
        af.wait_for_dag("churn_lifecycle")
        af.wait_for_dag("churn_drift")
        try:
            yield af
        finally:
            _forget_churn(workspace)


def _forget_churn(settings: Settings) -> None:
    """The session's registry and audit are shared with the other e2e module, whose first run of
    `churn` must meet no champion: remove what this test registered."""
    import mlflow

    from pipelines.io.registry import model_name
    from pipelines.io.tracking import setup_mlflow

    setup_mlflow(settings, "churn")
    client = mlflow.MlflowClient()
    if client.search_registered_models(f"name = '{model_name('churn')}'"):
        client.delete_registered_model(model_name("churn"))
    with db.connect(settings) as conn:
        conn.execute("DELETE FROM alias_audit WHERE pipeline = 'churn'")


def _traffic(seed: int, n: int, **drift: float) -> pd.DataFrame:
    df = generate_churn(ChurnConfig(customers=2000, months=8, seed=seed, **drift))
    recent = df[df["event_timestamp"] >= sorted(df["event_timestamp"].unique())[-3]]
    return recent.sample(n, random_state=seed)


def test_drift_triggers_retraining_through_airflow(
    workspace: Settings, airflow: LocalAirflow, ray_head: dict[str, str]
) -> None:
    url = f"http://127.0.0.1:{ray_head['MLCYCLE_SERVE_PORT']}/v1/pipelines/churn"
    first = airflow.trigger("churn_lifecycle")
    assert airflow.wait_run("churn_lifecycle", first)["state"] == "success", airflow.task_states(
        "churn_lifecycle", first
    )
    served = httpx.post(f"{url}/predict", json={"instances": [{"entity_id": 3}]}, headers={"x-api-key": KEY})
    assert served.json()["predictions"][0]["version"] == 1
    # Extra links: the validation report opens through the plugin, behind Airflow's login.
    links = airflow.api("GET", f"/dags/churn_lifecycle/dagRuns/{first}/taskInstances/validate/links")
    report = links["extra_links"]["Report"]
    assert report.startswith("/mlcycle/artifacts/churn_lifecycle/")
    assert httpx.get(airflow.url + report, timeout=30).status_code in (401, 403)
    opened = httpx.get(airflow.url + report, headers=airflow.auth_headers(), timeout=30)
    assert opened.status_code == 200 and opened.headers["content-type"].startswith("text/html")
    train_links = airflow.api("GET", f"/dags/churn_lifecycle/dagRuns/{first}/taskInstances/train/links")
    assert "/#/experiments/" in train_links["extra_links"]["MLflow"]

    # Calm traffic: the check runs, finds nothing, and its trigger task is skipped: no event.
    predict_rows(url, KEY, _traffic(seed=41, n=300), "customer_id", FEATURES)
    time.sleep(1.5)  # the request log is written in batches, off the request path
    calm = airflow.trigger("churn_drift")
    assert airflow.wait_run("churn_drift", calm)["state"] == "success"
    assert airflow.task_states("churn_drift", calm) == {"drift": "success", "trigger_retraining": "skipped"}
    assert airflow.asset_events("churn_retraining") == []

    # Drifted traffic: the check asks for retraining; the event starts the lifecycle.
    predict_rows(url, KEY, _traffic(seed=42, n=600, covariate_drift=1.0), "customer_id", FEATURES)
    time.sleep(1.5)
    drifted = airflow.trigger("churn_drift")
    assert airflow.wait_run("churn_drift", drifted)["state"] == "success"
    assert airflow.task_states("churn_drift", drifted) == {"drift": "success", "trigger_retraining": "success"}
    (event,) = airflow.asset_events("churn_retraining")
    assert event["extra"]["status"] == "drift" and "features drifted" in event["extra"]["reasons"][0]
    with SteadyTraffic(url, KEY) as steady:  # the retraining run's canary needs live traffic
        deadline = time.monotonic() + 120
        while not (retrain := [r for r in airflow.runs("churn_lifecycle") if r["run_type"] == "asset_triggered"]):
            assert time.monotonic() < deadline, "the scheduler started no lifecycle run from the event"
            time.sleep(3)
        run = airflow.wait_run("churn_lifecycle", retrain[0]["dag_run_id"])
        assert run["state"] == "success", airflow.task_states("churn_lifecycle", retrain[0]["dag_run_id"])
    moves = [(r["alias"], r["to_version"]) for r in audit(workspace, "churn")]
    assert ("champion", 2) in moves  # the retrained model passed its canary
    answer = httpx.post(f"{url}/predict", json={"instances": [{"entity_id": 3}]}, headers={"x-api-key": KEY})
    assert answer.json()["predictions"][0]["version"] == 2
    assert steady.failed == 0 and steady.sent > 10

    # A dry run with a small trial budget, as the Trigger DAG form sends it: trained and
    # evaluated, nothing registered or served.
    dry = airflow.trigger("churn_lifecycle", {"dry_run": True, "n_trials": 1})
    assert airflow.wait_run("churn_lifecycle", dry)["state"] == "success"
    states = airflow.task_states("churn_lifecycle", dry)
    assert states["evaluate"] == "success" and states["promote"] == states["canary"] == "skipped"
    assert [(r["alias"], r["to_version"]) for r in audit(workspace, "churn")] == moves
    with db.connect(workspace) as conn:
        (trials,) = conn.execute(
            "SELECT outputs->'trials' FROM step_runs WHERE run_id = %s AND step = 'train' AND status = 'succeeded'",
            (dry,),
        ).fetchone()
    assert sum(trials.values()) == 1, trials  # the form's budget, not the spec's
