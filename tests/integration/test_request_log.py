"""serving.telemetry.RequestLog on the real platform database: COPY through one kept connection,
duplicates ignored, a lost connection replaced."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from pipelines.core.settings import Settings
from pipelines.io import db
from serving.telemetry import COLUMNS, RequestLog

pytestmark = pytest.mark.integration
NOTE = 'a tab\there, a quote \' and a "double", a backslash \\'


def _row(request_id: uuid.UUID, entity: str) -> tuple[object, ...]:
    features = json.dumps({"plan": "basic", "note": NOTE})
    row = (request_id, "rl_test", 1, entity, features, 0.5, 1.25, "ok", None, False, datetime.now(UTC), None, None)
    assert len(row) == len(COLUMNS)
    return row


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
