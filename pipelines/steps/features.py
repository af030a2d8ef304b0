"""`features`: apply the Feast repo, materialize the run's data, build the training set.

1. `apply` the pipeline's Feast objects (entity, source on this run's validated snapshot, views,
   the versioned feature service) to the SQL registry in the platform database;
2. materialize the snapshot's time range into the online store, Postgres (pgvector) or, where
   `MLCYCLE_REDIS_URL` is set, Redis (an explicit range: `materialize_incremental` starts at
   now - TTL and would skip historical data);
3. build a point-in-time correct training set with `get_historical_features` for the feature
   service, from the entity rows (key, event time, label) of the validated snapshot, in chunks of
   `CHUNK_ROWS` entity rows (the join of one entity row never depends on another), so the step
   holds one chunk's training rows at a time, not the window's;
4. split it by time into train, validation and test (oldest to newest; one timestamp never spans
   two splits, so no future leaks into training): the cut points come from the entity rows'
   timestamps, each chunk's rows are appended to their split's Parquet file, and the files are
   uploaded when complete.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import DataQualityError, StepInputError
from pipelines.core.spec import SPLITS, PipelineSpec, Split
from pipelines.io.featurestore import apply_and_materialize, feature_store, historical_table
from pipelines.io.storage import local_file, upload_file, write_json
from pipelines.ml.metrics import class_shares
from pipelines.steps.context import StepContext

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

STEP = "features"
CHUNK_ROWS = 1_000_000
"""Entity rows per point-in-time join: the step's memory is bounded by one chunk's training rows."""


# ----------------------------------------------------------------------------------- pure core
def split_starts(ts: pd.Series, split: Split) -> tuple[Any, Any]:
    """The first timestamps of the validation and the test split. Pure.

    Timestamps are taken oldest first; a timestamp goes to the split in which the middle of its
    rows falls, so all rows of one timestamp share a split and every split is later than the
    previous one. With coarse timestamps (monthly snapshots) the fractions are approximate.
    """
    import numpy as np

    counts = ts.value_counts().sort_index()
    middle = ((counts.cumsum() - counts / 2) / counts.sum()).to_numpy()
    cut1, cut2 = split.train, split.train + split.validation
    names = np.where(middle < cut1, "train", np.where(middle < cut2, "validation", "test"))
    empty = [s for s in SPLITS if not (names == s).any()]
    if empty:
        raise DataQualityError(
            f"too few distinct {ts.name} values ({len(counts)}) to split by time: {empty} would be empty"
        )
    return counts.index[names != "train"][0], counts.index[names == "test"][0]


def assign_split(ts: pd.Series, starts: tuple[Any, Any]) -> pd.Series:
    """Each row's split from its timestamp and the splits' first timestamps. Pure."""
    import numpy as np
    import pandas as pd

    validation, test = starts
    names = np.where(ts < validation, "train", np.where(ts < test, "validation", "test"))
    return pd.Series(names, index=ts.index, dtype=object)


def time_split(df: pd.DataFrame, ts_col: str, split: Split) -> pd.Series:
    """Assign each row to train/validation/test by its timestamp (`split_starts`). Pure."""
    return assign_split(df[ts_col], split_starts(df[ts_col], split))


def entity_chunks(rows: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of at most `size` rows, in order. Pure."""
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


def label_summary(labels: pd.Series, classes: list[str]) -> dict[str, Any]:
    """A split's labels in brief: their mean (`label_rate`: the positive rate of a binary label),
    or each class's share of a multiclass label (every class, in the classes' order). Pure."""
    if not classes:
        return {"label_rate": float(labels.mean())}
    shares = class_shares(labels)
    return {"class_shares": {c: shares.get(c, 0.0) for c in classes}}


def entity_columns(spec: PipelineSpec) -> list[str]:
    """The columns of the entity rows: key, event time and label. Pure."""
    return [spec.entity.join_key, spec.entity.timestamp, spec.label.column]


