"""Batch predictions' I/O: the entities to score, their point-in-time features from Feast's
offline store, and the platform database's `batch_predictions` / `batch_runs` (migration 0022)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import SourceDataError, StepInputError
from pipelines.core.settings import Settings
from pipelines.core.spec import OfflineStoreEntities, PipelineSpec
from pipelines.io import db
from pipelines.io.featurestore import feature_store, historical_features
from pipelines.io.sources.readers import read_source

if TYPE_CHECKING:
    import pandas as pd

TABLE_COLUMNS = ("entity_id", "score", "class", "probabilities")
"""A scored partition's frame: the entity id (text) and the endpoint's answer."""


def latest_rows(df: pd.DataFrame, key: str, ts: str, as_of: datetime, since: datetime | None = None) -> pd.DataFrame:
    """The newest row of each entity at or before `as_of` (and after `since`, where given); every
    row where there is no `ts` column: then each entity's last. The frame is copied once, by
    position (a copy of its text columns per filter was most of the time on a million rows). Pure."""
    import numpy as np
    import pandas as pd

    if ts not in df.columns:
        return df.drop_duplicates(key, keep="last").reset_index(drop=True)
    moments = pd.to_datetime(df[ts], utc=True)
    keep = (moments <= pd.Timestamp(as_of)).to_numpy()
    if since is not None:
        keep &= (moments > pd.Timestamp(since)).to_numpy()
    positions = np.flatnonzero(keep)
    instants = moments.to_numpy(dtype="datetime64[ns]")  # not Timestamp objects
    kept = pd.DataFrame({"k": df[key].to_numpy()[positions], "t": instants[positions], "p": positions})
    if not kept["k"].is_unique:
        kept = kept.sort_values("t", kind="stable").drop_duplicates("k", keep="last").sort_values("p")
    out = df.take(kept["p"].to_numpy())
    out.index = pd.RangeIndex(len(out))
    return out


def offline_snapshot(store: Any, spec: PipelineSpec) -> str:
    """The file the offline store's source reads (the snapshot the last features step applied)."""
    try:
        path = str(store.get_data_source(f"{spec.name}_snapshot_source").path)
    except Exception as err:  # feast raises its own not-found errors
        raise StepInputError(f"{spec.name}: the feature store has no source yet; run the lifecycle first") from err
    if "://" in path and not path.startswith("file://"):
        return path
    if not Path(path.removeprefix("file://")).exists():
        raise StepInputError(
            f"{spec.name}: the offline store's snapshot {path} is not readable here; run the features step again"
        )
    return path


def read_entities(spec: PipelineSpec, settings: Settings, as_of: datetime) -> pd.DataFrame:
    """The rows to score, one per entity: the batch's source (read as ingest reads one; the newest
    row of each entity at or before `as_of`), or the ids of every entity the offline store can
    answer for at `as_of` (a row within the longest view's TTL), its features left to Feast."""
    import pandas as pd

    key, ts = spec.entity.join_key, spec.entity.timestamp
    entities = spec.batch.entities if spec.batch is not None else OfflineStoreEntities(kind="offline_store")
    if isinstance(entities, OfflineStoreEntities):
        with feature_store(spec, settings) as store:
            df = pd.read_parquet(offline_snapshot(store, spec), columns=[key, ts])
        since: datetime | None = as_of - timedelta(days=max(v.ttl_days for v in spec.features.views))
    else:
        df = read_source(entities, settings)
        since = as_of - timedelta(days=entities.lookback_days) if entities.lookback_days is not None else None
    if key not in df.columns:
        raise SourceDataError(f"{spec.name}: the batch's entities have no column '{key}' (entity.join_key)")
    rows = latest_rows(df, key, ts, as_of, since)
    if isinstance(entities, OfflineStoreEntities):
        rows = rows[[key]]
    if rows.empty:
        raise SourceDataError(f"{spec.name}: no entity to score at or before {as_of.isoformat()}")
    return rows


def offline_features(spec: PipelineSpec, settings: Settings, ids: Sequence[Any], as_of: datetime) -> pd.DataFrame:
    """The feature service's features of the entities point-in-time at `as_of` (Feast's
    `get_historical_features`, as the features step builds the training set), one row per entity
    the views answer within their TTL."""
    import pandas as pd

    key, ts = spec.entity.join_key, spec.entity.timestamp
    entity_df = pd.DataFrame({key: list(ids), ts: pd.Timestamp(as_of)})
    with feature_store(spec, settings) as store:
        out = historical_features(store, spec, entity_df)
    return out.drop(columns=[ts]).drop_duplicates(key, keep="last")


