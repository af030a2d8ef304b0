"""A person steering a pipeline's champion, in the registry and the platform database: the rollback's
alias move (audited, with the vector spaces of both versions), the pin (`pipeline_pins`, migration
0012), and an alias move found made outside mlcycle. The decisions are `pipelines.core.steering`'s;
Serve follows through `serving.steer`.
"""

from __future__ import annotations

from typing import Any

from pipelines.core.audit import ActorKind, AuditError, AuditEvent, require_reason
from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import Settings
from pipelines.core.steering import Pin, RollbackError, rollback_target
from pipelines.io import audit as audit_trail
from pipelines.io.db import connect, fetch_dicts
from pipelines.io.registry import CHAMPION, alias_version, model_name, move_alias, record_move
from pipelines.io.tracking import setup_mlflow
from pipelines.io.vectors import retire_space

EXTERNAL_ACTOR = "mlflow"
"""Who an alias move found made outside mlcycle is put down to: the registry it was made in."""


def reason_of(reason: str | None, action: str) -> str:
    """The reason of a human action, or an `InvalidArgument` (exit 2, a 422) that says it is missing."""
    try:
        return require_reason(reason, action)
    except AuditError as err:
        raise InvalidArgument(str(err)) from None


def champion_trail(settings: Settings, pipeline: str) -> list[int | None]:
    """Every move of the pipeline's champion alias mlcycle recorded, oldest first: its `to_version`."""
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT to_version FROM alias_audit WHERE pipeline = %s AND alias = %s ORDER BY id", (pipeline, CHAMPION)
        ).fetchall()
    return [r[0] for r in rows]


def last_recorded_champion(settings: Settings, pipeline: str) -> int | None:
    """The version the last recorded move of the champion alias pointed it to (None: never moved)."""
    trail = champion_trail(settings, pipeline)
    return trail[-1] if trail else None


def current_pin(settings: Settings, pipeline: str) -> Pin | None:
    """The pipeline's pin, or None."""
    with connect(settings) as conn:
        rows = fetch_dicts(conn, "SELECT * FROM pipeline_pins WHERE pipeline = %s", (pipeline,))
    if not rows:
        return None
    row = rows[0]
    return Pin(pipeline, row["pinned_by"], row["pinned_at"], row["reason"], row["version"])


def pin(settings: Settings, pipeline: str, actor: str, actor_kind: ActorKind, reason: str | None) -> Pin:
    """Freeze the champion (the version it names now); refused when pinned already or none exists."""
    why = reason_of(reason, "pin")
    champion = _champion(settings, pipeline)
    if champion is None:
        raise InvalidArgument(f"{pipeline} has no champion yet: there is nothing to pin")
    with connect(settings) as conn:
        found = conn.execute(
            "INSERT INTO pipeline_pins (pipeline, pinned_by, reason, version) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (pipeline) DO NOTHING RETURNING pinned_at",
            (pipeline, actor, why, champion),
        ).fetchone()
        if found is None:
            raise InvalidArgument(f"{pipeline} is pinned already: {_pin_line(conn, pipeline)}")
        audit_trail.write(conn, AuditEvent(actor, actor_kind, "pin", pipeline, champion, reason=why))
    return Pin(pipeline, actor, found[0], why, champion)


def unpin(settings: Settings, pipeline: str, actor: str, actor_kind: ActorKind, reason: str | None) -> Pin:
    """Allow promotion again; returns the pin removed (refused when there is none)."""
    why = reason_of(reason, "unpin")
    with connect(settings) as conn:
        rows = fetch_dicts(conn, "DELETE FROM pipeline_pins WHERE pipeline = %s RETURNING *", (pipeline,))
        if not rows:
            raise InvalidArgument(f"{pipeline} is not pinned")
        row = rows[0]
        detail = {"pinned_by": row["pinned_by"], "pinned_at": str(row["pinned_at"]), "pin_reason": row["reason"]}
        audit_trail.write(conn, AuditEvent(actor, actor_kind, "unpin", pipeline, row["version"], None, why, detail))
    return Pin(pipeline, row["pinned_by"], row["pinned_at"], row["reason"], row["version"])


