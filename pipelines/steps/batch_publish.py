"""`batch_publish`: the last task of `<name>_batch`, once every partition succeeded. It checks
that each partition wrote its manifest with the pinned version, records the run's summary in
`batch_runs` and flips `<name>_predictions_latest` to this run in one transaction; the task's
outlet emits the Asset `mlcycle://<name>/predictions` (operators/factory.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipelines.core.errors import SpecError, StepInputError
from pipelines.io.batch import latest_view, publish
from pipelines.io.storage import read_json, write_json
from pipelines.steps.context import StepContext

STEP = "batch_publish"


def summarize(pin: dict[str, Any], parts: list[dict[str, Any]], run_id: str, now: datetime) -> dict[str, Any]:
    """The run's summary from the pin and every partition's manifest, or a clear error where a
    partition scored with another version than the pinned one. Pure."""
    stray = [p["partition"] for p in parts if int(p["version"]) != int(pin["version"])]
    if stray:
        raise StepInputError(f"partitions {stray} scored another version than the pinned v{pin['version']}")
    outputs: dict[str, Any] = {}
    for p in parts:
        for kind, where in p["outputs"].items():
            if kind == "table":
                outputs["table"] = where
            else:
                outputs.setdefault(kind, []).append(where)
    return {
        "pipeline": pin["pipeline"],
        "run_id": run_id,
        "version": int(pin["version"]),
        "as_of": pin["as_of"],
        "partitions": len(parts),
        "rows_scored": sum(int(p["rows_scored"]) for p in parts),
        "rows_quarantined": sum(int(p["rows_quarantined"]) for p in parts),
        "seconds": round((now - datetime.fromisoformat(pin["pinned_at"])).total_seconds(), 3),
        "outputs": outputs,
    }


def run(ctx: StepContext) -> dict[str, Any]:
    batch = ctx.spec.batch
    if batch is None:
        raise SpecError(f"{ctx.pipeline}: the spec has no `batch` section")
    pin = ctx.manifest("batch_pin")
    parts = [read_json(ctx.storage, ctx.require("batch", f"manifest-{n}.json")) for n in range(pin["parallelism"])]
    summary = summarize(pin, parts, ctx.run_id, datetime.now(UTC))
    if batch.outputs.table:
        summary["outputs"]["view"] = latest_view(ctx.pipeline)
    publish(ctx.settings, summary, view=batch.outputs.table)
    write_json(ctx.storage, ctx.key("manifest.json"), summary)
    return {"step": STEP, **summary}
