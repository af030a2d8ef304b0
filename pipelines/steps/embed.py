"""`embed`: the challenger's vector space, filled, indexed and checked before it takes traffic.

For a spec with `embeddings`, after `promote` and before `canary`: the registered version's ONNX
model embeds every entity of the run's validated snapshot (its latest row) in batches of
`embeddings.batch_rows` through ONNX Runtime, the vectors are COPYed into the version's own space
(`pipelines.io.vectors`), its index is built, and its recall@10 against exact search on a sample
of `embeddings.recall_sample` entities must reach `embeddings.min_recall_at_10` (a gate: below
it the space stays unready and the canary does not start). Then the space is `ready`: similarity
reads it from the moment the `champion` alias names its version.

Idempotent and resumable: a retry (after a kill) skips the entities already in the space, finds
the index built, and a ready space is reused. It also drops the retired spaces kept longer than
`embeddings.retain_hours`.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import GateError, InvalidArgument, StepInputError, StepSkipped
from pipelines.io import vectors
from pipelines.io.artifacts import read_artifact
from pipelines.io.storage import read_parquet, write_json
from pipelines.ml.model import embed_onnx, embedding_dimension, onnx_session
from pipelines.steps.context import StepContext

if TYPE_CHECKING:
    import pandas as pd

STEP = "embed"


def latest_per_entity(df: pd.DataFrame, key: str, timestamp: str) -> pd.DataFrame:
    """Each entity's latest row (by its timestamp), the entity id as text. Pure."""
    latest = df.sort_values([timestamp, key], kind="stable").drop_duplicates(key, keep="last")
    return latest.assign(**{key: latest[key].astype(str)}).reset_index(drop=True)


def batch_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """`[start, end)` of consecutive batches of at most `size` rows. Pure."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def run(ctx: StepContext) -> dict[str, Any]:
    cfg = ctx.spec.embeddings
    if cfg is None:
        raise InvalidArgument(f"{ctx.pipeline}: the spec declares no `embeddings`; there is nothing to embed")
    if ctx.dry_run:
        raise StepSkipped("dry run: nothing is registered, so nothing is embedded")
    promoted = ctx.manifest("promote")
    version = int(promoted["version"])
    # the registered version's bytes, as train wrote them
    model = read_artifact(ctx.settings, ctx.storage, ctx.require("train", "model.onnx"))
    session = onnx_session(model)
    dimension = embedding_dimension(session)
    if dimension is None:
        raise StepInputError(f"{ctx.pipeline} v{version}: the model has no `embedding` output; retrain it")
    if cfg.dimension is not None and dimension != cfg.dimension:
        raise StepInputError(
            f"v{version}'s embedding has {dimension} dimensions; embeddings.dimension is {cfg.dimension}"
        )
    space = vectors.open_space(
        ctx.settings,
        ctx.pipeline,
        version,
        dimension,
        cfg.distance,
        cfg.index,
        ctx.run_id,
        hashlib.sha256(model).hexdigest(),
    )
    manifest: dict[str, Any] = {"step": STEP, "version": version, "dimension": dimension, "distance": cfg.distance}
    if space.state in ("ready", "retired") and not ctx.force:
        info = vectors.space_info(ctx.settings, ctx.pipeline, version) or {}
        manifest.update(reused=True, rows=info.get("rows"), recall_at_10=info.get("recall_at_10"), state=space.state)
        write_json(ctx.storage, ctx.key("manifest.json"), manifest)
        return manifest

    spec = ctx.spec
    validated = read_parquet(ctx.storage, ctx.require("validate", "validated.parquet"))
    entities = latest_per_entity(validated, spec.entity.join_key, spec.entity.timestamp)
    done = vectors.present(ctx.settings, space)
    todo = entities[~entities[spec.entity.join_key].isin(done)].reset_index(drop=True)
    started, added = time.monotonic(), 0
    for lo, hi in batch_bounds(len(todo), cfg.batch_rows):
        batch = todo.iloc[lo:hi]
        added += vectors.copy_vectors(
            ctx.settings, space, batch[spec.entity.join_key].tolist(), embed_onnx(session, batch)
        )
    fill_s = time.monotonic() - started
    build_s = vectors.build_index(ctx.settings, space)
    recall = vectors.measure_recall(ctx.settings, space, cfg.recall_sample)
    manifest.update(
        entities=len(entities),
        resumed_with=len(done),
        added=added,
        fill_seconds=round(fill_s, 3),
        vectors_per_s=round(added / fill_s, 1) if fill_s > 0 else None,
        index=cfg.index,
        index_build_seconds=round(build_s, 3),
        recall_at_10=round(recall, 4),
        min_recall_at_10=cfg.min_recall_at_10,
    )
    if recall < cfg.min_recall_at_10:
        write_json(ctx.storage, ctx.key("manifest.json"), {**manifest, "state": "indexing"})
        raise GateError(
            f"v{version}'s {cfg.index} index finds {recall:.3f} of the exact 10 nearest neighbours on "
            f"{cfg.recall_sample} entities, below embeddings.min_recall_at_10 {cfg.min_recall_at_10}; the space "
            "is not ready and the canary does not start"
        )
    vectors.mark_ready(ctx.settings, space, recall)
    manifest["swept"] = vectors.sweep_retired(ctx.settings, ctx.pipeline, cfg.retain_hours, datetime.now(UTC))
    manifest.update(state="ready", reused=False)
    write_json(ctx.storage, ctx.key("manifest.json"), manifest)
    return manifest
