"""Where a pipeline's data comes from: one source kind per class, a discriminated union on `kind`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from pipelines.core.spec.base import Model
from pipelines.core.window import query_params, template_fields


class SourceBase(Model):
    """What every source kind shares: which time window a run reads, and whether the platform's
    own labelled traffic joins it.

    A run reads up to its `as_of` instant (see `pipelines.core.window`); `lookback_days` bounds
    how far back. Rows are kept by the entity timestamp, so a run never sees data from after its
    own time, and a run of next month reads next month's data."""

    lookback_days: float | None = Field(default=None, gt=0, description="read at most this many days before as_of")
    feedback: bool = Field(
        default=False,
        description="add the served predictions that got a label (request log joined with labels) in the window, "
        "with the features exactly as they were served",
    )


def _check_template(value: str) -> str:
    template_fields(value)
    return value


class FilesBase(SourceBase):
    """What file and object sources share: the format and, for CSV, the field separator."""

    format: Literal["csv", "parquet"] | None = Field(default=None, description="default: from the file's suffix")
    delimiter: str = Field(
        default=",", min_length=1, max_length=1, description="CSV's field separator (e.g. ';' or a tab)"
    )


class FileSource(FilesBase):
    """A CSV or Parquet file on the local disk, or a directory of them (rows kept by the entity
    timestamp). The path may name the window: `data/churn/dt={as_of:%Y-%m-%d}.parquet`."""

    kind: Literal["file"]
    path: str

    _template = field_validator("path")(_check_template)


class S3Source(FilesBase):
    """A CSV or Parquet object in S3, or every such object under a prefix ending in `/` (endpoint
    and credentials come from the settings). The URI may name the window:
    `s3://bucket/churn/dt={as_of:%Y-%m-%d}/`."""

    kind: Literal["s3"]
    uri: str = Field(pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+")

    _template = field_validator("uri")(_check_template)


class PostgresSource(SourceBase):
    """A SQL query against PostgreSQL.

    The query may bind the window as parameters, `%(start)s`, `%(end)s` and `%(as_of)s` (never
    formatted into the text): `SELECT * FROM snapshots WHERE ts > %(start)s AND ts <= %(end)s`.
    The connection URL is read from the environment variable `url_env`, so no secret lives in a
    spec; when unset the platform database is used.
    """

    kind: Literal["postgres"]
    query: str = Field(min_length=1)
    url_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")

    @field_validator("query")
    @classmethod
    def _params(cls, v: str) -> str:
        query_params(v)
        return v


class SyntheticSource(SourceBase):
    """The bundled churn generator: deterministic data for demos, tests and benchmarks. Its months
    run from `start` (`auto`: the `months` that end with the last full month, by the calendar); a
    run reads those up to its as_of, and the injected drifts ramp in from `drift_from_month` over
    `drift_ramp_months` (default: over the second half of the range)."""

    kind: Literal["synthetic"]
    customers: int = Field(default=2000, ge=10, le=5_000_000)
    months: int = Field(default=12, ge=2, le=120)
    seed: int = 7
    start: str = Field(default="2025-01-01", pattern=r"^(\d{4}-\d{2}-\d{2}|auto)$")
    covariate_drift: float = Field(default=0.0, ge=0.0, le=1.0)
    concept_drift: float = Field(default=0.0, ge=0.0, le=1.0)
    drift_from_month: int | None = Field(default=None, ge=0)
    drift_ramp_months: int | None = Field(default=None, ge=1)
    fault_rate: float = Field(default=0.0, ge=0.0, le=0.5)


class DatasetSource(SourceBase):
    """An example dataset that ships inside an installed package, no download
    (`pipelines.ml.datasets`): `diabetes` (regression, 442 rows) or `wine` (multiclass, 178 rows),
    dated over the `months` that end at `end` (`auto`: today)."""

    kind: Literal["dataset"]
    name: Literal["diabetes", "wine"]
    months: int = Field(default=6, ge=1, le=120)
    seed: int = 7
    end: str = Field(default="auto", pattern=r"^(\d{4}-\d{2}-\d{2}|auto)$")


Source = Annotated[
    FileSource | S3Source | PostgresSource | SyntheticSource | DatasetSource, Field(discriminator="kind")
]
