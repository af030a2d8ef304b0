"""`retention`: what grows with use, bounded (the settings' `retention.*`, MLCYCLE_RETENTION_*).

Run every hour by the `mlcycle_retention` DAG, one task per pipeline:

* the request log (shared by every pipeline, partitioned by UTC day): day partitions made
  `partitions_ahead` days ahead, rows the DEFAULT partition caught moved into their day's
  partition, days older than `request_log_days` dropped (under an advisory lock, so the tasks take
  turns; the first does the work, the others find nothing to do);
* the pipeline's labels older than `labels_days` and older than every window its spec reads them
  in (pipelines/core/retention.py);
* the pipeline's batch runs' rows of `batch_predictions` older than `batch_predictions_days`,
  except the newest published run's (what `<pipeline>_predictions_latest` shows);
* the pipeline's run folders under the artifact root last written more than `runs_days` ago,
  except the runs of the versions still in the registry (champion, challenger and every other:
  their snapshot, reports and model stay) and runs with a step running now.

What it removed (rows or objects, and bytes, per kind) is its result and its `manifest.json`; where
`MLCYCLE_ALERTS_DATABASE_MAX_BYTES` or `..._BUCKET_MAX_BYTES` is set, it measures that store and
alerts `MlcyclePlatformStorageFull` at or above the limit.
MLflow's own artifacts (`<root>/mlflow/...`) are MLflow's to expire (`mlflow gc`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipelines.core.alerts import fill_alerts
from pipelines.core.retention import (
    expired_batch_runs,
    expired_runs,
    label_window_days,
    labels_cutoff,
    plan_partitions,
    request_log_shortfall,
    run_folders,
)
from pipelines.core.settings import RetentionSettings, Settings
from pipelines.core.spec import PipelineSpec
from pipelines.io import retention as store
from pipelines.io.alerts import send
from pipelines.io.db import advisory_lock, connect
from pipelines.io.registry import lineage_runs
from pipelines.io.storage import Storage, write_json
from pipelines.steps.context import StepContext


def request_log(settings: Settings, now: datetime) -> dict[str, Any]:
    """Make, fill and drop the request log's day partitions; what it did."""
    keep: RetentionSettings = settings.retention
    with advisory_lock(settings, store.LOCK), connect(settings) as conn:
        plan = plan_partitions(
            store.day_partitions(conn), store.default_days(conn), now, keep.request_log_days, keep.partitions_ahead
        )
        moved = sum(store.create_partition(conn, day) for day in plan.create)
        rows = size = 0
        for day in plan.drop:
            n, b = store.drop_partition(conn, day)
            rows, size = rows + n, size + b
        n, b = store.delete_default_before(conn, plan.default_before)
    return {
        "partitions_created": [d.isoformat() for d in plan.create],
        "rows_moved_from_default": moved,
        "partitions_dropped": [d.isoformat() for d in plan.drop],
        "rows": rows + n,
        "bytes": size + b,
        "kept_from": plan.default_before.isoformat(),
    }


def labels(settings: Settings, spec: PipelineSpec, now: datetime) -> dict[str, Any]:
    """Delete the pipeline's labels no window reads any more; what it removed."""
    window = label_window_days(spec)
    before = labels_cutoff(now, settings.retention.labels_days, window)
    if before is None:
        return {"rows": 0, "bytes": 0, "kept_from": None, "why": "source.feedback reads every label (no lookback)"}
    with connect(settings) as conn:
        rows, size = store.delete_labels(conn, spec.name, before)
    return {"rows": rows, "bytes": size, "kept_from": before.isoformat(), "window_days": window}


def batch_predictions(settings: Settings, pipeline: str, now: datetime) -> dict[str, Any]:
    """Delete the rows of the pipeline's expired batch runs; what it removed."""
    with connect(settings) as conn:
        expired = expired_batch_runs(store.batch_runs(conn, pipeline), now, settings.retention.batch_predictions_days)
        rows, size = store.delete_batch_predictions(conn, pipeline, expired) if expired else (0, 0)
    return {"runs": expired, "rows": rows, "bytes": size}


def runs(settings: Settings, storage: Storage, pipeline: str, now: datetime, current: str) -> dict[str, Any]:
    """Remove the pipeline's expired run folders (never the current run's); what it removed."""
    lineage = lineage_runs(settings, pipeline)  # raises when the registry cannot be read: nothing removed
    folders = run_folders(pipeline, storage.stat(f"{pipeline}/"))
    with connect(settings) as conn:
        running = store.running_runs(conn, pipeline) | {current}
    expired = expired_runs(folders, now, settings.retention.runs_days, lineage, running)
    keys = [k for f in expired for k in f.keys]
    storage.delete(keys)
    with connect(settings) as conn:
        store.forget_digests(conn, keys)
    return {
        "folders": len(expired),
        "objects": len(keys),
        "bytes": sum(f.bytes for f in expired),
        "removed": [f.run_id for f in expired],
        "kept_for_lineage": sorted(lineage & {f.run_id for f in folders}),
    }


def fill(settings: Settings, storage: Storage, now: datetime) -> dict[str, Any]:
    """The platform database's and the artifact store's bytes, where a limit asks for them, and the
    `MlcyclePlatformStorageFull` alerts sent for those at or above it."""
    limits = {"database": settings.alerts_database_max_bytes, "bucket": settings.alerts_bucket_max_bytes}
    usage: dict[str, int] = {}
    if limits["database"] is not None:
        with connect(settings) as conn:
            usage["database"] = store.database_bytes(conn)
    if limits["bucket"] is not None:
        usage["bucket"] = sum(size for _, size, _ in storage.stat(""))
    fired = fill_alerts(usage, limits, now)
    if fired:
        send(settings, fired)
    return {"bytes": usage, "limits": limits, "alerts": [a["labels"]["store"] for a in fired]}


def enforce(ctx: StepContext, now: datetime) -> dict[str, Any]:
    """The retention of one pipeline (and of the shared request log) at `now`."""
    shortfall = request_log_shortfall(ctx.spec, ctx.settings.retention.request_log_days)
    return {
        "now": now.isoformat(),
        "settings": ctx.settings.retention.model_dump(),
        "warnings": [shortfall] if shortfall else [],
        "request_log": request_log(ctx.settings, now),
        "labels": labels(ctx.settings, ctx.spec, now),
        "batch_predictions": batch_predictions(ctx.settings, ctx.pipeline, now),
        "runs": runs(ctx.settings, ctx.storage, ctx.pipeline, now, ctx.run_id),
        "fill": fill(ctx.settings, ctx.storage, now),
    }


def run(ctx: StepContext) -> dict[str, Any]:
    result = enforce(ctx, datetime.now(UTC))
    write_json(ctx.storage, ctx.key("manifest.json"), result)
    return result
