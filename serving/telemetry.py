"""What the ingress records off the request path: the request log and the metrics.

Requests append rows and counts to memory; one background task flushes them every
`FLUSH_EVERY_S`: the rows through one kept connection with COPY (into a temporary table, then
an `INSERT` that skips a row already in the log (`INSERT_NEW`), so a retried flush never
duplicates a row), the counts and
latencies to Ray's metrics (Prometheus), in aggregate. Each replica of the ingress (several where
Serve autoscales) has its own queue, flusher and connection, and its metrics carry Serve's
`replica` tag; a replica Serve stops (a scale-down) writes what it holds first (`Recorder.close`).

No row can stop the log. A row is made storable before it is queued (`storable_features`: a
non-finite number becomes null) and checked when it is serialized (`serialize_row`); a batch the
database refuses for its data (not for a lost connection, which keeps the batch for the next
flush) is split in halves until each refused row stands alone (`isolate`): those rows go to
`request_log_dead_letters` with the database's reason and the rest are written. The queue's
depth, the rows dropped past its cap and the dead letters are metrics
(`mlcycle_request_log_pending`, `_dropped_total`, `_dead_letters_total`) with alert rules
(include/stack/alerts.yml).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.io.vectors import writable_versions, write_served
from serving.records import COLUMNS, LogRow

log = logging.getLogger("mlcycle.serving")

FLUSH_EVERY_S = 0.2
MAX_PENDING_LOG_ROWS = 100_000
CLOSE_TIMEOUT_S = 10.0
"""How long a stopping replica may take to write its queue (within Serve's graceful shutdown, 20 s)."""
LATENCY_BUCKETS_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]
FEATURES = COLUMNS.index("features")
TEXT_COLUMNS = tuple(COLUMNS.index(c) for c in ("entity_id", "status", "error", "predicted_class", "off_contract"))


@dataclass
class Metrics:
    """Counts per (version, status, shadow) and latencies per version since the last export."""

    pipeline: str
    counts: Counter[tuple[int, str, bool]] = field(default_factory=Counter)
    latencies: dict[int, list[float]] = field(default_factory=dict)

    def count(self, version: int, n: int, status: str, shadow: bool) -> None:
        self.counts[(version, status, shadow)] += n

    def observe(self, version: int, latency_ms: float) -> None:
        self.latencies.setdefault(version, []).append(latency_ms)

    def drain(self) -> tuple[Counter[tuple[int, str, bool]], dict[int, list[float]]]:
        counts, latencies = self.counts, self.latencies
        self.counts, self.latencies = Counter(), {}
        return counts, latencies


def text_problem(value: str) -> str | None:
    """Why PostgreSQL's text cannot hold a string (a NUL character, a lone surrogate), or None. Pure."""
    if "\x00" in value:
        return "a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (not UTF-8)"
    return None


def serialize_row(log_row: LogRow) -> tuple[Any, ...] | str:
    """The row's values ready for COPY (its features as strict JSON text), or why it cannot be
    stored. Pure."""
    row = log_row.values()
    features = row[FEATURES]
    if not isinstance(features, str):
        try:
            features = json.dumps(features, allow_nan=False, default=str)
        except ValueError as err:
            return f"features: {err}"
    if "\\u0000" in features:
        return "features: a NUL character (PostgreSQL's jsonb refuses it)"
    problem = text_problem(features)
    if problem:
        return f"features: {problem}"
    for n in TEXT_COLUMNS:
        if isinstance(row[n], str):
            problem = text_problem(row[n])
            if problem:
                return f"{COLUMNS[n]}: {problem}"
    return (*row[:FEATURES], features, *row[FEATURES + 1 :])


def row_json(row: tuple[Any, ...]) -> str:
    """A row as ASCII JSON text that any text column takes (for the dead letters). Pure."""
    return json.dumps(dict(zip(COLUMNS, row, strict=False)), default=str, ensure_ascii=True)


