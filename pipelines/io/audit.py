"""The audit trail in the platform database (`audit_events`, migration 0010)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.core.audit import AuditEvent
from pipelines.core.settings import Settings
from pipelines.io.db import connect, fetch_dicts

if TYPE_CHECKING:
    import psycopg

_SELECT = "SELECT id, at, actor, actor_kind, action, pipeline, version, run_id, reason, detail FROM audit_events"


def write(conn: psycopg.Connection[Any], event: AuditEvent) -> int:
    """Insert one event on an open connection (so it commits with the change it records); returns
    its id, or 0 where the event was recorded already (a run's `trigger`, seen by the API and by
    the scheduler's listener: migration 0020)."""
    from psycopg.types.json import Jsonb

    row = conn.execute(
        "INSERT INTO audit_events (actor, actor_kind, action, pipeline, version, run_id, reason, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
        (
            event.actor,
            event.actor_kind,
            event.action,
            event.pipeline,
            event.version,
            event.run_id,
            event.reason,
            Jsonb(event.detail),
        ),
    ).fetchone()
    return int(row[0]) if row else 0


def record(settings: Settings, event: AuditEvent) -> int:
    """Insert one event in a transaction of its own; returns its id."""
    with connect(settings) as conn:
        return write(conn, event)


def events(
    settings: Settings, pipeline: str, *, limit: int = 200, action: str | None = None, version: int | None = None
) -> list[dict[str, Any]]:
    """A pipeline's newest events first (at most `limit`), optionally of one action, of one version."""
    query = _SELECT + (
        " WHERE pipeline = %s AND (%s::text IS NULL OR action = %s) AND (%s::int IS NULL OR version = %s)"
        " ORDER BY id DESC LIMIT %s"
    )
    with connect(settings) as conn:
        return fetch_dicts(conn, query, (pipeline, action, action, version, version, max(1, min(limit, 10_000))))
