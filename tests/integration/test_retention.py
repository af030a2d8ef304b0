"""The retention step (`mlcycle step retention`) on the real platform database and a real S3
bucket (SeaweedFS): a request log filled across 10 days keeps exactly the retained days, labels a
window still reads survive, and a runs retention of 0 days removes an unregistered run's artifacts
while every registered version's run (the champion's snapshot, report and model among them) stays."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import pytest

from pipelines.core.retention import DEFAULT_PARTITION, partition_name
from pipelines.core.settings import RetentionSettings, Settings
from pipelines.io import db
from pipelines.io.artifacts import recorded_digest, write_artifact
from pipelines.io.registry import CHALLENGER, CHAMPION, model_name, move_alias
from pipelines.io.storage import open_storage
from pipelines.io.tracking import setup_mlflow
from pipelines.steps.runner import run_step
from serving.records import LogRow
from serving.telemetry import RequestLog
from tests.services import S3Server
from tests.specs import churn_spec_dict, write_spec

pytestmark = pytest.mark.integration
PIPELINE = "retained"
LINEAGE = {"champ": CHAMPION, "chall": CHALLENGER, "older": None}  # registered runs, by alias
ARTIFACTS = ("ingest/snapshot.parquet", "evaluate/report.html", "train/model.onnx")


@pytest.fixture
def settings(workspace: Settings, s3: S3Server, tmp_path: Path) -> Settings:
    data = churn_spec_dict(merge=True, drift={"window_hours": 48})
    data["source"] = {**data["source"], "feedback": False}  # the longest window reading labels: 2 days
    write_spec(tmp_path / "pipelines", PIPELINE, **{k: v for k, v in data.items() if k != "name"})
    return workspace.model_copy(
        update={"artifact_root": f"s3://{s3.bucket}/retention-{uuid.uuid4().hex[:8]}", "s3_endpoint_url": s3.endpoint}
    )


def keep(settings: Settings, **days: int) -> Settings:
    return settings.model_copy(update={"retention": RetentionSettings(**days)})


def fill_request_log(settings: Settings, now: datetime) -> dict[date, int]:
    """Rows on each of the last 10 days (k + 1 rows on day k), through the serving path's writer."""
    log = RequestLog(lambda: db.database_url(settings), PIPELINE)
    rows = [
        LogRow(uuid.uuid4(), PIPELINE, 1, f"e{k}-{n}", "{}", 0.5, 1.0, "ok", None, False, now - timedelta(days=k))
        for k in range(10)
        for n in range(k + 1)
    ]
    log.write(rows)
    log.close()
    return {(now - timedelta(days=k)).date(): k + 1 for k in range(10)}


def logged_days(settings: Settings) -> dict[date, int]:
    with db.connect(settings) as conn:
        rows = conn.execute(
            "SELECT (created_at AT TIME ZONE 'UTC')::date, count(*) FROM inference_requests WHERE pipeline = %s"
            " GROUP BY 1",
            (PIPELINE,),
        ).fetchall()
    return dict(rows)