def is_data_error(err: BaseException) -> bool:
    """Whether the database refused a write for what it holds (a row's fault: bisect and go on)
    rather than for the connection or the server (keep the batch and retry)."""
    import psycopg

    return isinstance(err, psycopg.DataError | psycopg.IntegrityError)


Row = tuple[Any, ...]

ROW_KEY = ("request_id", "model_version", "entity_id", "position")
"""What names one answer in the log. The table's key adds `created_at` (it is partitioned by day on
it), so a retried flush is kept out by looking the row up, within a day of its time."""
INSERT_NEW = (
    f"INSERT INTO inference_requests ({', '.join(COLUMNS)})"  # noqa: S608 (the module's constant names)
    f" SELECT DISTINCT ON ({', '.join(ROW_KEY)}) {', '.join(COLUMNS)} FROM requests_in i"
    " WHERE NOT EXISTS (SELECT FROM inference_requests r WHERE "
    + " AND ".join(f"r.{c} = i.{c}" for c in ROW_KEY)
    + " AND r.created_at > i.created_at - interval '1 day' AND r.created_at < i.created_at + interval '1 day')"
    " ON CONFLICT DO NOTHING"
)


def isolate(rows: list[Row], write: Callable[[list[Row]], None]) -> list[tuple[Row, str]]:
    """Write `rows`; where the database refuses the batch for its data, write each half on its own
    until every refused row stands alone. Returns the refused rows with the database's reason; an
    error that is not the data's (`is_data_error`) propagates. At most about 2 x log2(n) writes per
    refused row."""
    if not rows:
        return []
    try:
        write(rows)
        return []
    except Exception as err:
        if not is_data_error(err):
            raise
        if len(rows) == 1:
            return [(rows[0], str(err).strip().splitlines()[0][:500] if str(err).strip() else repr(err)[:500])]
    mid = len(rows) // 2
    return isolate(rows[:mid], write) + isolate(rows[mid:], write)


class RayMetrics:
    """Ray's metric objects (created in the replica, at run time)."""

    def __init__(self) -> None:
        from ray.serve import metrics  # heavy: ray

        self.requests = metrics.Counter(
            "mlcycle_requests",
            description="predictions served",
            tag_keys=("pipeline", "version", "status", "shadow"),  # type: ignore[arg-type]
        )
        self.latency = metrics.Histogram(
            "mlcycle_latency_ms",
            description="prediction latency (ms)",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("pipeline", "version"),  # type: ignore[arg-type]
        )
        self.pending = metrics.Gauge(
            "mlcycle_request_log_pending",
            description="request-log rows waiting to be written (per replica)",
            tag_keys=("pipeline",),
        )
        self.dropped = metrics.Counter(
            "mlcycle_request_log_dropped",
            description="request-log rows dropped because the queue was full",
            tag_keys=("pipeline",),
        )
        self.dead_letters = metrics.Counter(
            "mlcycle_request_log_dead_letters",
            description="request-log rows the database refused, kept in request_log_dead_letters",
            tag_keys=("pipeline",),
        )

    def export(self, pipeline: str, counts: Counter[tuple[int, str, bool]], latencies: dict[int, list[float]]) -> None:
        for (version, status, shadow), n in counts.items():
            tags = {"pipeline": pipeline, "version": str(version), "status": status, "shadow": str(shadow).lower()}
            self.requests.inc(n, tags=tags)
        for version, values in latencies.items():
            tags = {"pipeline": pipeline, "version": str(version)}
            for value in values:
                self.latency.observe(value, tags=tags)

    def export_log(self, pipeline: str, pending: int, dropped: int, dead: int) -> None:
        """The request log's queue depth, and the drops and dead letters since the last export."""
        tags = {"pipeline": pipeline}
        self.pending.set(pending, tags=tags)
        if dropped:
            self.dropped.inc(dropped, tags=tags)
        if dead:
            self.dead_letters.inc(dead, tags=tags)


