"""What the `retention` step reads and removes in the platform database: the request log's day
partitions (pipelines/core/retention.py decides which), DEFAULT-partition rows, labels, batch
predictions, the run attempts that are running and the digests of deleted artifacts. Each function takes an open
connection; the caller holds the transaction."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pipelines.core.retention import DEFAULT_PARTITION, BatchRun, day_bounds, partition_day, partition_name

BATCH_STEPS = ["batch_pin", "batch", "batch_publish"]

LOCK = "mlcycle-retention-request-log"
"""The advisory lock under which one retention step at a time changes the request log's partitions."""


def day_partitions(conn: Any) -> list[date]:
    """The days the request log has a partition of."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'inference_requests'::regclass"
    ).fetchall()
    return sorted(d for (name,) in rows if (d := partition_day(name)) is not None)


def default_days(conn: Any) -> list[date]:
    """The UTC days of the rows in the DEFAULT partition (rows no day partition took)."""
    rows = conn.execute(
        f"SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM {DEFAULT_PARTITION}"  # noqa: S608 (a constant)
    ).fetchall()
    return sorted(d for (d,) in rows)


def create_partition(conn: Any, day: date) -> int:
    """Make the day's partition, moving the day's rows out of the DEFAULT partition into it (writes
    that would land there wait meanwhile). Returns the rows moved."""
    name, (start, end) = partition_name(day), day_bounds(day)
    conn.execute(f"LOCK TABLE {DEFAULT_PARTITION} IN SHARE ROW EXCLUSIVE MODE")
    conn.execute(
        f'CREATE TABLE "{name}" (LIKE inference_requests INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)'
    )
    moved = conn.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE created_at >= %s AND created_at < %s RETURNING *)"  # noqa: S608
        f' INSERT INTO "{name}" SELECT * FROM moved',
        (start, end),
    ).rowcount
    bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"  # DDL takes no parameters: two dates
    conn.execute(f'ALTER TABLE inference_requests ATTACH PARTITION "{name}" FOR VALUES {bounds}')
    return int(moved)


def drop_partition(conn: Any, day: date) -> tuple[int, int]:
    """Drop the day's partition. Returns its rows and its bytes on disk (table, indexes, TOAST)."""
    name = partition_name(day)
    size = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (name,)).fetchone()[0]
    rows = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]  # noqa: S608 (a partition's name)
    conn.execute(f'DROP TABLE "{name}"')
    return int(rows), int(size)


def delete_default_before(conn: Any, before: datetime) -> tuple[int, int]:
    """Delete the DEFAULT partition's rows older than `before`. Returns their rows and bytes."""
    row = conn.execute(
        f"WITH gone AS (DELETE FROM {DEFAULT_PARTITION} d WHERE created_at < %s RETURNING pg_column_size(d.*) AS n)"  # noqa: S608
        " SELECT count(*), COALESCE(sum(n), 0) FROM gone",
        (before,),
    ).fetchone()
    return int(row[0]), int(row[1])


def delete_labels(conn: Any, pipeline: str, before: datetime) -> tuple[int, int]:
    """Delete a pipeline's labels observed before `before`. Returns their rows and bytes."""
    row = conn.execute(
        "WITH gone AS (DELETE FROM labels l WHERE pipeline = %s AND observed_at < %s"
        " RETURNING pg_column_size(l.*) AS n) SELECT count(*), COALESCE(sum(n), 0) FROM gone",
        (pipeline, before),
    ).fetchone()
    return int(row[0]), int(row[1])


def batch_runs(conn: Any, pipeline: str) -> list[BatchRun]:
    """The pipeline's batch runs that hold rows of `batch_predictions`, from their steps' records,
    with their publication (a run whose rows went is not listed again)."""
    rows = conn.execute(
        "SELECT s.run_id, max(COALESCE(s.finished_at, s.started_at)), bool_or(s.status = 'running'), b.published_at"
        " FROM step_runs s LEFT JOIN batch_runs b ON b.pipeline = s.pipeline AND b.run_id = s.run_id"
        " WHERE s.pipeline = %s AND s.step = ANY(%s)"
        " AND EXISTS (SELECT 1 FROM batch_predictions p WHERE p.pipeline = s.pipeline AND p.run_id = s.run_id)"
        " GROUP BY s.run_id, b.published_at",
        (pipeline, BATCH_STEPS),
    ).fetchall()
    return [BatchRun(str(r), last, bool(running), published) for r, last, running, published in rows]


def delete_batch_predictions(conn: Any, pipeline: str, runs: list[str]) -> tuple[int, int]:
    """Delete the batch predictions of a pipeline's `runs` and mark those runs' summaries (they stay:
    `mlcycle batch show` lists them with when their rows went). Returns the rows and bytes."""
    row = conn.execute(
        "WITH gone AS (DELETE FROM batch_predictions b WHERE pipeline = %s AND run_id = ANY(%s)"
        " RETURNING pg_column_size(b.*) AS n) SELECT count(*), COALESCE(sum(n), 0) FROM gone",
        (pipeline, runs),
    ).fetchone()
    conn.execute(
        "UPDATE batch_runs SET rows_removed_at = clock_timestamp() WHERE pipeline = %s AND run_id = ANY(%s)",
        (pipeline, runs),
    )
    return int(row[0]), int(row[1])


def running_runs(conn: Any, pipeline: str) -> set[str]:
    """The runs of a pipeline with a step attempt running now."""
    rows = conn.execute(
        "SELECT DISTINCT run_id FROM step_runs WHERE pipeline = %s AND status = 'running'", (pipeline,)
    ).fetchall()
    return {str(r) for (r,) in rows}


def forget_digests(conn: Any, keys: list[str]) -> int:
    """Delete the recorded sha256 of artifacts that were removed. Returns how many."""
    return int(conn.execute("DELETE FROM artifact_digests WHERE key = ANY(%s)", (keys,)).rowcount)


def database_bytes(conn: Any) -> int:
    """The platform database's size on disk (every table, index and TOAST of every schema)."""
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0])
