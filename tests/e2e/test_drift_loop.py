"""The closed loop, all through a real Airflow (api-server, scheduler, dag-processor):

lifecycle as of four months ago (REST trigger) -> champion served -> calm traffic -> drift DAG: no
Asset event -> the world drifts (covariates and concept), its traffic is served and its labels
arrive -> drift DAG: Asset event -> the scheduler starts the lifecycle, which reads the new window
plus the labelled traffic, warm-starts from the champion, beats it on the recent test window, walks
the canary under live traffic and is promoted -> a second check right after is quiet (cooldown).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipelines.core.settings import Settings, spec_for
from pipelines.core.spec import FileSource
from pipelines.io import db
from pipelines.io.labels import load_labels
from pipelines.io.registry import audit
from pipelines.io.runs import run_steps
from pipelines.io.status import pipeline_status, render_status
from pipelines.local.local_airflow import LocalAirflow
from pipelines.local.traffic import SteadyTraffic, known_entities, predict_rows
from pipelines.ml.datagen import CATEGORICAL, NUMERIC, ChurnConfig, generate_churn
from tests.conftest import churn_spec_dict
from tests.e2e.conftest import KEY, forget_pipeline
from tests.integration.helpers import SHORT_CANARY, small_spec
from tests.services import free_port_pairs

pytestmark = pytest.mark.e2e

# The world: ten months ending with the last full month, both drifts in full force from its sixth;
# a run reads the 160 days (five monthly snapshots) up to its as_of, plus the labelled traffic.
START = (pd.Timestamp.now(tz="UTC").normalize().replace(day=1) - pd.DateOffset(months=10)).strftime("%Y-%m-%d")
WORLD = {
    "customers": 1500,
    "months": 10,
    "start": START,
    "covariate_drift": 1.0,
    "concept_drift": 1.0,
    "drift_from_month": 5,
    "drift_ramp_months": 1,
}
SOURCE = {"kind": "synthetic", "seed": 31, "lookback_days": 160, "feedback": True, **WORLD}
BEFORE_DRIFT = (pd.Timestamp(START, tz="UTC") + pd.DateOffset(months=5)).isoformat()  # months 0-4: no drift
SPLIT = {"train": 0.6, "validation": 0.2, "test": 0.2}  # five snapshots: three, one and one
FAST = {"n_trials": 3, "max_epochs": 6, "early_stopping_patience": 2, "pruner": "none", "batch_size": 128}
EVAL = {"min_primary": 0.6, "min_improvement": 0.0, "bootstrap_samples": 200, "max_latency_ms_per_row": 50.0}
DRIFT = {"schedule": None, "window_hours": 1, "min_requests": 200, "cooldown_hours": 1, "ignore": ["tenure_months"]}
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
        features={**churn_spec_dict()["features"], "split": SPLIT},
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
            forget_pipeline(workspace, "churn")


def _traffic(seed: int, n: int, months: slice) -> pd.DataFrame:
    """Customers of the same world (another sample of it: no row of the source is served again)."""
    df = generate_churn(ChurnConfig(**{**WORLD, "customers": 3000}, seed=seed))
    stamps = sorted(df["event_timestamp"].unique())[months]
    return df[df["event_timestamp"].isin(stamps)].sample(n, random_state=seed)


def _known_entities() -> list[int]:
    """Customers the first run's features know that are still active: live traffic for them is
    answered from the first champion on."""
    world = generate_churn(ChurnConfig(**WORLD, seed=SOURCE["seed"]))
    return known_entities(world, "customer_id", "event_timestamp", BEFORE_DRIFT, 300)


def _label(settings: Settings, rows: pd.DataFrame, tmp_path: Path) -> int:
    """The outcomes of served customers arrive (as `mlcycle labels load` loads them)."""
    path = tmp_path / "labels.csv"
    rows[["customer_id", "churned"]].to_csv(path, index=False)
    return load_labels(settings, spec_for(settings, "churn"), FileSource(kind="file", path=str(path)))


def test_drift_triggers_retraining_on_fresh_data_through_airflow(
    workspace: Settings, airflow: LocalAirflow, ray_head: dict[str, str], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{ray_head['MLCYCLE_SERVE_PORT']}/v1/pipelines/churn"
    first = airflow.trigger("churn_lifecycle", {"as_of": BEFORE_DRIFT})
    assert airflow.wait_run("churn_lifecycle", first)["state"] == "success", airflow.failure("churn_lifecycle", first)
    entities = _known_entities()
    served = httpx.post(f"{url}/predict", json={"instances": [{"entity_id": entities[0]}]}, headers={"x-api-key": KEY})
    assert served.status_code == 200 and served.json()["predictions"][0]["version"] == 1, served.text

    # Extra links: the validation report opens through the plugin, behind Airflow's login, in a
    # page that leads back to the run; the canary's first deployment has a report too (its
    # decisions); evaluate and train link to their MLflow run.
    def links(task: str) -> dict[str, str]:
        got: dict[str, str] = airflow.api("GET", f"/dags/churn_lifecycle/dagRuns/{first}/taskInstances/{task}/links")[
            "extra_links"
        ]
        return got

    report = links("validate")["Report"]
    assert report.startswith("/mlcycle/reports/churn_lifecycle/")
    assert httpx.get(airflow.url + report, timeout=30).status_code in (401, 403)
    opened = httpx.get(airflow.url + report, headers=airflow.auth_headers(), timeout=30)
    assert opened.status_code == 200 and opened.headers["content-type"].startswith("text/html")
    assert "back to the run" in opened.text and "/dags/churn_lifecycle/runs/" in opened.text
    framed = opened.text.split('<iframe src="', 1)[1].split('"', 1)[0]
    inner = httpx.get(airflow.url + framed, headers=airflow.auth_headers(), timeout=30)
    assert inner.status_code == 200 and "<html" in inner.text.lower()
    canary = httpx.get(airflow.url + links("canary")["Report"], headers=airflow.auth_headers(), timeout=30)
    assert canary.status_code == 200 and "first model of the pipeline" in canary.text
    assert "/#/experiments/" in links("train")["MLflow"]
    assert links("evaluate")["MLflow"] == links("train")["MLflow"]

    # Calm traffic: the check runs, finds nothing, and its trigger task is skipped: no event.
    predict_rows(url, KEY, _traffic(seed=41, n=300, months=slice(1, 4)), "customer_id", FEATURES)
    time.sleep(1.5)  # the request log is written in batches, off the request path
    calm = airflow.trigger("churn_drift")
    assert airflow.wait_run("churn_drift", calm)["state"] == "success", airflow.failure("churn_drift", calm)
    assert airflow.task_states("churn_drift", calm) == {"drift": "success", "trigger_retraining": "skipped"}
    assert airflow.asset_events("churn_retraining") == []

    # The world drifts: its customers are served, and their outcomes arrive.
    drifted_rows = _traffic(seed=42, n=700, months=slice(-2, None))
    predict_rows(url, KEY, drifted_rows, "customer_id", FEATURES)
    assert _label(workspace, drifted_rows, tmp_path) == len(drifted_rows)
    time.sleep(1.5)
    drifted = airflow.trigger("churn_drift")
    assert airflow.wait_run("churn_drift", drifted)["state"] == "success", airflow.failure("churn_drift", drifted)
    assert airflow.task_states("churn_drift", drifted) == {"drift": "success", "trigger_retraining": "success"}
    (event,) = airflow.asset_events("churn_retraining")
    assert event["extra"]["status"] in ("drift", "performance") and event["extra"]["drift_run_id"] == drifted
    assert event["extra"]["window_end"] and event["extra"]["live_metric"]["labelled"] > 100
    with SteadyTraffic(url, KEY, entities) as steady:  # the retraining run's canary needs live traffic
        deadline = time.monotonic() + 120
        while not (retrain := [r for r in airflow.runs("churn_lifecycle") if r["run_type"] == "asset_triggered"]):
            assert time.monotonic() < deadline, "the scheduler started no lifecycle run from the event"
            time.sleep(3)
        retrain_id = retrain[0]["dag_run_id"]
        run = airflow.wait_run("churn_lifecycle", retrain_id)
        assert run["state"] == "success", airflow.failure("churn_lifecycle", retrain_id)
    assert steady.failed == 0 and steady.sent > 10
    moves = [(r["alias"], r["to_version"]) for r in audit(workspace, "churn")]
    assert ("champion", 2) in moves  # the retrained model beat the champion and passed its canary
    answer = httpx.post(f"{url}/predict", json={"instances": [{"entity_id": entities[0]}]}, headers={"x-api-key": KEY})
    assert answer.json()["predictions"][0]["version"] == 2

    # The new champion is linked to its run, its data window and the check that asked for it.
    outputs = {row.step: row.outputs for row in run_steps(workspace, "churn", retrain_id)}
    ingest, train, evaluate = outputs["ingest"], outputs["train"], outputs["evaluate"]
    assert ingest["trigger"] == "asset" and ingest["cause"]["drift_run_id"] == drifted
    assert ingest["window"]["end"] > BEFORE_DRIFT and ingest["feedback_rows"] >= 600
    assert ingest["cause_line"].startswith("retraining because: ")
    assert train["warm_start"]["champion"] == 1  # trial 0: the champion's hyperparameters
    assert evaluate["verdict"]["passed"] and evaluate["champion_version"] == 1 and evaluate["difference"]["lower"] > 0
    tags = _version_tags(workspace, 2)
    assert tags["mlcycle.run_id"] == retrain_id and tags["mlcycle.drift_check"] == drifted
    assert tags["mlcycle.data_window"].endswith(ingest["window"]["end"]) and tags["mlcycle.trigger"] == "asset"
    status = render_status(pipeline_status(workspace, "churn"))
    assert f"retrained after drift check {drifted}" in status and "retraining because: " in status

    # Right after, the new champion's check is quiet (cooldown), and starts nothing.
    quiet = airflow.trigger("churn_drift")
    assert airflow.wait_run("churn_drift", quiet)["state"] == "success", airflow.failure("churn_drift", quiet)
    assert airflow.task_states("churn_drift", quiet)["trigger_retraining"] == "skipped"
    assert len(airflow.asset_events("churn_retraining")) == 1

    # A dry run with a small trial budget, as the Trigger DAG form sends it: trained and
    # evaluated, nothing registered or served.
    dry = airflow.trigger("churn_lifecycle", {"dry_run": True, "n_trials": 1})
    assert airflow.wait_run("churn_lifecycle", dry)["state"] == "success", airflow.failure("churn_lifecycle", dry)
    states = airflow.task_states("churn_lifecycle", dry)
    assert states["evaluate"] == "success" and states["promote"] == states["canary"] == "skipped"
    assert [(r["alias"], r["to_version"]) for r in audit(workspace, "churn")] == moves
    with db.connect(workspace) as conn:
        (trials,) = conn.execute(
            "SELECT outputs->'trials' FROM step_runs WHERE run_id = %s AND step = 'train' AND status = 'succeeded'",
            (dry,),
        ).fetchone()
    assert sum(trials.values()) == 1, trials  # the form's budget, not the spec's


def _version_tags(settings: Settings, version: int) -> dict[str, str]:
    import mlflow

    from pipelines.io.registry import model_name
    from pipelines.io.tracking import setup_mlflow

    setup_mlflow(settings, "churn")
    return dict(mlflow.MlflowClient().get_model_version(model_name("churn"), str(version)).tags)
