"""Run parameters: what a user may change for one run of `<name>_lifecycle` from Airflow's
"Trigger DAG" form (or the REST API's `conf`), without editing the spec.

Airflow validates them against the DAG's `params` before the run starts; the operator adds what
the run itself says (`run_params`: its `as_of` instant, what triggered it, and for a drift-triggered
run the drift check's findings from the Asset event), hands them to every step pod as
`MLCYCLE_RUN_PARAMS` (JSON), and the runner applies them to the spec here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import Settings
from pipelines.core.spec import PipelineSpec
from pipelines.core.uris import allowed_prefixes, uri_pattern

ENV = "MLCYCLE_RUN_PARAMS"


class RunParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source_uri: str | None = Field(
        default=None, description="read this CSV/Parquet file or s3:// object instead of the spec's source"
    )
    n_trials: int | None = Field(default=None, ge=1, le=10_000, description="the Optuna trial budget of this run")
    dry_run: bool = Field(default=False, description="train and evaluate, but register and serve nothing")
    as_of: datetime | None = Field(
        default=None,
        description="read the data up to this instant (ISO 8601); default: the run's own time "
        "(its data interval end, or the drift event's time)",
    )
    trigger: Literal["manual", "scheduled", "asset"] | None = Field(
        default=None, description="what started the run (set by the operator)"
    )
    cause: dict[str, Any] | None = Field(
        default=None, description="why a drift-triggered run retrains: the drift check's findings (set by the operator)"
    )

    @field_validator("source_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
            raise ValueError("a .csv or .parquet file path or s3:// URI")
        return v or None


SOURCE_URI_PATTERN = r"\.([cC][sS][vV](\.[gG][zZ])?|[pP][aA][rR][qQ][uU][eE][tT]|[pP][qQ])$"
"""What `RunParams.source_uri` accepts, as the form's JSON-schema pattern (no flags there)."""


def airflow_params(spec: PipelineSpec | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """The lifecycle DAG's `params` (Airflow validates them against these JSON schemas). The form's
    labels are the parameter names (what `conf`, `mlcycle run --conf` and the docs say), and with a
    spec, the defaults are the spec's own (the trial budget shows 12, not an empty field); with the
    settings too, `source_uri` takes only the prefixes the pipeline allows (`pipelines.core.uris`),
    which its description lists."""
    from airflow.sdk import Param

    fields = RunParams.model_fields
    source = f" (default: the spec's {spec.source.kind} source)" if spec else ""
    pattern = SOURCE_URI_PATTERN
    if spec is not None and settings is not None:
        prefixes = allowed_prefixes(spec.source, settings, spec.name)
        pattern = uri_pattern(prefixes, settings, SOURCE_URI_PATTERN)
        source += f"; only under {', '.join(prefixes)}"
    return {
        "source_uri": Param(
            None,
            type=["null", "string"],
            pattern=pattern,
            title="source_uri",
            description=f"{fields['source_uri'].description}{source}",
        ),
        "n_trials": Param(
            spec.training.n_trials if spec else None,
            type=["null", "integer"],
            minimum=1,
            maximum=10_000,
            title="n_trials",
            description=fields["n_trials"].description,
        ),
        "dry_run": Param(False, type="boolean", title="dry_run", description=fields["dry_run"].description),
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="as_of",
            description=fields["as_of"].description,
        ),
    }


FORM = ("source_uri", "n_trials", "dry_run", "as_of")
"""What a user may set for a run; `trigger` and `cause` come from the run itself."""
TRIGGERS = {"manual": "manual", "scheduled": "scheduled", "asset_triggered": "asset", "backfill": "scheduled"}


def enum_name(value: object) -> str:
    """An Airflow enum's member as its lower-case name, given the member or its text
    (`DagRunType.MANUAL`, `manual`, `DagRunTriggeredByType.UI` -> `manual`, `manual`, `ui`). Pure."""
    return str(value).split(".")[-1].lower()


def run_params(
    given: Mapping[str, Any],
    run_type: str,
    data_interval_end: datetime | None,
    run_after: datetime,
    events: Iterable[tuple[datetime, Mapping[str, Any]]] = (),
) -> dict[str, Any]:
    """The run parameters every step pod gets: the form's (or `conf`'s) values, what started the
    run, its `as_of` and, for an Asset-triggered run, the newest event's findings. Pure.

    as_of: the form's value, else the newest triggering event's time (a drift-triggered run reads
    up to the moment the drift was found), else the data interval end (scheduled), else the time
    the run was due (manual). Every attempt of every step of one run gets the same value."""
    params = {k: v for k, v in given.items() if k in FORM and v is not None}
    params["trigger"] = TRIGGERS.get(enum_name(run_type), "manual")
    newest = max(events, key=lambda e: e[0], default=None)
    if newest is not None and params["trigger"] == "asset":
        params["cause"] = dict(newest[1])
    if not params.get("as_of"):
        moment = newest[0] if newest is not None else (data_interval_end or run_after)
        params["as_of"] = moment.isoformat()
    elif isinstance(params["as_of"], datetime):
        params["as_of"] = params["as_of"].isoformat()
    return params


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
        keep = {
            "lookback_days": spec.source.lookback_days,
            "feedback": spec.source.feedback,
            "allowed_uris": spec.source.allowed_uris,
        }
        update["source"] = {"kind": kind, key: params.source_uri, **keep}
    if params.n_trials is not None:
        update["training"] = {**spec.training.model_dump(), "n_trials": params.n_trials}
    if not update:
        return spec
    try:
        # what the document set, not every default: a default chosen later (the primary metric of a
        # rare positive class, `Evaluation.for_positive_rate`) must still read as unset
        return PipelineSpec.model_validate({**spec.model_dump(exclude_unset=True), **update})
    except ValidationError as err:
        raise InvalidArgument(f"run parameters: {err}") from None