def write_partition(
    settings: Settings, pipeline: str, run_id: str, partition: int, meta: dict[str, Any], scored: pd.DataFrame
) -> None:
    """Replace a partition's rows in one transaction: its earlier attempt's rows are deleted, the
    new ones copied in; readers see the old rows or the new, never both."""
    with db.connect(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM batch_predictions WHERE pipeline=%s AND run_id=%s AND partition=%s",
            (pipeline, run_id, partition),
        )
        with cur.copy(
            "COPY batch_predictions (pipeline, run_id, partition, entity_id, as_of, version, score, class,"
            " probabilities) FROM STDIN"
        ) as copy:
            head = (pipeline, run_id, partition)
            for eid, score, cls, probs in scored[list(TABLE_COLUMNS)].itertuples(index=False, name=None):
                copy.write_row((*head, eid, meta["as_of"], meta["version"], score, cls, probs))


def latest_view(pipeline: str) -> str:
    """The view of a pipeline's newest published batch run. Pure."""
    return f"{pipeline}_predictions_latest"


def publish(settings: Settings, summary: dict[str, Any], view: bool) -> None:
    """Record a batch run's summary and publish it: one transaction, so the latest view flips from
    the previous run to this one at its commit."""
    from psycopg import sql

    p = summary["pipeline"]
    with db.connect(settings) as conn:
        conn.execute(
            "INSERT INTO batch_runs (pipeline, run_id, version, as_of, partitions, rows_scored, rows_quarantined,"
            " seconds, outputs, published_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp())"
            " ON CONFLICT (pipeline, run_id) DO UPDATE SET version=EXCLUDED.version, as_of=EXCLUDED.as_of,"
            " partitions=EXCLUDED.partitions, rows_scored=EXCLUDED.rows_scored,"
            " rows_quarantined=EXCLUDED.rows_quarantined, seconds=EXCLUDED.seconds, outputs=EXCLUDED.outputs,"
            " published_at=EXCLUDED.published_at",
            (
                p,
                summary["run_id"],
                summary["version"],
                summary["as_of"],
                summary["partitions"],
                summary["rows_scored"],
                summary["rows_quarantined"],
                summary["seconds"],
                json.dumps(summary["outputs"]),
            ),
        )
        if view:
            conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE VIEW {view} AS SELECT p.entity_id, p.as_of, p.version, p.score, p.class,"
                    " p.probabilities, p.run_id, p.partition, p.scored_at FROM batch_predictions p"
                    " WHERE p.pipeline = {p} AND p.run_id = (SELECT r.run_id FROM batch_runs r"
                    " WHERE r.pipeline = {p} AND r.published_at IS NOT NULL"
                    " ORDER BY r.published_at DESC, r.run_id DESC LIMIT 1)"
                ).format(view=sql.Identifier(latest_view(p)), p=sql.Literal(p))
            )


def batch_runs(settings: Settings, pipeline: str, limit: int = 20) -> list[dict[str, Any]]:
    """A pipeline's published batch runs, newest first."""
    with db.connect(settings) as conn:
        return db.fetch_dicts(
            conn,
            "SELECT run_id, version, as_of, partitions, rows_scored, rows_quarantined, seconds, outputs, published_at"
            " FROM batch_runs WHERE pipeline=%s ORDER BY published_at DESC NULLS LAST LIMIT %s",
            (pipeline, limit),
        )


def render_batch_runs(pipeline: str, runs: list[dict[str, Any]]) -> str:
    """`mlcycle batch show`: a pipeline's published batch runs, newest first, one line each. Pure."""
    if not runs:
        return f"no published batch runs of {pipeline} yet"
    lines = [f"{pipeline}: batch runs, newest first ({latest_view(pipeline)} shows the first)"]
    for r in runs:
        outputs = r["outputs"] or {}
        where = ", ".join(sorted(k if k != "view" else f"view {v}" for k, v in outputs.items()))
        lines.append(
            f"  {r['run_id']}  v{r['version']}  as_of {r['as_of']:%Y-%m-%d %H:%M}  {r['rows_scored']} scored"
            f"  {r['rows_quarantined']} quarantined  {r['partitions']} partition(s)  {r['seconds']:.1f} s"
            f"  published {r['published_at']:%Y-%m-%d %H:%M:%S}  -> {where}"
        )
    return "\n".join(lines)
