"""`batch`: one partition of a batch run (`mlcycle step batch --worker N`), scored with the
version `batch_pin` pinned, `chunk_rows` at a time (memory holds a chunk, not the partition):

1. the partition's entities as `batch_pin` staged them (a source's rows or the offline store's
   ids, one row per entity, those whose id hashes to this partition: `partition_of`), read a
   record batch at a time;
2. the features a row does not carry, point-in-time at the pinned as_of from Feast's offline store;
3. each row judged by the pipeline's request contract (`serving.contract`, what the endpoint
   applies): a row outside it is quarantined with its reasons and counted, never scored;
4. the rest scored by ONNX Runtime with the model the pin copied (its sha256 checked), answered in
   the endpoint's shape (score; a multiclass model's class and probabilities);
5. written idempotently as it goes: the partition's rows of `batch_predictions` replaced in one
   transaction and/or `batch/part-<n>.parquet`; the partition's manifest last.

No valid row exits 3 (`DataQualityError`): nothing of the partition is written.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines.core.errors import DataQualityError, InvalidArgument, SpecError
from pipelines.core.k8s import cpu_threads
from pipelines.core.spec import Batch
from pipelines.io.batch import OfflineFeatures, PartitionWriter, partition_chunks, partition_of
from pipelines.io.storage import write_json
from pipelines.ml.model import onnx_session
from pipelines.steps import batch_ray
from pipelines.steps.batch_score import (
    NO_FEATURES,
    Scorer,
    answers,
    pinned_keep,
    pinned_model,
    row_reasons,
    surely_clean,
    with_features,
)
from pipelines.steps.context import StepContext

STEP = "batch"
__all__ = ["NO_FEATURES", "answers", "partition_of", "row_reasons", "run", "surely_clean"]


def no_valid_row(ctx: StepContext, n: int, rows: int, out: PartitionWriter, first: str | None) -> None:
    """Exit 3 (`DataQualityError`) where a partition read rows and none was valid: raised inside
    the writer's block, so nothing of the partition is written."""
    if rows and not out.rows_scored:
        raise DataQualityError(
            f"{ctx.pipeline}/{ctx.run_id} partition {n}: no valid row to score ({out.rows_quarantined} "
            f"quarantined; first: {first})"
        )


def score_partition(ctx: StepContext, batch: Batch, pin: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A partition's rows read, scored and written a chunk at a time, in this process."""
    n, as_of = int(meta["partition"]), datetime.fromisoformat(pin["as_of"])
    threads = cpu_threads(ctx.spec.resources.for_step(STEP).cpu, os.cpu_count())  # the pod's CPUs, as train's
    scorer = Scorer.of(onnx_session(pinned_model(ctx, pin), threads=threads), ctx)
    keep = pinned_keep(ctx, pin)
    chunks = partition_chunks(
        ctx.storage, pin["staged"], keep, scorer.key, int(pin["parallelism"]), n, batch.chunk_rows, threads
    )
    rows, first = 0, None
    with (
        tempfile.TemporaryDirectory(prefix="mlcycle-batch-") as tmp,
        OfflineFeatures(ctx.spec, ctx.settings) as lookup,
        PartitionWriter(ctx.settings, ctx.storage, meta, Path(tmp)) as out,
    ):
        for chunk in chunks:
            rows += len(chunk)
            scored, quarantined = scorer.score(with_features(chunk, lookup, scorer.names, as_of))
            first = first or (quarantined["reasons"].iloc[0] if len(quarantined) else None)
            out.add(scored, quarantined)
        no_valid_row(ctx, n, rows, out, first)
        keys = {"answers": ctx.key(f"part-{n}.parquet"), "quarantine": ctx.key(f"quarantine-{n}.parquet")}
        outputs = out.finish(keys)
    return {"rows": rows, "rows_scored": out.rows_scored, "rows_quarantined": out.rows_quarantined, "outputs": outputs}


def run(ctx: StepContext) -> dict[str, Any]:
    batch = ctx.spec.batch
    if batch is None:
        raise SpecError(f"{ctx.pipeline}: the spec has no `batch` section")
    pin = ctx.manifest("batch_pin")
    n, parallelism = ctx.worker, int(pin["parallelism"])
    if n is None or not 0 <= n < parallelism:
        raise InvalidArgument(f"step batch scores one partition: --worker 0..{parallelism - 1}, got {n}")
    started = time.monotonic()
    meta = {
        "pipeline": ctx.pipeline,
        "run_id": ctx.run_id,
        "partition": n,
        "as_of": pin["as_of"],
        "version": int(pin["version"]),
        "table": batch.outputs.table,
        "parquet": batch.outputs.parquet,
    }
    if pin.get("runtime") == "ray":
        figures = batch_ray.run(ctx, batch, pin, meta, no_valid_row)
    else:
        figures = score_partition(ctx, batch, pin, meta)
    result = {
        "step": STEP,
        "partition": n,
        "version": int(pin["version"]),
        "as_of": pin["as_of"],
        "entities": int(pin["entities"]),
        **figures,
        "scoring_seconds": round(time.monotonic() - started, 3),
    }
    write_json(ctx.storage, ctx.key(f"manifest-{n}.json"), result)
    return result
