"""Every run reads its own window: files (a template, a directory), S3 (a prefix per partition),
Postgres (bound parameters), synthetic data; served traffic with its labels as feedback rows; a
retry of a window reuses its snapshot, a new window reads again, and no new data stops the run."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from pipelines.core.errors import InvalidArgument, SourceError, StepSkipped
from pipelines.core.params import ENV
from pipelines.core.settings import Settings, scoped_environ, spec_for
from pipelines.core.spec import FileSource, PostgresSource
from pipelines.core.window import data_window
from pipelines.io import db
from pipelines.io.labels import load_labels
from pipelines.io.sources import read_source
from pipelines.io.storage import open_storage, read_parquet
from serving.records import LogRow
from serving.telemetry import RequestLog
from tests.integration.helpers import run, small_spec
from tests.services import S3Server

pytestmark = pytest.mark.integration

AS_OF = datetime(2025, 7, 1, tzinfo=UTC)  # May and June with a 61-day lookback


@contextmanager
def as_of(moment: datetime | str, **more: Any) -> Iterator[None]:
    """The run parameters the operator hands a step pod."""
    value = moment.isoformat() if isinstance(moment, datetime) else moment
    with scoped_environ({ENV: json.dumps({"as_of": value, **more})}):
        yield


def expected(df: pd.DataFrame, end: datetime, days: float | None) -> pd.DataFrame:
    keep = df["event_timestamp"] <= end
    if days:
        keep &= df["event_timestamp"] > end - timedelta(days=days)
    return df[keep].reset_index(drop=True)


def snapshot(settings: Settings, run_id: str) -> pd.DataFrame:
    return read_parquet(open_storage(settings), f"churn/{run_id}/ingest/snapshot.parquet")


def test_files_by_template_and_by_directory(workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    for month, rows in churn_df.groupby(churn_df["event_timestamp"].dt.strftime("%Y-%m")):
        rows.to_parquet(parts / f"month={month}.parquet", index=False)
    (parts / "README.txt").write_text("not data")
    small_spec(workspace, {"kind": "file", "path": str(parts), "lookback_days": 61})
    with as_of(AS_OF):
        m = run(workspace, "ingest", "dir-1")
    want = expected(churn_df, AS_OF, 61)
    assert set(want["event_timestamp"].dt.month) == {5, 6}
    pd.testing.assert_frame_equal(snapshot(workspace, "dir-1"), want)
    assert m["window"] == {"start": (AS_OF - timedelta(days=61)).isoformat(), "end": AS_OF.isoformat()}

    small_spec(workspace, {"kind": "file", "path": str(parts / "month={as_of:%Y-%m}.parquet")})
    with as_of("2025-03-31T23:59:59+00:00"):
        m = run(workspace, "ingest", "tpl-1")
    assert set(snapshot(workspace, "tpl-1")["event_timestamp"].dt.month) == {3}
    with as_of("2031-01-31"), pytest.raises(SourceError, match=r"cannot read .*month=2031-01\.parquet"):
        run(workspace, "ingest", "tpl-2")


def test_s3_prefix_per_partition(workspace: Settings, s3: S3Server, churn_df: pd.DataFrame) -> None:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    for month, rows in churn_df.groupby(churn_df["event_timestamp"].dt.strftime("%Y-%m")):
        for n, half in enumerate((rows.iloc[: len(rows) // 2], rows.iloc[len(rows) // 2 :])):
            buf = io.BytesIO()
            half.to_parquet(buf, index=False)
            client.put_object(Bucket=s3.bucket, Key=f"churn/dt={month}/part-{n}.parquet", Body=buf.getvalue())
    settings = workspace.model_copy(update={"s3_endpoint_url": s3.endpoint})
    small_spec(settings, {"kind": "s3", "uri": f"s3://{s3.bucket}/churn/dt={{as_of:%Y-%m}}/"})
    with as_of("2025-06-30T23:59:59+00:00"):
        run(settings, "ingest", "s3w-1")
    june = churn_df[churn_df["event_timestamp"].dt.month == 6].reset_index(drop=True)
    pd.testing.assert_frame_equal(snapshot(settings, "s3w-1"), june)
    with as_of("2031-01-31"), pytest.raises(SourceError, match="no .csv or .parquet object under"):
        run(settings, "ingest", "s3w-2")


def test_postgres_binds_the_window(workspace: Settings, churn_df: pd.DataFrame) -> None:
    with db.connect(workspace) as conn:
        conn.execute("DROP TABLE IF EXISTS churn_window")
        conn.execute(
            "CREATE TABLE churn_window (customer_id bigint, event_timestamp timestamptz, plan text, churned bigint)"
        )
        with conn.cursor().copy("COPY churn_window FROM STDIN") as copy:
            for row in churn_df[["customer_id", "event_timestamp", "plan", "churned"]].itertuples(index=False):
                copy.write_row(row)
    query = (
        "SELECT c.customer_id, c.event_timestamp, c.plan, c.churned FROM churn_window c"
        " WHERE c.event_timestamp > %(start)s AND c.event_timestamp <= %(end)s AND c.plan LIKE '%%'"
        " ORDER BY c.event_timestamp, c.customer_id"
    )
    source = PostgresSource(kind="postgres", query=query, lookback_days=61)
    got = read_source(source, workspace, data_window(AS_OF, 61), "event_timestamp")
    want = expected(churn_df[["customer_id", "event_timestamp", "plan", "churned"]], AS_OF, 61)
    assert got["customer_id"].tolist() == want["customer_id"].tolist()
    assert pd.to_datetime(got["event_timestamp"], utc=True).tolist() == want["event_timestamp"].tolist()
    # The window is bound, never formatted: the only values in it are instants, and a run parameter
    # that is not one is refused before any query runs.
    small_spec(workspace, {"kind": "postgres", "query": query})
    with as_of("2025-07-01' OR '1'='1"), pytest.raises(InvalidArgument, match="MLCYCLE_RUN_PARAMS"):
        run(workspace, "ingest", "pgw-2")
    with pytest.raises(SourceError, match="binds the run's window"):
        read_source(source, workspace)


def test_synthetic_months_up_to_as_of_and_an_empty_window(workspace: Settings) -> None:
    small_spec(workspace, {"kind": "synthetic", "customers": 300, "months": 6, "seed": 3, "lookback_days": 45})
    with as_of("2025-04-15"):
        run(workspace, "ingest", "syn-1")
    months = sorted(snapshot(workspace, "syn-1")["event_timestamp"].dt.month.unique())
    assert months == [3]  # Feb ends before the window, Apr after as_of
    with as_of("2024-12-01"), pytest.raises(SourceError, match="no rows in the window .* spans 2025-01-31"):
        run(workspace, "ingest", "syn-2")


def test_a_retry_reuses_its_window_and_a_new_window_reads_again(
    workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path
) -> None:
    src = tmp_path / "churn.parquet"
    churn_df.to_parquet(src, index=False)
    small_spec(workspace, {"kind": "file", "path": str(src), "lookback_days": 61})
    with as_of(AS_OF, trigger="scheduled"):
        first = run(workspace, "ingest", "win-1")
        again = run(workspace, "ingest", "win-1")
    assert (first["reused"], again["reused"]) == (False, True) and again["content_hash"] == first["content_hash"]
    with as_of(AS_OF + timedelta(days=31), trigger="scheduled"):
        moved = run(workspace, "ingest", "win-1")
    assert not moved["reused"] and moved["content_hash"] != first["content_hash"]
    # The next scheduled run sees the same window: nothing new, the run stops before training.
    with as_of(AS_OF + timedelta(days=31), trigger="scheduled"), pytest.raises(StepSkipped, match="no new data") as err:
        run(workspace, "ingest", "win-2")
    assert err.value.exit_code == 100 and "win-1" in str(err.value)
    with as_of(AS_OF + timedelta(days=31), trigger="manual"):  # a person asking trains anyway
        assert not run(workspace, "ingest", "win-3")["reused"]


def test_feedback_rows_are_the_labelled_predictions_as_served(
    workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path
) -> None:
    src = tmp_path / "base.parquet"
    churn_df.to_parquet(src, index=False)
    small_spec(workspace, {"kind": "file", "path": str(src), "feedback": True})
    spec = spec_for(workspace, "churn")
    now = datetime.now(UTC)
    served = churn_df.tail(7).reset_index(drop=True)
    log = RequestLog(lambda: db.database_url(workspace))

    served_features = [c for c in spec.contract.columns if c not in ("customer_id", "event_timestamp", "churned")]

    def row(i: int, at: datetime, shadow: bool = False, off_contract: str | None = None) -> LogRow:
        feats = {f: getattr(v, "item", lambda v=v: v)() for f, v in served.loc[i, served_features].items()}
        entity = str(served.loc[i, "customer_id"])
        return LogRow(uuid.uuid4(), "churn", 1, entity, json.dumps(feats), 0.3, 1.0, "ok", None, shadow, at)

    rows = [row(i, now - timedelta(minutes=10 - i)) for i in range(4)]
    rows.append(row(4, now + timedelta(minutes=1)))  # after the run's as_of
    rows.append(row(5, now - timedelta(minutes=1), shadow=True))  # a shadow answer is no feedback
    off = dataclasses.replace(row(6, now - timedelta(minutes=2)), off_contract="plan: unknown category 'gold'")
    rows.append(off)  # nor is an answer scored outside the contract
    log.write(rows)
    log.close()
    labels = tmp_path / "labels.csv"
    observed = [(now + timedelta(minutes=2)).isoformat()] * 7
    pd.DataFrame({"entity_id": served["customer_id"], "label": [1, 0, 1, 0, 1, 1, 1], "observed_at": observed}).to_csv(
        labels, index=False
    )
    assert load_labels(workspace, spec, FileSource(kind="file", path=str(labels))) == 7
    small_spec(workspace, {"kind": "file", "path": str(src), "feedback": True, "lookback_days": 2000})
    with as_of(now):
        m = run(workspace, "ingest", "fb-1")
    assert m["feedback_rows"] == 4 and m["rows"] == len(churn_df) + 4
    snap = snapshot(workspace, "fb-1")
    fed = snap[snap["event_timestamp"] > pd.Timestamp(now - timedelta(days=1))].reset_index(drop=True)
    fed = fed.sort_values("event_timestamp").reset_index(drop=True)
    assert fed["customer_id"].tolist() == served["customer_id"].head(4).tolist()
    assert fed["churned"].tolist() == [1, 0, 1, 0]
    pd.testing.assert_frame_equal(fed[served_features], served.head(4)[served_features], check_dtype=False)
    assert [t.to_pydatetime() for t in fed["event_timestamp"]] == [r.created_at for r in rows[:4]]