def _pin_line(conn: Any, pipeline: str) -> str:
    rows = fetch_dicts(conn, "SELECT * FROM pipeline_pins WHERE pipeline = %s", (pipeline,))
    return Pin(pipeline, rows[0]["pinned_by"], rows[0]["pinned_at"], rows[0]["reason"]).line() if rows else "?"


def _client(settings: Settings, pipeline: str) -> Any:
    import mlflow  # heavy: mlflow

    setup_mlflow(settings, pipeline)
    return mlflow.MlflowClient()


def _champion(settings: Settings, pipeline: str) -> int | None:
    found = alias_version(_client(settings, pipeline), model_name(pipeline), CHAMPION)
    return int(found.version) if found is not None else None


def rollback_champion(
    settings: Settings, pipeline: str, to: int | None, actor: str, actor_kind: ActorKind, reason: str | None
) -> dict[str, Any]:
    """Move the champion alias back (to `to`, or the champion before this one), audited as a
    `rollback` with who and why; the restored version's vector space made readable again and the
    replaced one's retired. Returns what was done: `from`, `to`, `vector_space` (the restored
    version's space: `ready`, `restored` (it was retired), `dropped` (rebuild it), `none`)."""
    why = reason_of(reason, "rollback")
    client = _client(settings, pipeline)
    name = model_name(pipeline)
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RollbackError(f"{name} has no champion: there is nothing to roll back")
    before = int(current.version)
    target = rollback_target(champion_trail(settings, pipeline), before, to)
    from mlflow.exceptions import MlflowException  # heavy: mlflow

    try:
        restored = client.get_model_version(name, str(target))
    except MlflowException:
        missing = f"{name} has no version v{target} (deleted from the registry?): name one with --to vN"
        raise RollbackError(missing) from None
    move_alias(
        settings,
        client,
        pipeline=pipeline,
        alias=CHAMPION,
        version=target,
        actor=actor,
        run_id=restored.tags.get("mlcycle.run_id") or "",
        reason=why,
        actor_kind=actor_kind,
        action="rollback",
    )
    return {
        "pipeline": pipeline,
        "from": before,
        "to": target,
        "run_id": restored.tags.get("mlcycle.run_id"),
        "vector_space": swap_spaces(settings, pipeline, before, target),
    }


def swap_spaces(settings: Settings, pipeline: str, before: int | None, after: int) -> str:
    """Retire `before`'s vector space and make `after`'s readable again (a retired space is `ready`
    anew); returns the state of `after`'s space: `ready`, `restored`, `dropped` or `none`."""
    if before is not None:
        retire_space(settings, pipeline, before)
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT state FROM vector_spaces WHERE pipeline = %s AND model_version = %s", (pipeline, after)
        ).fetchone()
        if row is None:
            return "none"
        if row[0] == "retired":
            conn.execute(
                "UPDATE vector_spaces SET state = 'ready', retired_at = NULL"
                " WHERE pipeline = %s AND model_version = %s",
                (pipeline, after),
            )
            return "restored"
    return "ready" if row[0] == "ready" else str(row[0])


def forget_dropped_space(settings: Settings, pipeline: str, version: int) -> bool:
    """Remove a dropped space's row, so that `embed` can build the version's space anew."""
    with connect(settings) as conn:
        return bool(
            conn.execute(
                "DELETE FROM vector_spaces WHERE pipeline = %s AND model_version = %s AND state = 'dropped'",
                (pipeline, version),
            ).rowcount
        )


def record_external(settings: Settings, pipeline: str, before: int | None, after: int | None) -> None:
    """Record a champion alias found moved outside mlcycle: its `alias_audit` row and an
    `external_alias` event, put down to the registry (`EXTERNAL_ACTOR`)."""
    was = f"v{before}" if before is not None else "none"
    reason = f"the champion alias was moved outside mlcycle (from {was} to v{after}); serve-sync followed it"
    who = AuditEvent(EXTERNAL_ACTOR, "external", "external_alias", pipeline, reason=reason)
    with connect(settings) as conn:
        record_move(conn, pipeline, CHAMPION, before, after, who)
