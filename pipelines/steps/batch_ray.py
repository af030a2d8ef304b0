"""`batch` on `runtime: ray`: the run's scoring as a Ray Data job on the platform's Ray cluster,
submitted and followed by the step's one task (a pod, or a process).

The step plans one Ray Data row per Parquet row group of the staged entities that holds a kept
row (`row_group_tasks`) and runs `map_batches` over them on a pool of `parallelism` actors spread
over the cluster's nodes (`RowGroupScorer`: the pinned ONNX model, its sha256 checked, made a
session once per actor). An
actor reads its row group from the run's storage, keeps the rows the pin kept, looks up the
features they lack and judges them as a partition does (`Scorer`), and streams back the answers
and the quarantined rows; the step writes them as they arrive (`PartitionWriter`, partition 0:
the table in one transaction, the Parquet files uploaded at the end). The cluster reads the run's
artifacts and writes nothing. Ray Data restarts an actor lost with its node and retries its row
group (`max_restarts` / `max_task_retries` -1, its defaults for an actor pool); a row group's
answers reach the step once.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pipelines.core.settings import load_settings, scoped_environ, spec_for
from pipelines.core.spec import Batch
from pipelines.io.batch import TABLE_COLUMNS, OfflineFeatures, PartitionWriter, kept_rows
from pipelines.io.storage import Storage, local_file, open_storage
from pipelines.ml.model import onnx_session
from pipelines.steps.batch_score import Scorer, pinned_keep, pinned_model, with_features
from pipelines.steps.context import StepContext
from serving.deploy import join_ray

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

REASONS = "reasons"


def row_group_tasks(storage: Storage, files: list[str], keep: np.ndarray) -> list[dict[str, Any]]:
    """One task per row group of the staged files that holds a kept row: the file, the group and
    the position of its first row among all staged rows."""
    import pyarrow.parquet as pq

    tasks: list[dict[str, Any]] = []
    offset = 0
    for name in files:
        with local_file(storage, name) as path:
            meta = pq.ParquetFile(path).metadata
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            if keep[offset : offset + rows].any():
                tasks.append({"file": name, "row_group": group, "offset": offset})
            offset += rows
    return tasks


class RowGroupScorer:
    """A Ray Data actor: the run's context and pinned model, once; each call scores row groups."""

    def __init__(self, pipeline: str, run_id: str, chunk_rows: int, env: dict[str, str]) -> None:
        self.chunk_rows = chunk_rows
        with scoped_environ(env):
            settings = load_settings()
        self.ctx = StepContext(
            spec=spec_for(settings, pipeline),
            settings=settings,
            run_id=run_id,
            storage=open_storage(settings),
            step="batch",
        )
        self.pin = self.ctx.manifest("batch_pin")
        self.keep = pinned_keep(self.ctx, self.pin)
        self.scorer = Scorer.of(onnx_session(pinned_model(self.ctx, self.pin), threads=1), self.ctx)
        self.as_of = datetime.fromisoformat(self.pin["as_of"])
        self.lookup = OfflineFeatures(self.ctx.spec, settings)  # the actor's store, for its life

    def __call__(self, tasks: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd
        import pyarrow.parquet as pq

        frames = []
        for name, group, offset in tasks[["file", "row_group", "offset"]].itertuples(index=False, name=None):
            with local_file(self.ctx.storage, name) as path:
                parquet = pq.ParquetFile(path)
                for rows in kept_rows(parquet, self.keep, self.chunk_rows, offset=int(offset), row_groups=[int(group)]):
                    chunk = with_features(rows, self.lookup, self.scorer.names, self.as_of)
                    scored, quarantined = self.scorer.score(chunk)
                    frames += [scored.assign(**{REASONS: None}), quarantined.assign(score=float("nan"))]
        columns = [*TABLE_COLUMNS, REASONS]
        out = pd.concat(frames, ignore_index=True).reindex(columns=columns)
        return out.astype({c: object for c in columns if c != "score"})


def run(
    ctx: StepContext, batch: Batch, pin: dict[str, Any], meta: dict[str, Any], no_valid_row: Callable[..., None]
) -> dict[str, Any]:
    """Submit the run's scoring to the Ray cluster and write its answers as they stream back
    (`no_valid_row` checks, inside the writer's block, that some row was valid)."""
    import ray.data

    started = time.monotonic()
    tasks = row_group_tasks(ctx.storage, pin["staged"], pinned_keep(ctx, pin))
    join_ray(ctx.settings)
    scored = ray.data.from_items(tasks, override_num_blocks=max(1, len(tasks))).map_batches(
        RowGroupScorer,
        fn_constructor_kwargs={
            "pipeline": ctx.pipeline,
            "run_id": ctx.run_id,
            "chunk_rows": batch.chunk_rows,
            "env": ctx.settings.pod_env(),
        },
        batch_size=1,
        batch_format="pandas",
        concurrency=batch.parallelism,
        num_cpus=1,
        scheduling_strategy="SPREAD",  # over the cluster's nodes, not packed on the head
    )
    rows, first = 0, None
    with (
        tempfile.TemporaryDirectory(prefix="mlcycle-batch-") as tmp,
        PartitionWriter(ctx.settings, ctx.storage, meta, Path(tmp)) as out,
    ):
        for batch_frame in scored.iter_batches(batch_format="pandas", batch_size=None):
            frame = cast("pd.DataFrame", batch_frame)
            bad = frame[REASONS].notna().to_numpy()
            rows += len(frame)
            first = first or (frame.loc[bad, REASONS].iloc[0] if bad.any() else None)
            out.add(frame[~bad][list(TABLE_COLUMNS)], frame[bad][["entity_id", REASONS]])
        no_valid_row(ctx, 0, rows, out, first)
        outputs = out.finish({"answers": ctx.key("part-0.parquet"), "quarantine": ctx.key("quarantine-0.parquet")})
    return {
        "rows": rows,
        "rows_scored": out.rows_scored,
        "rows_quarantined": out.rows_quarantined,
        "outputs": outputs,
        "ray_tasks": len(tasks),
        "ray_seconds": round(time.monotonic() - started, 3),
    }
