"""The drift step against the real platform database and registry.

The request log is filled the way the serving ingress fills it (the ingress itself is tested in
test_serving.py): rows from the generator, scored by the champion's ONNX model, written to
`inference_requests`; labels go through `mlcycle labels load`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.core.settings import Settings, scoped_environ
from pipelines.io import db
from pipelines.ml.datagen import ChurnConfig, generate_churn
from tests.alerting import Webhook, alert_receiver, delay_s
from tests.integration.helpers import run, run_through, small_spec

pytestmark = pytest.mark.integration

PIPELINE = "churn_monitor"
SOURCE = {"kind": "synthetic", "customers": 1500, "months": 8, "seed": 5}
FAST = {"n_trials": 2, "max_epochs": 6, "early_stopping_patience": 2, "pruner": "none", "batch_size": 128}
DRIFT = {"window_hours": 1, "min_requests": 300, "cooldown_hours": 1, "max_drift_share": 0.3, "psi_threshold": 0.2}
LIFECYCLE = ("ingest", "validate", "features", "train", "evaluate", "promote")


@pytest.fixture(scope="module")
def monitored(platform: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    tmp = tmp_path_factory.mktemp("drift")
    (tmp / "pipelines").mkdir()
    settings = platform.model_copy(update={"pipelines_dir": tmp / "pipelines", "artifact_root": str(tmp / "artifacts")})
    small_spec(settings, SOURCE, name=PIPELINE, training=FAST, drift=DRIFT)
    assert run_through(settings, "train-1", LIFECYCLE, PIPELINE)["promote"]["version"] == 1
    with scoped_environ(settings.pod_env()):
        yield settings


def traffic(seed: int, n: int, **drift: float) -> pd.DataFrame:
    """`n` rows of the last three months of a generated history (drift, when asked, is strongest
    there), one per customer."""
    df = generate_churn(ChurnConfig(customers=3000, months=8, seed=seed, **drift))
    recent = df[df["event_timestamp"] >= sorted(df["event_timestamp"].unique())[-3]]
    return recent.drop_duplicates("customer_id").sample(n, random_state=seed).reset_index(drop=True)


def champion_scores(settings: Settings, rows: pd.DataFrame, version: int) -> tuple[Any, list[str]]:
    """The version's scores of the rows, and its model's input names."""
    import mlflow.onnx

    from pipelines.io.registry import model_name
    from pipelines.io.tracking import setup_mlflow
    from pipelines.ml.model import onnx_session, session_feed

    setup_mlflow(settings, PIPELINE)
    session = onnx_session(mlflow.onnx.load_model(f"models:/{model_name(PIPELINE)}/{version}").SerializeToString())
    (scores,) = session.run(["score"], session_feed(session, rows))
    return scores, [i.name for i in session.get_inputs()]


def publish_batch(settings: Settings, run_id: str, rows: pd.DataFrame, version: int = 1) -> None:
    """A published batch run of the rows, scored by the version, as of an hour ago (in the window):
    its `batch_predictions` and its `batch_runs` summary, as `batch_publish` leaves them."""
    scores, _ = champion_scores(settings, rows, version)
    as_of = datetime.now(UTC) - timedelta(minutes=30)
    with db.connect(settings) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO batch_predictions (pipeline, run_id, partition, entity_id, as_of, version, score)"
            " VALUES (%s, %s, 0, %s, %s, %s, %s)",
            [
                (PIPELINE, run_id, str(c), as_of, version, float(s))
                for c, s in zip(rows["customer_id"], scores.reshape(-1), strict=True)
            ],
        )
        cur.execute(
            "INSERT INTO batch_runs (pipeline, run_id, version, as_of, partitions, rows_scored, rows_quarantined,"
            " seconds, outputs, published_at) VALUES (%s, %s, %s, %s, 1, %s, 0, 1, %s, clock_timestamp())",
            (PIPELINE, run_id, version, as_of, len(rows), json.dumps({"table": "batch_predictions"})),
        )


def serve_log(settings: Settings, rows: pd.DataFrame, version: int = 1) -> list[str]:
    """Score the rows with the champion and write them to the request log; their request ids."""
    scores, inputs = champion_scores(settings, rows, version)
    ids = [str(uuid.uuid4()) for _ in range(len(rows))]
    records = [
        (rid, PIPELINE, version, str(r["customer_id"]), json.dumps({k: _plain(r[k]) for k in inputs}), float(s), 2.0)
        for rid, (_, r), s in zip(ids, rows.iterrows(), scores.reshape(-1), strict=True)
    ]
    with db.connect(settings) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO inference_requests (request_id, pipeline, model_version, entity_id, features, score,"
            " latency_ms, status) VALUES (%s, %s, %s, %s, %s, %s, %s, 'ok')",
            records,
        )
    return ids


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def reset(settings: Settings) -> None:
    with db.connect(settings) as conn:
        tables = ("inference_requests", "labels", "drift_checks", "model_performance_metrics", "batch_predictions")
        for table in (*tables, "batch_runs"):
            conn.execute(f"DELETE FROM {table} WHERE pipeline = %s", (PIPELINE,))  # type: ignore[arg-type]


CALM_EMBEDDING_AUC: list[float] = []  # the calm check's, for the drifted one to compare with


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Webhook]]:
    """An Alertmanager (its URL) routing to a webhook of the test's own."""
    with alert_receiver(tmp_path) as found:
        yield found


