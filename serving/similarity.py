"""`GET /similar`'s reads: the vector space of the version the `champion` alias names, through a
replica's few connections to the platform database, opened at the first read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from psycopg_pool import ConnectionPool

from pipelines.io.vectors import similar


class SimilarReader:
    """A replica's similarity reads of one pipeline's model (`read` blocks: call it in a thread)."""

    def __init__(self, url: Callable[[], str], pipeline: str, model_name: str) -> None:
        self.url, self.pipeline, self.model_name = url, pipeline, model_name
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()

    def read(self, entity_id: str, k: int) -> dict[str, Any]:
        with self._connections().connection() as conn:
            return similar(conn, self.pipeline, self.model_name, entity_id, k)

    def _connections(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url(), min_size=1, max_size=4, timeout=5.0, kwargs={"connect_timeout": 3}, open=True
                )
            return self._pool