def entity_rows(df: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """The entity dataframe for `get_historical_features`: key, event time and label."""
    return df[entity_columns(spec)].copy()


# ------------------------------------------------------------------------------------------ I/O
class SplitFiles:
    """The train, validation and test sets written a chunk at a time: a Parquet file each in a
    folder (one schema for all: the first chunk's), with each split's rows, time range and labels."""

    def __init__(self, folder: Path, ts: str, label: str) -> None:
        self.folder, self.ts, self.label = folder, ts, label
        self.schema: Any = None
        self.writers: dict[str, Any] = {}
        self.rows = dict.fromkeys(SPLITS, 0)
        self.range: dict[str, list[Any]] = {}
        self.labels: dict[str, list[pd.Series]] = {name: [] for name in SPLITS}

    def add(self, name: str, table: pa.Table) -> None:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if not table.num_rows:
            return
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        if name not in self.writers:
            self.writers[name] = pq.ParquetWriter(self.folder / f"{name}.parquet", self.schema, compression="zstd")
        self.writers[name].write_table(table)
        self.rows[name] += table.num_rows
        bounds = pc.min_max(table.column(self.ts))
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        seen = self.range.get(name)
        self.range[name] = [low, high] if seen is None else [min(seen[0], low), max(seen[1], high)]
        self.labels[name].append(table.column(self.label).to_pandas())

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


# ----------------------------------------------------------------------------------------- step
def run(ctx: StepContext) -> dict[str, Any]:
    import pandas as pd
    import pyarrow as pa

    validation = ctx.manifest("validate")
    if not validation.get("passed"):
        raise StepInputError(f"{ctx.pipeline}/{ctx.run_id}: validation did not pass; no features from rejected data")
    validated_key = ctx.require("validate", "validated.parquet")
    spec = ctx.spec
    key, ts = spec.entity.join_key, spec.entity.timestamp
    with local_file(ctx.storage, validated_key) as path, tempfile.TemporaryDirectory(prefix="mlcycle-splits-") as tmp:
        # the entity rows only (key, event time, label), oldest first: each chunk a range of them
        entities = pd.read_parquet(path, columns=entity_columns(spec))
        entities = entities.sort_values([ts, key], kind="stable").reset_index(drop=True)
        # cut points at the microseconds DuckDB's timestamps keep, so a row never crosses one
        starts = split_starts(entities[ts].dt.floor("us"), spec.features.split)
        out = SplitFiles(Path(tmp), ts, spec.label.column)
        chunks = entity_chunks(len(entities), CHUNK_ROWS)
        try:
            with feature_store(spec, ctx.settings) as store:
                apply_and_materialize(store, spec, str(path), entities[ts].min(), entities[ts].max())
                for start, stop in chunks:
                    part = historical_table(store, spec, entities.iloc[start:stop])
                    part = part.sort_by([(ts, "ascending"), (key, "ascending")])
                    assigned = assign_split(part.column(ts).to_pandas(), starts).to_numpy()
                    for name in SPLITS:
                        out.add(name, part.filter(pa.array(assigned == name)))
        finally:
            out.close()
        empty = [name for name in SPLITS if not out.rows[name]]
        if empty:
            raise DataQualityError(f"{empty} have no rows after the point-in-time join")
        manifest = features_manifest(ctx, spec, validation, validated_key, len(entities), out)
        manifest["chunks"] = len(chunks)
        for name in SPLITS:
            manifest["splits"][name]["uri"] = upload_file(
                ctx.storage, ctx.key(f"{name}.parquet"), Path(tmp) / f"{name}.parquet"
            )
    write_json(ctx.storage, ctx.key("manifest.json"), manifest)
    return manifest


def features_manifest(
    ctx: StepContext, spec: PipelineSpec, validation: dict[str, Any], validated_key: str, entities: int, out: SplitFiles
) -> dict[str, Any]:
    """What the step made: the service, the source, the rows and each split's rows, time range and labels."""
    import pandas as pd

    answered = sum(out.rows.values())
    manifest: dict[str, Any] = {
        "step": STEP,
        "feature_service": spec.features.feature_service,
        "features": spec.features.feature_names,
        "label": spec.label.column,
        "feast_project": spec.name,
        "source": ctx.storage.uri(validated_key),
        "content_hash": validation["content_hash"],
        "entity_rows": entities,
        # each entity row is a row of the snapshot every view reads, so a view always answers it
        "dropped_entity_rows": entities - answered,
        "splits": {},
    }
    for name in SPLITS:
        labels = pd.concat(out.labels[name], ignore_index=True)
        low, high = out.range[name]
        manifest["splits"][name] = {
            "rows": out.rows[name],
            "time_range": [str(low), str(high)],
            **label_summary(labels, spec.classes),
        }
    # the metric the rest of the run is judged by (pr_auc for a rare positive class, unless the spec names one)
    train_rate = manifest["splits"]["train"].get("label_rate")
    manifest["primary_metric"] = spec.evaluation.for_positive_rate(
        spec.label.kind, train_rate, spec.training.imbalance_rate
    ).primary_metric
    return manifest
