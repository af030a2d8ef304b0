"""`ingest`: read the run's window of the source into a run-scoped Parquet snapshot with a manifest.

The window ends at the run's `as_of` (see `pipelines.core.window`) and reaches back
`source.lookback_days`; with `source.feedback`, the labelled served predictions of the window join
the source's rows, with the features exactly as they were served.

Outputs (under `<pipeline>/<run_id>/ingest/`): `snapshot.parquet` and `manifest.json` (content hash,
rows, schema fingerprint, source, window, feedback rows, why the run retrains). The manifest is
written last, so its presence means the snapshot is complete: a retry of the same run and window
reuses it instead of reading the source again, and a run's data never changes under it; another
window reads again.

A scheduled or drift-triggered run whose snapshot is the same data as the pipeline's previous
snapshot stops here (exit 100, skipped): retraining on the data the champion already saw cannot
improve it. A manual run trains anyway.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import StepSkipped
from pipelines.core.settings import spec_for
from pipelines.core.spec import Source
from pipelines.core.window import Window, data_window
from pipelines.io.db import connect
from pipelines.io.requestlog import feedback
from pipelines.io.sources import check_override, feedback_frame, normalize_frame, read_source
from pipelines.io.storage import parquet_bytes, read_json, write_json
from pipelines.steps.context import StepContext

if TYPE_CHECKING:
    import pandas as pd

STEP = "ingest"


# ----------------------------------------------------------------------------------- pure core
def content_hash(df: pd.DataFrame) -> str:
    """A hash of the data itself (values, column names and dtypes), not of a file's bytes."""
    import pandas as pd

    h = hashlib.sha256()
    h.update(json.dumps([[c, str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return "sha256:" + h.hexdigest()


def schema_fingerprint(df: pd.DataFrame) -> str:
    """A short hash of the column names and types, in order."""
    text = json.dumps([[c, str(t)] for c, t in df.dtypes.items()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_manifest(df: pd.DataFrame, source: Source, snapshot_uri: str) -> dict[str, Any]:
    ts_cols = [c for c, t in df.dtypes.items() if "datetime" in str(t)]
    manifest: dict[str, Any] = {
        "step": STEP,
        "snapshot": snapshot_uri,
        "rows": len(df),
        "columns": list(df.columns),
        "content_hash": content_hash(df),
        "schema_fingerprint": schema_fingerprint(df),
        "source": source.model_dump(),
    }
    if ts_cols:
        manifest["time_range"] = {c: [str(df[c].min()), str(df[c].max())] for c in ts_cols}
    return manifest


def run_window(ctx: StepContext) -> Window:
    """This run's window: up to its as_of (now for a step run by hand), `lookback_days` back."""
    as_of = ctx.params.as_of if ctx.params and ctx.params.as_of else datetime.now(UTC)
    return data_window(as_of, ctx.spec.source.lookback_days)


def cause_line(cause: dict[str, Any] | None) -> str | None:
    """ "retraining because: ..." from a drift-triggered run's cause. Pure."""
    if not cause:
        return None
    reasons = "; ".join(cause.get("reasons") or []) or cause.get("status", "?")
    check = f" (drift check {cause['drift_run_id']})" if cause.get("drift_run_id") else ""
    return f"retraining because: {reasons}{check}"


# ----------------------------------------------------------------------------------------- step
def run(ctx: StepContext) -> dict[str, Any]:
    """Snapshot the run's window of the source, or reuse the snapshot a previous attempt of the
    same window completed."""
    manifest_key = ctx.key("manifest.json")
    window = run_window(ctx)
    explicit = bool(ctx.params and ctx.params.as_of)
    if ctx.storage.exists(manifest_key) and not ctx.force:
        manifest: dict[str, Any] = read_json(ctx.storage, manifest_key)
        if not explicit or manifest.get("window") == window.to_dict():
            manifest["reused"] = True
            _require_new_data(ctx, manifest)
            return manifest
    spec = ctx.spec
    if ctx.params and ctx.params.source_uri:  # the run reads another file than the spec's source
        check_override(ctx.params.source_uri, spec_for(ctx.settings, ctx.pipeline), ctx.settings)
    df = read_source(spec.source, ctx.settings, window, spec.entity.timestamp, list(spec.contract.columns))
    served = 0
    if spec.source.feedback:
        import pandas as pd

        records = feedback(ctx.settings, ctx.pipeline, window.start, window.end)
        served = len(records)
        if records:
            df = pd.concat([df, feedback_frame(records, spec)], ignore_index=True)
    df = normalize_frame(df)
    uri = ctx.storage.write_bytes(ctx.key("snapshot.parquet"), parquet_bytes(df))
    manifest = build_manifest(df, spec.source, uri)
    manifest["window"] = window.to_dict()
    manifest["feedback_rows"] = served
    if ctx.params and ctx.params.trigger:
        manifest["trigger"] = ctx.params.trigger
    if ctx.params and ctx.params.cause:
        manifest["cause"] = ctx.params.cause
        manifest["cause_line"] = cause_line(ctx.params.cause)
    write_json(ctx.storage, manifest_key, manifest)
    _record_snapshot(ctx, manifest)
    manifest["reused"] = False
    _require_new_data(ctx, manifest)
    return manifest


def _require_new_data(ctx: StepContext, manifest: dict[str, Any]) -> None:
    """Stop a scheduled or drift-triggered run whose data is the previous snapshot's."""
    if not ctx.params or ctx.params.trigger not in ("scheduled", "asset"):
        return
    previous = previous_snapshot(ctx)
    if previous is not None and previous[1] == manifest["content_hash"]:
        raise StepSkipped(
            f"no new data: the window up to {manifest['window']['end']} holds the same rows as run "
            f"{previous[0]} ({manifest['content_hash'][:19]}); nothing to retrain on"
        )


def previous_snapshot(ctx: StepContext) -> tuple[str, str] | None:
    """(run id, content hash) of the pipeline's newest snapshot before this run's."""
    with connect(ctx.settings) as conn:
        row = conn.execute(
            "SELECT run_id, content_hash FROM dataset_snapshots WHERE pipeline = %s AND run_id <> %s"
            " AND created_at < COALESCE((SELECT created_at FROM dataset_snapshots WHERE pipeline = %s"
            " AND run_id = %s), 'infinity') ORDER BY created_at DESC LIMIT 1",
            (ctx.pipeline, ctx.run_id, ctx.pipeline, ctx.run_id),
        ).fetchone()
    return (row[0], row[1]) if row else None


def _record_snapshot(ctx: StepContext, manifest: dict[str, Any]) -> None:
    with connect(ctx.settings) as conn:
        conn.execute(
            "INSERT INTO dataset_snapshots"
            " (pipeline, run_id, content_hash, rows, schema_fingerprint, uri, source)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (pipeline, run_id) DO UPDATE SET content_hash = EXCLUDED.content_hash,"
            " rows = EXCLUDED.rows, schema_fingerprint = EXCLUDED.schema_fingerprint,"
            " uri = EXCLUDED.uri, source = EXCLUDED.source",
            (
                ctx.pipeline,
                ctx.run_id,
                manifest["content_hash"],
                manifest["rows"],
                manifest["schema_fingerprint"],
                manifest["snapshot"],
                json.dumps(manifest["source"]),
            ),
        )
