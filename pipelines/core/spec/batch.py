"""Batch predictions: which entities the champion scores on a schedule, as of when, and where the
predictions land (`<name>_batch`, see docs/batch.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipelines.core.spec.base import Model
from pipelines.core.spec.sources import DatasetSource, FileSource, PostgresSource, S3Source, SyntheticSource


class OfflineStoreEntities(Model):
    """Every entity the pipeline's Feast offline store knows as of the run (the snapshot the last
    features step applied), each scored once."""

    kind: Literal["offline_store"] = Field(
        description="`offline_store`: every entity the feature store's offline source holds up to as_of"
    )


BatchEntities = Annotated[
    FileSource | S3Source | PostgresSource | SyntheticSource | DatasetSource | OfflineStoreEntities,
    Field(discriminator="kind"),
]


class BatchOutputs(Model):
    """Where a batch run's predictions are written (at least one)."""

    table: bool = Field(
        default=True,
        description="rows of the platform database's `batch_predictions` table (read the newest published run "
        "through the view `<name>_predictions_latest`)",
    )
    parquet: bool = Field(
        default=False, description="Parquet files `batch/part-<n>.parquet` under the run's artifact prefix"
    )

    @model_validator(mode="after")
    def _one(self) -> BatchOutputs:
        if not (self.table or self.parquet):
            raise ValueError("a batch run needs an output: table, parquet or both")
        return self


class Batch(Model):
    """Batch predictions: the champion scores the entities in partitions, then the run is published."""

    schedule: str | None = Field(
        default=None,
        description="a cron expression or Airflow preset (`@daily`) that starts `<name>_batch`; default: only by hand",
    )
    entities: BatchEntities = Field(
        default=OfflineStoreEntities(kind="offline_store"),
        description="the rows to score: a source read as ingest reads one (file, s3, postgres, synthetic, "
        "dataset; the window ends at as_of; the newest row of each entity is scored), or `{kind: "
        "offline_store}`: every entity the offline store knows; features the rows do not carry are looked up "
        "point-in-time at as_of in the offline store",
    )
    as_of: datetime | None = Field(
        default=None,
        description="the instant the features are read as of (ISO 8601); default: the run's logical time (its "
        "data interval end, or the form's `as_of`)",
    )
    outputs: BatchOutputs = Field(default=BatchOutputs(), description="where the predictions are written")
    parallelism: int = Field(
        default=1,
        ge=1,
        le=64,
        description="partitions scored as parallel tasks (entities split by a hash of their id); with `runtime: "
        "ray`, the Ray Data actors that score at once",
    )
    runtime: Literal["pods", "ray"] = Field(
        default="pods",
        description="`pods`: each partition a task of its own (a pod on Kubernetes, a process on one machine); "
        "`ray`: one task submits the scoring as a Ray Data job to the platform's Ray cluster "
        "(`MLCYCLE_RAY_ADDRESS`) and writes what it streams back",
    )
    chunk_rows: int = Field(
        default=50_000,
        ge=100,
        le=5_000_000,
        description="rows a partition reads, judges and scores at a time (its memory holds one chunk)",
    )
