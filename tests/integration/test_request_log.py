"""serving.telemetry.RequestLog on the real platform database: COPY through one kept connection,
duplicates ignored, a lost connection replaced."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from pipelines.core.settings import Settings
from pipelines.io import db
from serving.records import LogRow
from serving.telemetry import Recorder, RequestLog

pytestmark = pytest.mark.integration
NOTE = 'a tab\there, a quote \' and a "double", a backslash \\'


def _row(request_id: uuid.UUID, entity: str, pipeline: str = "rl_test", **changes: object) -> LogRow:
    features = json.dumps({"plan": "basic", "note": NOTE})
    row = LogRow(request_id, pipeline, 1, entity, features, 0.5, 1.25, "ok", None, False, datetime.now(UTC))
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]


def test_rows_are_copied_once_and_a_lost_connection_is_replaced(platform: Settings) -> None:
    log = RequestLog(lambda: db.database_url(platform))
    rid = uuid.uuid4()
    log.write([_row(rid, "1"), _row(rid, "2"), _row(rid, "2")])  # one entity twice in a request
    log.write([_row(rid, "1")])  # a retried flush
    with db.connect(platform) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (log._conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        log.write([_row(rid, "3")])  # the killed connection fails this write (the caller keeps the rows)
    log.write([_row(rid, "3")])  # and the next one reconnects
    with db.connect(platform) as conn:
        rows = conn.execute(
            "SELECT entity_id, features->>'note', score, created_at IS NOT NULL FROM inference_requests"
            " WHERE request_id = %s ORDER BY entity_id",
            (rid,),
        ).fetchall()
    assert rows == [("1", NOTE, 0.5, True), ("2", NOTE, 0.5, True), ("3", NOTE, 0.5, True)]
    log.close()


def test_rows_the_database_refuses_become_dead_letters_and_the_rest_is_written(platform: Settings) -> None:
    """A batch with a row a CHECK constraint refuses (the test's hook) and a row whose features are
    no JSON: both are dead letters with their reason, every other row is written, and the log
    takes the next batch as usual."""
    log = RequestLog(lambda: db.database_url(platform), "rl_dead")
    rid = uuid.uuid4()
    rows = [_row(rid, str(n), "rl_dead") for n in range(40)]
    rows[17] = _row(rid, "poison-17", "rl_dead")
    rows[30] = _row(rid, "30", "rl_dead", features={"usage": float("nan")})
    with db.connect(platform) as conn:
        conn.execute(
            "ALTER TABLE inference_requests ADD CONSTRAINT rl_poison CHECK (entity_id <> 'poison-17') NOT VALID"
        )
    try:
        assert log.write(rows) == 2
    finally:
        with db.connect(platform) as conn:
            conn.execute("ALTER TABLE inference_requests DROP CONSTRAINT rl_poison")
    log.write([_row(rid, "after", "rl_dead")])
    with db.connect(platform) as conn:
        written = {r[0] for r in conn.execute("SELECT entity_id FROM inference_requests WHERE request_id = %s", (rid,))}
        dead = conn.execute(
            "SELECT entity_id, reason, row_json FROM request_log_dead_letters WHERE request_id = %s ORDER BY entity_id",
            (str(rid),),
        ).fetchall()
    assert written == {str(n) for n in range(40) if n not in (17, 30)} | {"after"}
    assert [(e, r.split(":")[0]) for e, r, _ in dead] == [("30", "features"), ("poison-17", dead[1][1].split(":")[0])]
    assert "rl_poison" in dead[1][1] and "Out of range float" in dead[0][1]
    assert json.loads(dead[1][2])["entity_id"] == "poison-17"  # the row, to inspect or replay
    assert log.dead == [] and log.dead_letters == 2
    log.close()


def test_a_stopping_replica_writes_its_own_queue_and_a_dead_database_does_not_hold_it(platform: Settings) -> None:
    """`Recorder.close` (Serve's graceful shutdown of an ingress replica, e.g. a scale-down): rows
    queued while the flusher runs are all written before it returns; against a database that does
    not answer it gives up within its bound instead of holding the replica."""
    rid = uuid.uuid4()

    async def stop(recorder: Recorder, timeout_s: float = 10.0) -> None:
        for n in range(100):
            recorder.log.add(_row(rid, str(n), "rl_close"))
        recorder.touch()  # the flusher is running (asleep until its first flush)
        for n in range(100, 250):
            recorder.log.add(_row(rid, str(n), "rl_close"))
        await recorder.close(timeout_s)

    recorder = Recorder("rl_close", lambda: db.database_url(platform), None)
    asyncio.run(stop(recorder))
    with db.connect(platform) as conn:
        ((n,),) = conn.execute("SELECT count(*) FROM inference_requests WHERE request_id = %s", (rid,)).fetchall()
    assert (n, recorder.log.pending) == (250, [])
    assert recorder.log._conn is None or recorder.log._conn.closed

    dead = Recorder("rl_close", lambda: "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1", None)
    began = time.monotonic()
    asyncio.run(stop(dead, timeout_s=2.0))
    assert time.monotonic() - began < 8 and len(dead.log.pending) == 250
