"""`features`: apply the Feast repo, materialize the run's data, build the training set.

1. `apply` the pipeline's Feast objects (entity, source on this run's validated snapshot, views,
   the versioned feature service) to the SQL registry in the platform database;
2. materialize the snapshot's time range into the online store, Postgres (pgvector) or, where
   `MLCYCLE_REDIS_URL` is set, Redis (an explicit range: `materialize_incremental` starts at
   now - TTL and would skip historical data);
3. build a point-in-time correct training set with `get_historical_features` for the feature
   service, from the entity rows (key, event time, label) of the validated snapshot;
4. split it by time into train, validation and test (oldest to newest; one timestamp never spans
   two splits, so no future leaks into training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.core.errors import DataQualityError, StepInputError
from pipelines.core.spec import SPLITS, PipelineSpec, Split
from pipelines.io.featurestore import apply_and_materialize, feature_store, historical_features, offline_source
from pipelines.io.storage import read_parquet, write_json, write_parquet
from pipelines.ml.metrics import class_shares
from pipelines.steps.context import StepContext

if TYPE_CHECKING:
    import pandas as pd

STEP = "features"


# ----------------------------------------------------------------------------------- pure core
def time_split(df: pd.DataFrame, ts_col: str, split: Split) -> pd.Series:
    """Assign each row to train/validation/test by its timestamp. Pure.

    Timestamps are taken oldest first; a timestamp goes to the split in which the middle of its
    rows falls, so all rows of one timestamp share a split and every split is later than the
    previous one. With coarse timestamps (monthly snapshots) the fractions are approximate.
    """
    import pandas as pd

    counts = df[ts_col].value_counts().sort_index()
    middle = (counts.cumsum() - counts / 2) / counts.sum()
    cut1, cut2 = split.train, split.train + split.validation
    label = pd.Series(
        ["train" if m < cut1 else "validation" if m < cut2 else "test" for m in middle],
        index=counts.index,
    )
    assigned = df[ts_col].map(label)
    empty = [s for s in SPLITS if not (assigned == s).any()]
    if empty:
        raise DataQualityError(
            f"too few distinct {ts_col} values ({len(counts)}) to split by time: {empty} would be empty"
        )
    return assigned


def label_summary(labels: pd.Series, classes: list[str]) -> dict[str, Any]:
    """A split's labels in brief: their mean (`label_rate`: the positive rate of a binary label),
    or each class's share of a multiclass label (every class, in the classes' order). Pure."""
    if not classes:
        return {"label_rate": float(labels.mean())}
    shares = class_shares(labels)
    return {"class_shares": {c: shares.get(c, 0.0) for c in classes}}


def entity_rows(df: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """The entity dataframe for `get_historical_features`: key, event time and label."""
    cols = [spec.entity.join_key, spec.entity.timestamp, spec.label.column]
    return df[cols].copy()


# ----------------------------------------------------------------------------------------- step
def run(ctx: StepContext) -> dict[str, Any]:
    validation = ctx.manifest("validate")
    if not validation.get("passed"):
        raise StepInputError(f"{ctx.pipeline}/{ctx.run_id}: validation did not pass; no features from rejected data")
    validated_key = ctx.require("validate", "validated.parquet")
    df = read_parquet(ctx.storage, validated_key)
    spec = ctx.spec
    entities = entity_rows(df, spec)
    with feature_store(spec, ctx.settings) as store, offline_source(ctx.storage.uri(validated_key), df) as path:
        apply_and_materialize(store, spec, path, df)
        training = historical_features(store, spec, entities)
    ts = spec.entity.timestamp
    training = training.sort_values([ts, spec.entity.join_key], kind="stable").reset_index(drop=True)
    assigned = time_split(training, ts, spec.features.split)
    manifest: dict[str, Any] = {
        "step": STEP,
        "feature_service": spec.features.feature_service,
        "features": spec.features.feature_names,
        "label": spec.label.column,
        "feast_project": spec.name,
        "source": ctx.storage.uri(validated_key),
        "content_hash": validation["content_hash"],
        # entity rows no view answers within its TTL (`historical_features` leaves them out)
        "entity_rows": len(entities),
        "dropped_entity_rows": len(entities) - len(training),
        "splits": {},
    }
    for name in SPLITS:
        part = training[assigned == name].reset_index(drop=True)
        uri = write_parquet(ctx.storage, ctx.key(f"{name}.parquet"), part)
        manifest["splits"][name] = {
            "uri": uri,
            "rows": len(part),
            "time_range": [str(part[ts].min()), str(part[ts].max())],
            **label_summary(part[spec.label.column], spec.classes),
        }
    # the metric the rest of the run is judged by (pr_auc for a rare positive class, unless the spec names one)
    train_rate = manifest["splits"]["train"].get("label_rate")
    manifest["primary_metric"] = spec.evaluation.for_positive_rate(
        spec.label.kind, train_rate, spec.training.imbalance_rate
    ).primary_metric
    write_json(ctx.storage, ctx.key("manifest.json"), manifest)
    return manifest