def in_default(settings: Settings) -> int:
    with db.connect(settings) as conn:
        row = conn.execute(f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE pipeline = %s", (PIPELINE,)).fetchone()
    return int(row[0]) if row else 0


def tables(settings: Settings) -> set[str]:
    with db.connect(settings) as conn:
        return {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p')").fetchall()}


def test_the_request_log_keeps_exactly_the_retained_days(settings: Settings) -> None:
    filled = fill_request_log(settings, datetime.now(UTC))
    assert logged_days(settings) == filled
    assert in_default(settings) > 0  # days before the migration made partitions: caught by DEFAULT

    first = run_step("retention", PIPELINE, "retention-1", keep(settings, request_log_days=30))
    assert logged_days(settings) == filled  # nothing is old enough yet
    assert in_default(settings) == 0  # every day moved into a partition of its own
    assert first["request_log"]["rows_moved_from_default"] >= sum(filled.values()) - filled[max(filled)]
    assert {partition_name(d) for d in filled} <= tables(settings)

    second = run_step("retention", PIPELINE, "retention-2", keep(settings, request_log_days=3))
    today = datetime.fromisoformat(second["now"]).date()
    kept = {d: n for d, n in filled.items() if d >= today - timedelta(days=3)}
    assert logged_days(settings) == kept
    assert len(kept) == 4  # 3 days back from now reach into the 4th day: that day stays whole
    dropped = [d for d in filled if d not in kept]
    assert {d.isoformat() for d in dropped} <= set(second["request_log"]["partitions_dropped"])
    assert second["request_log"]["rows"] >= sum(filled[d] for d in dropped)
    assert second["request_log"]["bytes"] > 0
    assert not {partition_name(d) for d in dropped} & tables(settings)
    assert {partition_name(today + timedelta(days=n)) for n in range(8)} <= tables(settings)  # made ahead

    # the write path still works after all that: a retried flush is still written once
    log = RequestLog(lambda: db.database_url(settings), PIPELINE)
    row = LogRow(uuid.uuid4(), PIPELINE, 1, "late", "{}", 0.5, 1.0, "ok", None, False, datetime.now(UTC))
    log.write([row])
    log.write([row])
    log.close()
    assert sum(logged_days(settings).values()) == sum(kept.values()) + 1


def test_the_migration_keeps_every_row_of_an_unpartitioned_log(platform: Settings, tmp_path: Path) -> None:
    """A database at migration 0017 with rows over 3 days (one 40 days old): after 0018 every row is
    there, each in its day's partition, the old key's duplicate still refused by the writer."""
    with db.connect(platform, autocommit=True) as conn:
        name = f"mig_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(db.database_url(platform))
    url = urlunsplit(parts._replace(path=f"/{name}"))
    older = tmp_path / "project"
    (older / "include" / "sql" / "migrations").mkdir(parents=True)
    for f in sorted(db.migrations_dir(platform).glob("*.sql")):
        if f.name < "0018":
            shutil.copy(f, older / "include" / "sql" / "migrations" / f.name)
    before = platform.model_copy(update={"database_url": url, "project_dir": older})
    db.migrate(before)
    now = datetime.now(UTC)
    rows = [(uuid.uuid4(), f"e{k}", now - timedelta(days=k)) for k in (0, 1, 2, 40)]
    with db.connect(before) as conn:
        for rid, entity, at in rows:
            conn.execute(
                "INSERT INTO inference_requests (request_id, pipeline, model_version, entity_id, latency_ms, status,"
                " created_at) VALUES (%s, 'mig', 1, %s, 1.0, 'ok', %s)",
                (rid, entity, at),
            )
    after = platform.model_copy(update={"database_url": url})
    assert db.migrate(after)[0] == "0018"  # and any migration after it
    with db.connect(after) as conn:
        found = conn.execute(
            "SELECT request_id, entity_id, created_at, tableoid::regclass::text FROM inference_requests ORDER BY 2"
        ).fetchall()
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'inference_requests'").fetchone()
    assert [(r, e, t) for r, e, t, _ in found] == sorted(rows, key=lambda r: r[1])
    assert {e: part for _, e, _, part in found} == {e: partition_name(t.astimezone(UTC).date()) for _, e, t in rows}
    assert kind == ("p",)
    log = RequestLog(lambda: url, "mig")
    rid, entity, at = rows[3]
    log.write([LogRow(rid, "mig", 1, entity, "{}", 0.5, 1.0, "ok", None, False, at + timedelta(seconds=1))])
    log.close()
    with db.connect(after) as conn:
        assert conn.execute("SELECT count(*) FROM inference_requests").fetchone() == (4,)  # a retry: not written
    with db.connect(platform, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name}")


def test_labels_a_window_reads_survive(settings: Settings) -> None:
    now = datetime.now(UTC)
    ages = {"1h": timedelta(hours=1), "36h": timedelta(hours=36), "5d": timedelta(days=5), "40d": timedelta(days=40)}
    with db.connect(settings) as conn:
        for name, age in ages.items():
            conn.execute(
                "INSERT INTO labels (pipeline, entity_id, label, observed_at) VALUES (%s, %s, 1, %s)",
                (PIPELINE, name, now - age),
            )
        conn.execute(
            "INSERT INTO labels (pipeline, entity_id, label, observed_at) VALUES ('other_pipeline', 'x', 1, %s)",
            (now - timedelta(days=40),),
        )
    result = run_step("retention", PIPELINE, "retention-labels", keep(settings, labels_days=0))
    with db.connect(settings) as conn:
        left = {r[0] for r in conn.execute("SELECT entity_id FROM labels WHERE pipeline = %s", (PIPELINE,))}
        other = conn.execute("SELECT count(*) FROM labels WHERE pipeline = 'other_pipeline'").fetchone()
    # labels_days 0, but the drift window (48 h) still reads the labels of the last 2 days
    assert left == {"1h", "36h"}
    assert result["labels"]["rows"] == 2 and result["labels"]["bytes"] > 0
    assert other == (1,)  # another pipeline's labels are its own task's to expire


def register(settings: Settings) -> None:
    setup_mlflow(settings, PIPELINE)
    client = mlflow.MlflowClient()
    client.create_registered_model(model_name(PIPELINE))
    for number, (run, alias) in enumerate(LINEAGE.items(), start=1):
        client.create_model_version(
            model_name(PIPELINE), source=f"{settings.artifact_root}/mlflow/none", tags={"mlcycle.run_id": run}
        )
        if alias:
            move_alias(
                settings, client, pipeline=PIPELINE, alias=alias, version=number, actor="t", run_id=run, reason="t"
            )


def test_a_registered_versions_lineage_survives_a_runs_retention_of_zero_days(settings: Settings) -> None:
    storage = open_storage(settings)
    for run in (*LINEAGE, "orphan"):
        for name in ARTIFACTS:
            write_artifact(settings, storage, f"{PIPELINE}/{run}/{name}", f"{run} {name}".encode())
    register(settings)

    result = run_step("retention", PIPELINE, "retention-runs", keep(settings, runs_days=0))

    left = set(storage.list(f"{PIPELINE}/"))
    for run in LINEAGE:  # the champion's, the challenger's and an unaliased version's runs stay whole
        assert {f"{PIPELINE}/{run}/{name}" for name in ARTIFACTS} <= left
        assert recorded_digest(settings, f"{PIPELINE}/{run}/train/model.onnx") is not None
    assert not [k for k in left if k.startswith(f"{PIPELINE}/orphan/")]
    assert recorded_digest(settings, f"{PIPELINE}/orphan/train/model.onnx") is None
    assert f"{PIPELINE}/retention-runs/retention/manifest.json" in left  # its own report
    runs = result["runs"]
    assert (runs["folders"], runs["objects"], runs["removed"]) == (1, 3, ["orphan"])
    assert runs["bytes"] == sum(len(f"orphan {name}") for name in ARTIFACTS)
    assert runs["kept_for_lineage"] == sorted(LINEAGE)


def test_a_store_at_its_fill_limit_is_alerted_and_one_below_it_is_not(settings: Settings, tmp_path: Path) -> None:
    """The hourly step measures the platform database and the artifact store where a limit is set:
    the database over a limit of 1 byte reaches the webhook as `MlcyclePlatformStorageFull`; the
    store under a limit far above it does not."""
    import time

    from tests.alerting import alert_receiver

    storage = open_storage(settings)
    write_artifact(settings, storage, f"{PIPELINE}/fill/train/model.onnx", b"x" * 1000)
    with alert_receiver(tmp_path) as (url, hook):
        limited = keep(settings).model_copy(
            update={"alertmanager_url": url, "alerts_database_max_bytes": 1, "alerts_bucket_max_bytes": 10**15}
        )
        began = time.time()
        fill = run_step("retention", PIPELINE, "retention-fill", limited)["fill"]
        assert fill["bytes"]["database"] > 1_000_000 and fill["bytes"]["bucket"] >= 1000, fill
        assert fill["alerts"] == ["database"], fill
        took, alert = hook.wait("MlcyclePlatformStorageFull", began)
        print(f"\nthe database over its limit -> MlcyclePlatformStorageFull at the webhook: {took:.1f}s")
        assert alert["labels"]["store"] == "database" and "pipeline" not in alert["labels"]
        assert "MLCYCLE_ALERTS_DATABASE_MAX_BYTES" in alert["annotations"]["summary"]
        assert [a["labels"]["store"] for _, a in hook.firing("MlcyclePlatformStorageFull")] == ["database"]
    unset = run_step("retention", PIPELINE, "retention-nofill", keep(settings))["fill"]
    assert unset == {"bytes": {}, "limits": {"database": None, "bucket": None}, "alerts": []}
    assert Settings().alerts_database_max_bytes is None  # off unless asked for
