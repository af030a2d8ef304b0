"""`batch_pin`: the first task of `<name>_batch`, the run's plan. It reads the champion's version
and the run's as_of once, reads the entities once (one row per entity) and splits them into
`parallelism` partitions by a hash of their id (`entities-<n>.parquet`); every partition scores
exactly these rows with exactly this version, even when the `champion` alias moves or the source
changes while the run goes on. A retried pin keeps what its first attempt pinned (the manifest,
written last, says it is complete)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipelines.core.errors import SpecError
from pipelines.io.batch import read_entities
from pipelines.io.registry import champion_version, model_name
from pipelines.io.storage import write_json, write_parquet
from pipelines.steps.batch import partition_of
from pipelines.steps.context import StepContext

STEP = "batch_pin"


def pinned_as_of(declared: datetime | None, run_as_of: datetime | None, now: datetime) -> datetime:
    """The instant a batch run reads features as of: the spec's, else the run's logical time,
    else now (a step run by hand), in UTC. Pure."""
    moment = declared or run_as_of or now
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def run(ctx: StepContext) -> dict[str, Any]:
    batch = ctx.spec.batch
    if batch is None:
        raise SpecError(f"{ctx.pipeline}: the spec has no `batch` section")
    key = ctx.key("manifest.json")
    if ctx.storage.exists(key) and not ctx.force:
        return {**ctx.manifest(STEP), "reused": True}
    run_as_of = ctx.params.as_of if ctx.params else None
    pinned_at = datetime.now(UTC)
    version = champion_version(ctx.settings, ctx.pipeline)
    as_of = pinned_as_of(batch.as_of, run_as_of, pinned_at)
    rows = read_entities(ctx.spec, ctx.settings, as_of)
    parts = partition_of(rows[ctx.spec.entity.join_key], batch.parallelism)
    sizes = []
    for n in range(batch.parallelism):
        mine = rows[parts == n].reset_index(drop=True)
        write_parquet(ctx.storage, ctx.key(f"entities-{n}.parquet"), mine)
        sizes.append(len(mine))
    pin = {
        "step": STEP,
        "pipeline": ctx.pipeline,
        "model": model_name(ctx.pipeline),
        "version": version,
        "as_of": as_of.isoformat(),
        "parallelism": batch.parallelism,
        "entities": len(rows),
        "partition_rows": sizes,
        "pinned_at": pinned_at.isoformat(),
    }
    write_json(ctx.storage, key, pin)
    return pin