class RequestLog:
    """Rows of `inference_requests`, kept in memory and written in batches by `flush()`, with the
    embeddings of the entities scored (`(version, entity_id, vector)`), written into each
    version's vector space in the same transaction (`pipelines.io.vectors.write_served`).

    Which versions have a space that takes writes is read at each write (`spaces`) while the
    ingress watches for them (`watch_spaces`): until it is known every vector is queued, after it
    only those of such versions, so a pipeline whose versions have no space pays nothing per
    request for its embeddings.

    A row that cannot be stored is never retried with its batch: it becomes a dead letter
    (`dead`, written to `request_log_dead_letters` with its reason) and the batch goes on."""

    def __init__(self, database_url: Callable[[], str] | None, pipeline: str = "") -> None:
        self.database_url = database_url  # asked at the first write: serving starts without the database
        self.pipeline = pipeline
        self.pending: list[LogRow] = []
        self.vectors: list[tuple[int, str, Any]] = []
        self.dead: list[tuple[Row, str]] = []  # refused rows not yet in the dead-letter table
        self.dropped = 0
        self.dead_letters = 0  # refused rows written to the dead-letter table, in this replica's life
        self.spaces: set[int] | None = None if database_url is not None else set()
        self.watch_spaces = False
        self._conn: Any = None

    def takes_vectors(self, version: int) -> bool:
        """Whether the version's embeddings are wanted: its space takes writes, or that is not yet known."""
        return self.spaces is None or version in self.spaces

    def add_vector(self, version: int, entity_id: str, vector: Any) -> None:
        """Queue an entity's embedding for its version's space; the oldest is dropped past the cap."""
        if len(self.vectors) >= MAX_PENDING_LOG_ROWS:
            self.vectors.pop(0)
            self.dropped += 1
        self.vectors.append((version, entity_id, vector))

    def add(self, row: LogRow) -> None:
        """Queue a row; the oldest is dropped past the cap."""
        if len(self.pending) >= MAX_PENDING_LOG_ROWS:
            self.pending.pop(0)
            self.dropped += 1
        self.pending.append(row)

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url())  # type: ignore[misc]
        return self._conn

    def write(self, rows: list[LogRow], vectors: list[tuple[int, str, Any]] | None = None) -> int:
        """Write rows (and embeddings) (blocking: call it in a thread). Rows that cannot be stored
        become dead letters, written with their reason; the others are written in one transaction
        with the embeddings, or, when the database refuses that batch for its data, in halves.
        Returns the dead letters of this write. A lost connection raises, and the caller keeps
        the rows for the next flush."""
        import psycopg

        if self.database_url is None:
            return 0
        ready: list[Row] = []
        dead: list[tuple[Row, str]] = []
        for row in rows:
            out = serialize_row(row)
            if isinstance(out, str):
                dead.append((row.values(), out))
            else:
                ready.append(out)
        try:
            try:
                self._write_rows(ready, vectors or [])
            except Exception as err:
                if not is_data_error(err):
                    raise
                log.warning("the request log refused a batch of %d rows (%s): isolating the bad rows", len(ready), err)
                dead += isolate(ready, lambda part: self._write_rows(part, []))
                self._write_vectors(vectors or [])
            self.dead += dead  # the batch is written: its refused rows are the dead letters' now
            return self._write_dead()
        except psycopg.Error:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise

    def _write_rows(self, rows: list[Row], vectors: list[tuple[int, str, Any]]) -> None:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:  # a refused write rolls back; the connection stays usable
            if rows:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS requests_in (LIKE inference_requests) ON COMMIT DELETE ROWS"
                )
                with cur.copy(f"COPY requests_in ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(INSERT_NEW)
            if vectors or self.watch_spaces:
                spaces = writable_versions(conn, self.pipeline)
                write_served(conn, self.pipeline, vectors, spaces)
                self.spaces = set(spaces)

    def _write_vectors(self, vectors: list[tuple[int, str, Any]]) -> None:
        """The embeddings of a batch whose rows were isolated; refused ones are dropped (counted)."""
        if not vectors:
            return
        try:
            self._write_rows([], vectors)
        except Exception as err:
            if not is_data_error(err):
                raise
            log.warning("dropped %d embeddings the database refused: %s", len(vectors), err)
            self.dropped += len(vectors)

    def _write_dead(self) -> int:
        """Write the dead letters queued (a lost connection keeps them queued). Returns how many."""
        if not self.dead:
            return 0
        dead, rid, entity = self.dead, COLUMNS.index("request_id"), COLUMNS.index("entity_id")
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO request_log_dead_letters (pipeline, request_id, entity_id, reason, row_json)"
                " VALUES (%s, %s, %s, %s, %s)",
                [
                    (self.pipeline, str(row[rid]), _safe(str(row[entity])), _safe(reason), row_json(row))
                    for row, reason in dead
                ],
            )
        self.dead = []
        self.dead_letters += len(dead)
        for row, reason in dead:
            log.error("request log: row of request %s refused (%s): kept in request_log_dead_letters", row[rid], reason)
        return len(dead)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _safe(text: str) -> str:
    """Text any PostgreSQL text column takes (NUL and lone surrogates escaped). Pure."""
    return text if text_problem(text) is None else json.dumps(text, ensure_ascii=True)[1:-1]


