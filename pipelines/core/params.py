"""Run parameters: what a user may change for one run of `<name>_lifecycle` from Airflow's
"Trigger DAG" form (or the REST API's `conf`), without editing the spec.

Airflow validates them against the DAG's `params` before the run starts; the operator hands them
to every step pod as `MLCYCLE_RUN_PARAMS` (JSON), and the runner applies them to the spec here.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.core.errors import InvalidArgument
from pipelines.core.spec import PipelineSpec

ENV = "MLCYCLE_RUN_PARAMS"


class RunParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source_uri: str | None = Field(
        default=None, description="read this CSV/Parquet file or s3:// object instead of the spec's source"
    )
    n_trials: int | None = Field(default=None, ge=1, le=10_000, description="the Optuna trial budget of this run")
    dry_run: bool = Field(default=False, description="train and evaluate, but register and serve nothing")

    @field_validator("source_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
            raise ValueError("a .csv or .parquet file path or s3:// URI")
        return v or None


def airflow_params() -> dict[str, Any]:
    """The lifecycle DAG's `params` (Airflow validates them against these JSON schemas)."""
    from airflow.sdk import Param

    fields = RunParams.model_fields
    return {
        "source_uri": Param(
            None, type=["null", "string"], title="Data source override", description=fields["source_uri"].description
        ),
        "n_trials": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=10_000,
            title="Trial budget",
            description=fields["n_trials"].description,
        ),
        "dry_run": Param(False, type="boolean", title="Dry run", description=fields["dry_run"].description),
    }


def from_env(environ: dict[str, str]) -> RunParams:
    raw = environ.get(ENV)
    if not raw:
        return RunParams()
    try:
        data = json.loads(raw)
        return RunParams.model_validate({k: v for k, v in data.items() if v is not None})
    except (ValueError, ValidationError) as err:
        raise InvalidArgument(f"{ENV}: {err}") from None


def apply(spec: PipelineSpec, params: RunParams) -> PipelineSpec:
    """The spec of this run. Pure."""
    update: dict[str, Any] = {}
    if params.source_uri:
        kind = "s3" if params.source_uri.startswith("s3://") else "file"
        key = "uri" if kind == "s3" else "path"
        update["source"] = {"kind": kind, key: params.source_uri}
    if params.n_trials is not None:
        update["training"] = {**spec.training.model_dump(), "n_trials": params.n_trials}
    if not update:
        return spec
    try:
        return PipelineSpec.model_validate({**spec.model_dump(), **update})
    except ValidationError as err:
        raise InvalidArgument(f"run parameters: {err}") from None
