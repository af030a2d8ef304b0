"""The serving keys of one ingress replica, off the hot path.

The replica holds the live keys as a dict from hash to `Grant` (`pipelines.core.keys.grants`): a
request costs one SHA-256 and one dict lookup, never a database call. A daemon thread reloads the
table every `MLCYCLE_SERVING_KEYS_RELOAD_S` seconds (a key revoked is refused within that) and
swaps the dict in one assignment; when the database cannot be read it keeps the last table it
read (and says so in the log), so an outage of the platform database stops no traffic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar

import psycopg

from pipelines.core.keys import Grant, bootstrap_secrets, grants, judge
from pipelines.io.keys import live

log = logging.getLogger("mlcycle.serving.keys")


class KeyRing:
    """The bootstrap keys and the table's live keys; `judge` on the event loop, `reload` in a thread."""

    def __init__(self, bootstrap: str, database_url: Callable[[], str] | None, reload_s: float) -> None:
        """`bootstrap`: the comma-separated keys of `MLCYCLE_SERVING_API_KEYS`, which open every pipeline."""
        self.bootstrap = bootstrap_secrets(bootstrap)
        if not self.bootstrap:
            log.info("no bootstrap key: only the serving keys of `mlcycle keys create` open this endpoint")
        self.database_url = database_url
        self.reload_s = reload_s
        self.table: dict[str, Grant] = grants(self.bootstrap, [])
        self.loaded = False  # whether the table's keys were read at least once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the key id of the predict request being answered: set once it is admitted, read by its
        # request log rows (the tasks of its versions and its shadow inherit it). The replica's own
        # (Serve pickles the app's module globals, and a ContextVar does not pickle).
        self.asking: ContextVar[str | None] = ContextVar("mlcycle_request_key", default=None)

    def judge(self, presented: str, pipeline: str) -> tuple[int, str | None]:
        """`(status, key id)` of a presented key for `pipeline` (200, 403 or 401)."""
        return judge(self.table, presented, pipeline)

    def reload(self) -> bool:
        """Read the live keys once; returns whether it could (the last table stays when not)."""
        if self.database_url is None:
            return False
        try:
            with psycopg.connect(self.database_url(), connect_timeout=3) as conn:
                rows = live(conn)
        except Exception as err:
            log.warning("serving keys not reloaded (%s): the last table read stays", type(err).__name__)
            return False
        self.table = grants(self.bootstrap, rows)
        self.loaded = True
        return True

    def start(self) -> None:
        """Load the table now, then reload it every `reload_s` in a daemon thread."""
        self.reload()
        if self._thread is None and self.database_url is not None:
            self._thread = threading.Thread(target=self._loop, name="serving-keys", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.reload_s):
            self.reload()
