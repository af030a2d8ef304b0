"""The MLflow model registry, by aliases (MLflow 3: stages are gone), with an audit trail.

Every alias change goes through `move_alias`, which records who (run and step), from which
version to which, when and why in the platform table `alias_audit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.core.errors import SettingsError
from pipelines.core.settings import Settings
from pipelines.io.db import connect, fetch_dicts
from pipelines.io.tracking import setup_mlflow

CHAMPION = "champion"
CHALLENGER = "challenger"


def model_name(pipeline: str) -> str:
    return f"mlcycle-{pipeline}"


def alias_version(client: Any, name: str, alias: str) -> Any:
    """The model version an alias points to, or None (no model, or no such alias)."""
    from mlflow.exceptions import MlflowException  # heavy: mlflow

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


@dataclass(frozen=True)
class Registry:
    """One pipeline's registered model, as one step of one run sees it: aliases read, and moved
    with that step as the actor of the audit trail."""

    settings: Settings
    client: Any
    pipeline: str
    run_id: str
    actor: str

    @property
    def name(self) -> str:
        return model_name(self.pipeline)

    def version(self, alias: str) -> int | None:
        """The version number an alias points to, or None."""
        found = alias_version(self.client, self.name, alias)
        return int(found.version) if found is not None else None

    def point(self, alias: str, version: int | None, reason: str) -> None:
        """Point `alias` at `version` (None deletes it), recorded with this step as the actor."""
        move_alias(
            self.settings,
            self.client,
            pipeline=self.pipeline,
            alias=alias,
            version=version,
            actor=self.actor,
            run_id=self.run_id,
            reason=reason,
        )


def open_registry(settings: Settings, pipeline: str, run_id: str, step: str) -> Registry:
    """The registry of a pipeline's model, with MLflow set up for it."""
    import mlflow  # heavy: mlflow

    setup_mlflow(settings, pipeline)
    return Registry(settings, mlflow.MlflowClient(), pipeline, run_id, f"{pipeline}/{run_id}/{step}")


def champion_version(settings: Settings, pipeline: str) -> int:
    """The version the `champion` alias points to, or a clear error when there is none yet."""
    import mlflow  # heavy: mlflow

    setup_mlflow(settings, pipeline)
    champion = alias_version(mlflow.MlflowClient(), model_name(pipeline), CHAMPION)
    if champion is None:
        raise SettingsError(f"{model_name(pipeline)} has no `champion` alias yet: run the lifecycle before serving it")
    return int(champion.version)


def load_onnx_model(settings: Settings, pipeline: str, model: str, version: int) -> bytes:
    """The serialized ONNX model of a registered version of a pipeline's model."""
    import mlflow.onnx  # heavy: mlflow

    setup_mlflow(settings, pipeline)
    loaded = mlflow.onnx.load_model(f"models:/{model}/{version}")
    return bytes(loaded.SerializeToString())


def audit(settings: Settings, pipeline: str) -> list[dict[str, Any]]:
    with connect(settings) as conn:
        return fetch_dicts(
            conn,
            "SELECT alias, from_version, to_version, actor, run_id, reason, changed_at FROM alias_audit"
            " WHERE pipeline = %s ORDER BY id",
            (pipeline,),
        )