class Recorder:
    """The request log and the metrics of one ingress, with the task that flushes both."""

    def __init__(self, pipeline: str, database_url: Callable[[], str] | None, ray_metrics: RayMetrics | None) -> None:
        self.log = RequestLog(database_url, pipeline)
        self.metrics = Metrics(pipeline)
        self.ray_metrics = ray_metrics
        self.flusher: asyncio.Task[None] | None = None
        self._exported = (0, 0)  # (dropped, dead letters) already exported

    def touch(self) -> None:
        """Make sure the flusher runs (called on the event loop)."""
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while self.log.pending or self.log.vectors or self.log.dead or self.metrics.counts:
            await asyncio.sleep(FLUSH_EVERY_S)
            self._export_metrics()
            try:
                await self.flush()
            except Exception:
                log.exception("request log write failed; %d rows kept for the next flush", len(self.log.pending))
                await asyncio.sleep(1.0)
        self._export_metrics()  # the queue's depth back at 0

    def _export_metrics(self) -> None:
        counts, latencies = self.metrics.drain()
        if self.ray_metrics is None:
            return
        dropped, dead = self.log.dropped, self.log.dead_letters
        try:
            if counts:
                self.ray_metrics.export(self.metrics.pipeline, counts, latencies)
            self.ray_metrics.export_log(
                self.metrics.pipeline, len(self.log.pending), dropped - self._exported[0], dead - self._exported[1]
            )
            self._exported = (dropped, dead)
        except Exception:
            log.exception("metrics export failed")

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Before the replica goes (Serve drained it: a scale-down, a restart): the running flush
        ends, what is left is written and exported, the connection closed. Bounded by `timeout_s`
        (a database that is down loses the rows still queued, as a killed replica would)."""

        async def drain() -> None:
            if self.flusher is not None and not self.flusher.done():
                await self.flusher
            await self.flush()
            self._export_metrics()

        try:
            await asyncio.wait_for(drain(), timeout_s)
        except Exception:
            log.exception("request log: %d rows not written before the replica stopped", len(self.log.pending))
        await asyncio.to_thread(self.log.close)

    async def flush(self) -> int:
        """Write what is pending now; on failure the rows go back in front of the queue. Returns
        the rows taken off the queue (written, or dead letters)."""
        batch, self.log.pending = self.log.pending, []
        vectors, self.log.vectors = self.log.vectors, []
        if not batch and not vectors and not self.log.dead:
            return 0
        try:
            await asyncio.to_thread(self.log.write, batch, vectors)
        except BaseException:  # a failure, or a flush cancelled (a replica's bounded close): kept
            self.log.pending = batch + self.log.pending
            self.log.vectors = vectors + self.log.vectors
            raise
        return len(batch)
