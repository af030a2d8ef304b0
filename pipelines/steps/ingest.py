"""`ingest`: read the source into a run-scoped Parquet snapshot with a manifest.

Outputs (under `<pipeline>/<run_id>/ingest/`): `snapshot.parquet` and `manifest.json` (content hash,
rows, schema fingerprint, source). The manifest is written last, so its presence means the snapshot
is complete: a retry of the same run reuses it instead of reading the source again, and a run's data
never changes under it.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pipelines.core.spec import Source
from pipelines.io.db import connect
from pipelines.io.sources import normalize_frame, read_source
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


# ----------------------------------------------------------------------------------------- step
def run(ctx: StepContext) -> dict[str, Any]:
    """Snapshot the source for this run, or reuse the snapshot a previous attempt completed."""
    manifest_key = ctx.key("manifest.json")
    if ctx.storage.exists(manifest_key) and not ctx.force:
        manifest: dict[str, Any] = read_json(ctx.storage, manifest_key)
        manifest["reused"] = True
        return manifest
    df = normalize_frame(read_source(ctx.spec.source, ctx.settings))
    uri = ctx.storage.write_bytes(ctx.key("snapshot.parquet"), parquet_bytes(df))
    manifest = build_manifest(df, ctx.spec.source, uri)
    write_json(ctx.storage, manifest_key, manifest)
    _record_snapshot(ctx, manifest)
    manifest["reused"] = False
    return manifest


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
