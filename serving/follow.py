"""An ingress replica follows its pipeline's published arguments (`pipelines.io.servingargs`):
a daemon thread LISTENs on `mlcycle_serving_args` and, for a new generation of the replica's own
layout, hands the arguments to the replica (`apply`, which reconfigures it in place on its event
loop) and says so on `mlcycle_serving_applied` (`seen` at once, then `applied` or `failed`). It
reads the row again every `resync_s` (a notification sent while it was reconnecting is not lost)
and reconnects after a database outage, during which the replica keeps serving what it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from pipelines.core.acks import Ack
from pipelines.io.servingargs import PUBLISHED, Published, acknowledge, read
from serving.config import ServingArgs

log = logging.getLogger("mlcycle.serving.follow")
APPLICATION_NAME = "mlcycle-serving-args"  # the follower's connection, as pg_stat_activity names it


class ArgsFollower:
    """`apply(published)` is called in this thread for each new generation; it returns an error
    message, or "" once the replica serves it."""

    def __init__(
        self,
        pipeline: str,
        replica: str,
        database_url: Callable[[], str],
        apply: Callable[[Published], str],
        resync_s: float = 5.0,
    ) -> None:
        self.pipeline, self.replica, self.database_url, self.apply = pipeline, replica, database_url, apply
        self.resync_s = resync_s
        self.layout = ""
        self.generation = 0
        self.failed = 0  # the last generation it could not apply: not tried again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, layout: str, generation: int) -> None:
        """What the replica serves now (its arguments from Serve, or from a row it applied); starts
        the thread the first time."""
        self.layout, self.generation = layout, max(self.generation, generation)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="serving-args", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                url, name = self.database_url(), APPLICATION_NAME
                with psycopg.connect(url, autocommit=True, connect_timeout=3, application_name=name) as conn:
                    conn.execute(f"LISTEN {PUBLISHED}")
                    while not self._stop.is_set():
                        self._check(conn)
                        for _ in conn.notifies(timeout=self.resync_s, stop_after=1):
                            pass
            except Exception as err:  # the database is away: keep serving, try again
                log.warning("serving arguments not followed (%s): retrying in 2 s", type(err).__name__)
                self._stop.wait(2.0)

    def _check(self, conn: psycopg.Connection[object]) -> None:
        row = read(conn, self.pipeline)
        if row is None or row.layout != self.layout or row.generation <= max(self.generation, self.failed):
            return
        acknowledge(conn, Ack(self.pipeline, row.generation, self.replica, "seen"))
        started = time.monotonic()
        error = self.apply(row)
        if error:
            self.failed = row.generation
            log.error("serving generation %s not applied: %s", row.generation, error)
        else:
            self.generation = max(self.generation, row.generation)
            log.info("serving generation %s (%.2f s)", row.generation, time.monotonic() - started)
        state = "failed" if error else "applied"
        acknowledge(conn, Ack(self.pipeline, row.generation, self.replica, state, error))


def newer_published(args: ServingArgs, database_url: Callable[[], str]) -> ServingArgs:
    """The published row's arguments where they are newer than `args` and of its layout (a replica
    that Serve starts with the arguments of the application's last redeploy, after generations
    that were applied in place), else `args` (also where the database cannot be read)."""
    if not args.layout:  # a hand-written Serve config: it follows nothing
        return args
    try:
        with psycopg.connect(database_url(), connect_timeout=3) as conn:
            row = read(conn, args.pipeline)
    except Exception as err:
        log.warning("published serving arguments not read (%s): starting with Serve's", type(err).__name__)
        return args
    if row is None or row.layout != args.layout or row.generation <= args.generation:
        return args
    return ServingArgs.model_validate({**row.args, "generation": row.generation, "layout": row.layout})
