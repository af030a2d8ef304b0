"""What the ingress records off the request path: the request log and the metrics.

Requests append rows and counts to memory; one background task flushes them every
`FLUSH_EVERY_S`: the rows through one kept connection with COPY (into a temporary table, then
`INSERT ... ON CONFLICT DO NOTHING`, so a retried flush never duplicates a row), the counts and
latencies to Ray's metrics (Prometheus), in aggregate.
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

log = logging.getLogger("mlcycle.serving")

FLUSH_EVERY_S = 0.2
MAX_PENDING_LOG_ROWS = 100_000
LATENCY_BUCKETS_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]
COLUMNS = (
    "request_id",
    "pipeline",
    "model_version",
    "entity_id",
    "features",
    "score",
    "latency_ms",
    "status",
    "error",
    "shadow",
    "created_at",
    "predicted_class",  # a multiclass model's (with `probabilities`); NULL for the others
    "probabilities",
)
FEATURES = COLUMNS.index("features")


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

    def export(self, pipeline: str, counts: Counter[tuple[int, str, bool]], latencies: dict[int, list[float]]) -> None:
        for (version, status, shadow), n in counts.items():
            tags = {"pipeline": pipeline, "version": str(version), "status": status, "shadow": str(shadow).lower()}
            self.requests.inc(n, tags=tags)
        for version, values in latencies.items():
            tags = {"pipeline": pipeline, "version": str(version)}
            for value in values:
                self.latency.observe(value, tags=tags)


class RequestLog:
    """Rows of `inference_requests`, kept in memory and written in batches by `flush()`, with the
    embeddings of the entities scored (`(version, entity_id, vector)`), written into each
    version's vector space in the same transaction (`pipelines.io.vectors.write_served`).

    Which versions have a space that takes writes is read at each write (`spaces`) while the
    ingress watches for them (`watch_spaces`): until it is known every vector is queued, after it
    only those of such versions, so a pipeline whose versions have no space pays nothing per
    request for its embeddings."""

    def __init__(self, database_url: Callable[[], str] | None, pipeline: str = "") -> None:
        self.database_url = database_url  # asked at the first write: serving starts without the database
        self.pipeline = pipeline
        self.pending: list[tuple[Any, ...]] = []
        self.vectors: list[tuple[int, str, Any]] = []
        self.dropped = 0
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

    def add(self, row: tuple[Any, ...]) -> None:
        """Queue a row (the `COLUMNS`, in order); the oldest is dropped past the cap."""
        if len(self.pending) >= MAX_PENDING_LOG_ROWS:
            self.pending.pop(0)
            self.dropped += 1
        self.pending.append(row)

    def write(self, rows: list[tuple[Any, ...]], vectors: list[tuple[int, str, Any]] | None = None) -> None:
        """Write rows (and embeddings) in one transaction (blocking: call it in a thread); a
        `features` value that is not yet JSON text, and a vector, are serialized here, off the
        request path."""
        import psycopg

        if self.database_url is None:
            return
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url())
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS requests_in (LIKE inference_requests) ON COMMIT DELETE ROWS"
                )
                with cur.copy(f"COPY requests_in ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        if not isinstance(row[FEATURES], str):
                            row = (*row[:FEATURES], json.dumps(row[FEATURES], default=str), *row[FEATURES + 1 :])
                        copy.write_row(row)
                cur.execute(
                    f"INSERT INTO inference_requests ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)}"  # noqa: S608
                    " FROM requests_in ON CONFLICT DO NOTHING"  # (COLUMNS: the module's constant names)
                )
                if vectors or self.watch_spaces:
                    spaces = writable_versions(self._conn, self.pipeline)
                    write_served(self._conn, self.pipeline, vectors or [], spaces)
                    self.spaces = set(spaces)
        except psycopg.Error:
            self._conn.close()
            self._conn = None
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class Recorder:
    """The request log and the metrics of one ingress, with the task that flushes both."""

    def __init__(self, pipeline: str, database_url: Callable[[], str] | None, ray_metrics: RayMetrics | None) -> None:
        self.log = RequestLog(database_url, pipeline)
        self.metrics = Metrics(pipeline)
        self.ray_metrics = ray_metrics
        self.flusher: asyncio.Task[None] | None = None

    def touch(self) -> None:
        """Make sure the flusher runs (called on the event loop)."""
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while self.log.pending or self.log.vectors or self.metrics.counts:
            await asyncio.sleep(FLUSH_EVERY_S)
            self._export_metrics()
            try:
                await self.flush()
            except Exception:
                log.exception("request log write failed; %d rows kept for the next flush", len(self.log.pending))
                await asyncio.sleep(1.0)

    def _export_metrics(self) -> None:
        counts, latencies = self.metrics.drain()
        if self.ray_metrics is not None and counts:
            try:
                self.ray_metrics.export(self.metrics.pipeline, counts, latencies)
            except Exception:
                log.exception("metrics export failed")

    async def flush(self) -> int:
        """Write what is pending now; on failure the rows go back in front of the queue."""
        batch, self.log.pending = self.log.pending, []
        vectors, self.log.vectors = self.log.vectors, []
        if not batch and not vectors:
            return 0
        try:
            await asyncio.to_thread(self.log.write, batch, vectors)
        except Exception:
            self.log.pending = batch + self.log.pending
            self.log.vectors = vectors + self.log.vectors
            raise
        return len(batch)
