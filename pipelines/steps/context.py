"""What every step receives: the spec, the settings, the run and the storage, built once per step."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipelines.core.errors import InvalidArgument, StepInputError
from pipelines.core.params import RunParams
from pipelines.core.settings import Settings
from pipelines.core.spec import PipelineSpec
from pipelines.io.storage import Storage, read_json, run_key

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,249}$")


def check_run_id(run_id: str) -> str:
    """Airflow's run ids (`manual__2026-01-01T00:00:00+00:00`) and simple names pass. Pure."""
    if not RUN_ID.match(run_id):
        raise InvalidArgument(f"invalid run id {run_id!r}: 1-250 characters of letters, digits and _ . : + -")
    return run_id


@dataclass(frozen=True)
class StepContext:
    """One step of one run of one pipeline."""

    spec: PipelineSpec
    settings: Settings
    run_id: str
    storage: Storage
    step: str
    force: bool = False
    """Redo the step even where its outputs exist (`mlcycle step --force`)."""
    params: RunParams | None = None
    """The run's parameters (the trigger form's or `conf`'s), where it has any."""
    worker: int | None = None
    """Which of the run's trial workers this is (`mlcycle step trials --worker K`)."""

    @property
    def pipeline(self) -> str:
        return self.spec.name

    def key(self, name: str, step: str | None = None) -> str:
        """The storage key of an artifact of this step (or of an earlier step of this run)."""
        return run_key(self.pipeline, self.run_id, step or self.step, name)

    def require(self, step: str, name: str) -> str:
        """The key of an earlier step's output, or a clear error when that step has not run."""
        key = self.key(name, step)
        if not self.storage.exists(key):
            raise StepInputError(
                f"{self.pipeline}/{self.run_id}: '{step}' has no {name}; "
                f"run `mlcycle step {step} --pipeline {self.pipeline} --run-id {self.run_id}` first"
            )
        return key

    def manifest(self, step: str) -> dict[str, Any]:
        """The manifest an earlier step of this run wrote."""
        data: dict[str, Any] = read_json(self.storage, self.require(step, "manifest.json"))
        return data

    @property
    def dry_run(self) -> bool:
        """Whether this run was triggered as a dry run (register and serve nothing)."""
        return bool(self.params and self.params.dry_run)