def test_no_drift_no_retraining(monitored: Settings, receiver: tuple[str, Webhook]) -> None:
    reset(monitored)
    serve_log(monitored, traffic(seed=11, n=600))
    url, hook = receiver
    out = run(monitored.model_copy(update={"alertmanager_url": url}), "drift", "check-calm", PIPELINE)
    assert out["status"] == "ok" and not out["retrain"], out["reasons"]
    time.sleep(3)  # Alertmanager delivers within its group_wait (1 s): a calm check sends nothing
    assert hook.received == []
    assert out["requests"] == 600 and out["performance"] is None
    html = Path(out["report"]).read_bytes()
    assert html.lstrip().startswith(b"<!DOCTYPE html") and b"usage_hours_30d" in html
    with db.connect(monitored) as conn:
        (status, retrain) = conn.execute(
            "SELECT status, retrain FROM drift_checks WHERE pipeline = %s AND run_id = 'check-calm'", (PIPELINE,)
        ).fetchone()
        metrics = dict(
            conn.execute(
                "SELECT metric || coalesce(':' || feature, ''), value FROM model_performance_metrics"
                " WHERE pipeline = %s AND run_id = 'check-calm'",
                (PIPELINE,),
            ).fetchall()
        )
    assert (status, retrain) == ("ok", False)
    assert metrics["requests"] == 600 and "psi:usage_hours_30d" in metrics and "prediction_psi" in metrics
    # embedding drift (the spec declares embeddings): reported, never counted without a threshold
    assert out["embedding"]["method"] == "domain_classifier" and out["embedding"]["drifted"] is False
    assert metrics["embedding_drift_roc_auc"] == pytest.approx(out["embedding"]["roc_auc"])
    CALM_EMBEDDING_AUC.append(out["embedding"]["roc_auc"])


def test_covariate_drift_asks_for_retraining_then_cools_down(
    monitored: Settings, receiver: tuple[str, Webhook]
) -> None:
    reset(monitored)
    serve_log(monitored, traffic(seed=12, n=600, covariate_drift=1.0))
    url, hook = receiver
    out = run(monitored.model_copy(update={"alertmanager_url": url}), "drift", "check-drifted", PIPELINE)
    assert out["status"] == "drift" and out["retrain"], out["reasons"]
    hook.wait("MlcycleDriftFound", time.time() - 600)
    arrived, alert = hook.firing("MlcycleDriftFound")[0]
    print(f"\ndrift found -> MlcycleDriftFound at the webhook: {delay_s(alert, arrived):.1f}s after the check began")
    assert alert["labels"]["pipeline"] == PIPELINE and alert["labels"]["finding"] == "drift"
    assert "features drifted" in alert["annotations"]["summary"]
    assert {"usage_hours_30d", "support_calls_30d"} <= set(out["drifted"])
    # the drifted traffic moves the champion's vectors: a classifier tells them apart better
    assert out["embedding"]["roc_auc"] > 0.6 and all(out["embedding"]["roc_auc"] > a + 0.05 for a in CALM_EMBEDDING_AUC)
    assert "features drifted" in out["reasons"][0]
    again = run(monitored, "drift", "check-drifted-again", PIPELINE)
    assert again["status"] == "drift" and not again["retrain"]
    assert "cooldown" in again["reasons"][-1]


