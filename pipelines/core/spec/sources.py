"""Where a pipeline's data comes from: one source kind per class, a discriminated union on `kind`."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from pipelines.core.spec.base import Model
from pipelines.core.sql import query_problem
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
    allowed_uris: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="more folders (local: absolute or from the project dir) and `s3://bucket/prefix/` prefixes a run's "
        "`source_uri` may read from, besides the spec's own source folder and `<state dir>/data`; never the "
        "artifact root",
    )

    @field_validator("allowed_uris")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        for prefix in v:
            if not prefix or "{" in prefix or ".." in prefix.split("/"):
                raise ValueError(f"{prefix!r}: a folder or s3:// prefix, without `..` or window fields")
            if prefix.startswith("s3://") and not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/", prefix):
                raise ValueError(f"{prefix!r}: an s3:// prefix is `s3://bucket/` and a key prefix")
        return v


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

    kind: Literal["file"] = Field(
        description="`file`: a CSV or Parquet file, or a directory of them, on the local disk"
    )
    path: str = Field(
        description="the file or directory, relative to where the step runs or absolute; may name the window: "
        "`{as_of:%Y-%m-%d}`"
    )

    _template = field_validator("path")(_check_template)


class S3Source(FilesBase):
    """A CSV or Parquet object in S3, or every such object under a prefix ending in `/` (endpoint
    and credentials come from the settings). The URI may name the window:
    `s3://bucket/churn/dt={as_of:%Y-%m-%d}/`."""

    kind: Literal["s3"] = Field(description="`s3`: an object, or every object under a prefix, in S3")
    uri: str = Field(
        pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+",
        description="`s3://bucket/key`, or a prefix ending in `/` for every CSV or Parquet object under it; may "
        "name the window: `{as_of:%Y-%m-%d}`",
    )

    _template = field_validator("uri")(_check_template)


class PostgresSource(SourceBase):
    """A SQL query against PostgreSQL.

    The query may bind the window as parameters, `%(start)s`, `%(end)s` and `%(as_of)s` (never
    formatted into the text): `SELECT * FROM snapshots WHERE ts > %(start)s AND ts <= %(end)s`.
    The connection URL is read from the environment variable `url_env`, so no secret lives in a
    spec; when unset the platform database is read as its read-only role `mlcycle_source` (or
    `MLCYCLE_SOURCE_DATABASE_URL`), never as the platform's own user. The query is one read statement
    (`pipelines.core.sql`), run through the extended protocol in a READ ONLY transaction.
    """

    kind: Literal["postgres"] = Field(description="`postgres`: the rows a SQL query returns")
    query: str = Field(
        min_length=1,
        description="the SQL query, one read statement (SELECT, WITH, VALUES, TABLE); binds the window as "
        "`%(start)s`, `%(end)s`, `%(as_of)s` (never formatted in)",
    )
    url_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="the environment variable holding the connection URL (no secret in the spec); "
        "default: the platform database, as its read-only role `mlcycle_source`",
    )

    @field_validator("query")
    @classmethod
    def _params(cls, v: str) -> str:
        problem = query_problem(v)
        if problem:
            raise ValueError(problem)
        query_params(v)
        return v


class SyntheticSource(SourceBase):
    """The bundled churn generator: deterministic data for demos, tests and benchmarks. Its months
    run from `start` (`auto`: the `months` that end with the last full month, by the calendar); a
    run reads those up to its as_of, and the injected drifts ramp in from `drift_from_month` over
    `drift_ramp_months` (default: over the second half of the range)."""

    kind: Literal["synthetic"] = Field(description="`synthetic`: the bundled churn generator")
    customers: int = Field(
        default=2000, ge=10, le=5_000_000, description="customers active in the first month (new ones join monthly)"
    )
    months: int = Field(default=12, ge=2, le=120, description="months of data, one row per active customer per month")
    seed: int = Field(default=7, description="the generator's random seed: the same options give the same rows")
    start: str = Field(
        default="2025-01-01",
        pattern=r"^(\d{4}-\d{2}-\d{2}|auto)$",
        description="the first month (YYYY-MM-DD), or `auto`: the `months` that end with the last full month",
    )
    covariate_drift: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="0..1: how far the features' distribution moves (activity falls, support calls rise, the "
        "plan mix shifts, a new region appears); 0: none",
    )
    concept_drift: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="0..1: how far the features' relationship to churn changes (the features stay); 0: none",
    )
    drift_from_month: int | None = Field(
        default=None, ge=0, description="the month (0: the first) the drifts start from; default: the range's middle"
    )
    drift_ramp_months: int | None = Field(
        default=None, ge=1, description="months over which the drifts ramp to full strength; default: to the end"
    )
    fault_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="the share of rows with a data-quality fault (null, out of range, unknown category, text in a "
        "number, duplicated key), for the validate step to catch; 0: none",
    )


class DatasetSource(SourceBase):
    """An example dataset that ships inside an installed package, no download
    (`pipelines.ml.datasets`): `diabetes` (regression, 442 rows) or `wine` (multiclass, 178 rows),
    dated over the `months` that end at `end` (`auto`: today)."""

    kind: Literal["dataset"] = Field(description="`dataset`: an example dataset bundled with an installed package")
    name: Literal["diabetes", "wine"] = Field(
        description="`diabetes` (regression, 442 rows) or `wine` (multiclass, 178 rows)"
    )
    months: int = Field(default=6, ge=1, le=120, description="months the rows are dated over, evenly")
    seed: int = Field(default=7, description="fixes the rows' order in time (so a split by time is a random split)")
    end: str = Field(
        default="auto",
        pattern=r"^(\d{4}-\d{2}-\d{2}|auto)$",
        description="the date the months end at (YYYY-MM-DD), or `auto`: today",
    )


Source = Annotated[
    FileSource | S3Source | PostgresSource | SyntheticSource | DatasetSource, Field(discriminator="kind")
]
