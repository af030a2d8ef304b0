"""Serving keys in the platform database (`serving_keys`, migration 0011): made, listed, revoked,
each change with its audit event in the same transaction. The secret itself is returned once by
`create` and stored nowhere; see `pipelines.core.keys`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.core.audit import AuditEvent
from pipelines.core.errors import InvalidArgument
from pipelines.core.keys import check_request, key_hash, new_key_id, new_secret
from pipelines.core.settings import Settings
from pipelines.io.audit import write
from pipelines.io.db import connect, fetch_dicts

if TYPE_CHECKING:
    import psycopg

_LISTED = "SELECT id, name, pipelines, created_at, created_by, revoked_at, revoked_by FROM serving_keys"


def create(settings: Settings, pipelines: list[str], name: str, actor: str) -> tuple[dict[str, Any], str]:
    """A new key for `pipelines`: its row (no hash) and the secret, which nothing keeps."""
    name, wanted = check_request(name, pipelines)
    secret, key_id = new_secret(), new_key_id()
    with connect(settings) as conn:
        conn.execute(
            "INSERT INTO serving_keys (id, name, pipelines, hash, created_by) VALUES (%s, %s, %s, %s, %s)",
            (key_id, name, list(wanted), key_hash(secret), actor),
        )
        for pipeline in wanted:
            write(conn, AuditEvent(actor, "user", "key_created", pipeline, detail={"key_id": key_id, "name": name}))
        row = fetch_dicts(conn, _LISTED + " WHERE id = %s", (key_id,))[0]
    return row, secret


def listed(settings: Settings, pipeline: str | None = None) -> list[dict[str, Any]]:
    """Every key (or those opening `pipeline`), newest first: ids, labels, pipelines, who and when; never a hash."""
    query = _LISTED + " WHERE (%s::text IS NULL OR %s = ANY(pipelines)) ORDER BY created_at DESC, id"
    with connect(settings) as conn:
        return fetch_dicts(conn, query, (pipeline, pipeline))


def revoke(settings: Settings, key_id: str, actor: str) -> dict[str, Any]:
    """Revoke a key (its row stays, for the request log that names it); an error for an unknown or revoked one."""
    with connect(settings) as conn:
        found = fetch_dicts(conn, _LISTED + " WHERE id = %s FOR UPDATE", (key_id,))
        if not found:
            raise InvalidArgument(f"no serving key {key_id!r} (`mlcycle keys list` names them)")
        if found[0]["revoked_at"] is not None:
            raise InvalidArgument(f"{key_id} was revoked at {found[0]['revoked_at']:%Y-%m-%d %H:%M:%S %Z}")
        conn.execute("UPDATE serving_keys SET revoked_at = now(), revoked_by = %s WHERE id = %s", (actor, key_id))
        for pipeline in found[0]["pipelines"]:
            detail = {"key_id": key_id, "name": found[0]["name"]}
            write(conn, AuditEvent(actor, "user", "key_revoked", pipeline, detail=detail))
        return fetch_dicts(conn, _LISTED + " WHERE id = %s", (key_id,))[0]


def live(conn: psycopg.Connection[Any]) -> list[tuple[str, str, list[str]]]:
    """The unrevoked keys as `(id, hash, pipelines)`: what a serving replica loads."""
    rows = conn.execute("SELECT id, hash, pipelines FROM serving_keys WHERE revoked_at IS NULL").fetchall()
    return [(str(r[0]), str(r[1]), list(r[2])) for r in rows]