def test_concept_drift_is_found_through_labels(monitored: Settings, tmp_path: Path) -> None:
    from pipelines.cli import main

    reset(monitored)
    rows = traffic(seed=13, n=800, concept_drift=1.0)
    ids = serve_log(monitored, rows)
    labels = pd.DataFrame({"request_id": ids, "entity_id": rows["customer_id"], "label": rows["churned"]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    assert main(["labels", "load", "--pipeline", PIPELINE, str(tmp_path / "labels.csv")]) == 0
    out = run(monitored, "drift", "check-concept", PIPELINE)
    assert out["status"] == "performance" and out["retrain"], out["reasons"]
    assert out["performance"]["labelled"] == 800 and out["performance"]["drop"] > 0.05
    assert any("live roc_auc" in r for r in out["reasons"])


def test_too_few_requests_is_insufficient_data(monitored: Settings) -> None:
    reset(monitored)
    serve_log(monitored, traffic(seed=14, n=50, covariate_drift=1.0))
    out = run(monitored, "drift", "check-few", PIPELINE)
    assert out["status"] == "insufficient_data" and not out["retrain"]
    assert "50 requests" in out["reasons"][0] and "report" not in out


def test_the_newest_batch_run_of_the_window_is_compared_with_the_reference_though_few_were_served(
    monitored: Settings,
) -> None:
    """A published batch run of the champion whose as_of is in the window: its scores against the
    champion's on its training reference, even where too few requests were served for a verdict;
    customers whose features drifted move the figure past `psi_threshold`, calm ones do not; the
    figure is recorded on the batch's rows. The verdict stays the served window's."""
    reset(monitored)
    publish_batch(monitored, "batch-calm", traffic(seed=15, n=600))
    calm = run(monitored, "drift", "check-batch-calm", PIPELINE)
    assert calm["status"] == "insufficient_data" and not calm["retrain"]
    assert (calm["batch"]["run_id"], calm["batch"]["rows"], calm["batch"]["drifted"]) == ("batch-calm", 600, False)
    publish_batch(monitored, "batch-drifted", traffic(seed=16, n=500, covariate_drift=1.0))
    drifted = run(monitored, "drift", "check-batch-drifted", PIPELINE)
    assert (drifted["batch"]["run_id"], drifted["batch"]["rows"]) == ("batch-drifted", 500)  # the newest
    assert drifted["batch"]["drifted"] and drifted["batch"]["psi"] > calm["batch"]["psi"], drifted["batch"]
    assert drifted["status"] == "insufficient_data" and not drifted["retrain"]
    with db.connect(monitored) as conn:
        recorded = conn.execute(
            "SELECT value, rows FROM model_performance_metrics WHERE pipeline = %s AND run_id = 'check-batch-drifted'"
            " AND metric = 'batch_prediction_psi'",
            (PIPELINE,),
        ).fetchone()
    assert recorded == (pytest.approx(drifted["batch"]["psi"]), 500)


def test_labels_load_from_a_postgres_query_all_or_nothing(monitored: Settings) -> None:
    """Delayed labels from a SQL source (here a table of the platform database); a bad row refuses
    the whole load."""
    from pipelines.cli import main

    reset(monitored)
    rows = traffic(seed=15, n=40)
    ids = serve_log(monitored, rows)
    with db.connect(monitored) as conn:
        conn.execute("DROP TABLE IF EXISTS outcomes")
        conn.execute("CREATE TABLE outcomes (request_id uuid, customer_id bigint, churned int)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO outcomes VALUES (%s, %s, %s)",
                [(i, int(c), int(y)) for i, c, y in zip(ids, rows["customer_id"], rows["churned"], strict=True)],
            )
    query = "SELECT request_id, customer_id, churned FROM outcomes"
    assert main(["labels", "load", "--pipeline", PIPELINE, query]) == 0
    with db.connect(monitored) as conn:
        (n,) = conn.execute("SELECT count(*) FROM labels WHERE pipeline = %s", (PIPELINE,)).fetchone()
        conn.execute("UPDATE outcomes SET churned = 7 WHERE customer_id = %s", (int(rows["customer_id"][0]),))
    assert n == 40
    assert main(["labels", "load", "--pipeline", PIPELINE, query]) == 2  # refused: churned 7 is not a label
    with db.connect(monitored) as conn:
        (after,) = conn.execute("SELECT count(*) FROM labels WHERE pipeline = %s AND label > 1", (PIPELINE,)).fetchone()
    assert after == 0


def test_a_pipeline_with_no_champion_yet_skips_its_drift_check_with_the_reason(monitored: Settings) -> None:
    """A fresh deployment: the drift DAG's hourly check has nothing served to check; it is skipped
    (exit 100: Airflow marks the task skipped, no Asset event), not failed every hour."""
    from pipelines.core.errors import StepSkipped
    from pipelines.io.runs import run_steps

    small_spec(monitored, SOURCE, name="churn_unserved", training=FAST, drift=DRIFT)
    with pytest.raises(StepSkipped, match="has no champion yet") as skipped:
        run(monitored, "drift", "check-fresh", "churn_unserved")
    assert skipped.value.exit_code == 100
    (row,) = run_steps(monitored, "churn_unserved", "check-fresh")
    assert row.status == "skipped" and "no champion" in row.outputs["reason"]


def test_the_platform_api_and_the_page_read_the_records_of_checks_and_runs(monitored: Settings) -> None:
    """`catalog.overview` (what the mlcycle page and `/api/ml/pipelines/{p}` show) on the real
    records: the champion, its runs with their reports and DAGs, the PSI per feature, the live metric."""
    from mlcycle_page import page_html

    from pipelines.core.settings import spec_for
    from pipelines.io import catalog
    from pipelines.io.labels import label_rows, upsert_labels

    reset(monitored)
    ids = serve_log(monitored, traffic(seed=13, n=600))
    labels = pd.DataFrame({"request_id": ids[:400], "entity_id": "x", "label": [i % 2 for i in range(400)]})
    with db.connect(monitored) as conn, conn.cursor() as cur:  # outcomes of the served customers
        cur.execute("SELECT request_id, entity_id FROM inference_requests WHERE request_id = ANY(%s)", (ids[:400],))
        entity = {str(r): e for r, e in cur.fetchall()}
    labels["entity_id"] = labels["request_id"].map(entity)
    upsert_labels(monitored, label_rows(labels, spec_for(monitored, PIPELINE), pd.Timestamp.now(tz="UTC")))
    check = run(monitored, "drift", "check-page", PIPELINE)
    seen = catalog.overview(monitored, PIPELINE)
    detail = seen["detail"]
    assert detail["champion"]["version"] == 1 and detail["last_drift_check"]["run_id"] == "check-page"
    assert detail["live_metric"]["value"] == pytest.approx(check["performance"]["value"])
    assert seen["live"][-1]["rows"] == 400 and seen["live"][-1]["metric"] == "roc_auc"
    assert [c["run_id"] for c in seen["drift"]["checks"]] == ["check-page"]
    psi = {f: values[0] for f, values in seen["drift"]["features"].items()}
    assert psi == pytest.approx({f: fig["psi"] for f, fig in check["features"].items()})
    assert seen["runs"]["check-page"] == catalog.run_steps_overview(monitored, PIPELINE, ["check-page"])["check-page"]
    runs = catalog.run_steps_overview(monitored, PIPELINE, ["train-1", "check-page"])
    assert runs["train-1"]["dag_id"] == f"{PIPELINE}_lifecycle" and set(runs["train-1"]["reports"]) == {
        "validate",
        "evaluate",
    }
    assert runs["train-1"]["mlflow"]["mlflow_run_id"]
    assert runs["check-page"]["dag_id"] == f"{PIPELINE}_drift" and set(runs["check-page"]["reports"]) == {"drift"}
    assert [v["version"] for v in seen["versions"]] == [1]
    html = page_html(pipelines=[PIPELINE], selected=PIPELINE, data=seen, mlflow_base="http://m", psi_threshold=0.2)
    assert f'href="/mlcycle/reports/{PIPELINE}_drift/check-page/drift"' in html and "usage_hours_30d" in html


def test_the_served_window_reads_features_whatever_their_names(platform: Settings) -> None:
    """A contract's column may be any string: the feature names are bound as parameters, not
    interpolated into the query (a name with a space or a quote broke it, and could inject SQL)."""
    from datetime import UTC, datetime, timedelta

    from pipelines.steps.drift import served_window

    names = ["monthly charges", 'plan"; DROP TABLE labels; --', "tenure"]
    request = uuid.uuid4()
    with db.connect(platform) as conn:
        conn.execute(
            "INSERT INTO inference_requests (request_id, pipeline, model_version, entity_id, features, score,"
            " latency_ms, status) VALUES (%s, 'odd_names', 1, '7', %s, 0.25, 1.0, 'ok')",
            (request, json.dumps({names[0]: 70.5, names[1]: "basic", names[2]: 12})),
        )
    now = datetime.now(UTC)
    frame = served_window(platform, "odd_names", 1, names, now - timedelta(hours=1), now + timedelta(minutes=1))
    assert list(frame.columns) == [*names, "score", "predicted_class"]
    assert frame.iloc[0].tolist() == ["70.5", "basic", "12", 0.25, None]  # a binary model predicts no class
    with db.connect(platform) as conn:
        assert conn.execute("SELECT to_regclass('labels')").fetchone() != (None,)
