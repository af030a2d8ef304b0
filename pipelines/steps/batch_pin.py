"""`batch_pin`: the first task of `<name>_batch`, the run's plan. It reads the champion's version
and the run's as_of once, copies that version's ONNX model (checked against the registry's sha256)
beside the plan, and stages the entities once (`entities-<i>.parquet`, a Parquet source's files
copied as they are) with a bitmap of the rows to score (`keep.bin`: each entity's newest row at
as_of); a partition scores the kept rows whose id hashes to it. Every partition scores exactly
these rows with exactly this version, even when the `champion` alias moves or the source changes
while the run goes on. A retried pin keeps what its first attempt pinned (the manifest, written
last, says it is complete)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipelines.core.errors import SpecError, StepSkipped
from pipelines.core.integrity import sha256_hex
from pipelines.io.batch import stage_entities
from pipelines.io.registry import champion_or_none, load_onnx_model, model_name
from pipelines.io.storage import write_json
from pipelines.steps.context import StepContext

STEP = "batch_pin"


def pinned_as_of(declared: datetime | None, run_as_of: datetime | None, now: datetime) -> datetime:
    """The instant a batch run reads features as of: the spec's, else the run's logical time,
    else now (a step run by hand), in UTC. Pure."""
    moment = declared or run_as_of or now
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def run(ctx: StepContext) -> dict[str, Any]:
    import numpy as np

    batch = ctx.spec.batch
    if batch is None:
        raise SpecError(f"{ctx.pipeline}: the spec has no `batch` section")
    key = ctx.key("manifest.json")
    if ctx.storage.exists(key) and not ctx.force:
        return {**ctx.manifest(STEP), "reused": True}
    run_as_of = ctx.params.as_of if ctx.params else None
    pinned_at = datetime.now(UTC)
    version = champion_or_none(ctx.settings, ctx.pipeline)
    if version is None:  # a schedule that starts before the first promotion: skipped, not failed
        raise StepSkipped(f"{model_name(ctx.pipeline)} has no champion yet: nothing to score")
    as_of = pinned_as_of(batch.as_of, run_as_of, pinned_at)
    model = load_onnx_model(ctx.settings, ctx.pipeline, model_name(ctx.pipeline), version)
    ctx.storage.write_bytes(ctx.key("model.onnx"), model)
    partitions = 1 if batch.runtime == "ray" else batch.parallelism  # ray: one task, its actors share the rows
    staged = stage_entities(ctx.spec, ctx.settings, ctx.storage, ctx.key, as_of, partitions)
    ctx.storage.write_bytes(ctx.key("keep.bin"), np.packbits(staged.keep).tobytes())
    pin = {
        "step": STEP,
        "pipeline": ctx.pipeline,
        "model": model_name(ctx.pipeline),
        "version": version,
        "as_of": as_of.isoformat(),
        "parallelism": partitions,
        "runtime": batch.runtime,
        "model_sha256": sha256_hex(model),
        "entities": sum(staged.partition_rows),
        "partition_rows": staged.partition_rows,
        "staged": staged.files,
        "staged_rows": len(staged.keep),
        "pinned_at": pinned_at.isoformat(),
    }
    write_json(ctx.storage, key, pin)
    return pin
