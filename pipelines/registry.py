"""The MLflow model registry, by aliases (MLflow 3: stages are gone), with an audit trail.

Every alias change goes through `move_alias`, which records who (run and step), from which
version to which, when and why in the platform table `alias_audit`.
"""

from __future__ import annotations

from typing import Any

from pipelines.db import connect
from pipelines.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"


def model_name(pipeline: str) -> str:
    return f"mlcycle-{pipeline}"


def alias_version(client: Any, name: str, alias: str) -> Any:
    """The model version an alias points to, or None (no model, or no such alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def move_alias(
    settings: Settings,
    client: Any,
    *,
    pipeline: str,
    alias: str,
    version: int | None,
    actor: str,
    run_id: str,
    reason: str,
) -> None:
    """Point `alias` at `version` (None deletes it) and record the change."""
    name = model_name(pipeline)
    current = alias_version(client, name, alias)
    before = int(current.version) if current is not None else None
    if before == version:
        return
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))
    with connect(settings) as conn:
        conn.execute(
            "INSERT INTO alias_audit (pipeline, model_name, alias, from_version, to_version, actor, run_id, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (pipeline, name, alias, before, version, actor, run_id, reason),
        )


def audit(settings: Settings, pipeline: str) -> list[dict[str, Any]]:
    with connect(settings) as conn:
        cur = conn.execute(
            "SELECT alias, from_version, to_version, actor, run_id, reason, changed_at FROM alias_audit"
            " WHERE pipeline = %s ORDER BY id",
            (pipeline,),
        )
        cols = [d.name for d in cur.description or []]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
