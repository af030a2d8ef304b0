"""`batch_pin`: the first task of `<name>_batch`. It reads the champion's version and the run's
as_of once and writes them down; every partition scores with exactly these, even when the
`champion` alias moves while the run goes on. A retried pin keeps what its first attempt pinned."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipelines.core.errors import SpecError
from pipelines.io.registry import champion_version, model_name
from pipelines.io.storage import write_json
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
    pin = {
        "step": STEP,
        "pipeline": ctx.pipeline,
        "model": model_name(ctx.pipeline),
        "version": champion_version(ctx.settings, ctx.pipeline),
        "as_of": pinned_as_of(batch.as_of, run_as_of, datetime.now(UTC)).isoformat(),
        "parallelism": batch.parallelism,
        "pinned_at": datetime.now(UTC).isoformat(),
    }
    write_json(ctx.storage, key, pin)
    return pin
