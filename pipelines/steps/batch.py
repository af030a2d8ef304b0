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

import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import DataQualityError, InvalidArgument, SpecError
from pipelines.core.integrity import check_digest
from pipelines.core.k8s import cpu_threads
from pipelines.io.batch import TABLE_COLUMNS, PartitionWriter, offline_features, partition_chunks, partition_of
from pipelines.io.storage import write_json
from pipelines.ml.model import CLASS, PROBABILITIES, onnx_session, session_feed
from pipelines.steps.context import StepContext
from serving.contract import RequestContract, entity_problem, request_contract
from serving.versions import model_classes

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

STEP = "batch"
STORE = "__offline_store"
__all__ = ["NO_FEATURES", "partition_of", "run"]
NO_FEATURES = "no features for the entity at as_of in the offline store (none within the views' TTL)"


# ----------------------------------------------------------------------------------- pure core
def _plain(value: Any) -> Any:
    """A frame's missing value (NaN, NaT, NA, None) as None: a null, as a request sends one. Pure."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    return value


def surely_clean(chunk: pd.DataFrame, contract: RequestContract, names: Sequence[str], key: str) -> np.ndarray:
    """The rows the contract surely takes, judged a column at a time (`row_reasons` judges the
    others one by one, and may take them too): an integer id, the offline store answered, every
    number finite and inside its rule, every category one of the allowed, a null only where the
    rule allows it. Never marks a row `row_reasons` would refuse. Pure."""
    import numpy as np
    from pandas.api import types as pt

    none = np.zeros(len(chunk), dtype=bool)
    if not pt.is_integer_dtype(chunk[key]):
        return none
    ok = chunk["_found"].to_numpy(dtype=bool).copy()
    for name in names:
        rule, col = contract.rules[name], chunk[name]
        null = col.isna().to_numpy()
        if rule.kind == "category":
            if rule.allowed is None:
                return none
            good = col.isin(list(rule.allowed)).to_numpy()
        else:
            if pt.is_bool_dtype(col) or not (pt.is_float_dtype(col) or pt.is_integer_dtype(col)):
                return none
            values = col.to_numpy(dtype="float64", na_value=np.nan)
            with np.errstate(invalid="ignore"):
                good = np.isfinite(values)
                if rule.kind == "integer":
                    good &= values == np.floor(values)
                if rule.low is not None:
                    good &= values >= rule.low
                if rule.high is not None:
                    good &= values <= rule.high
        ok &= good | (null & rule.nullable)
    out: np.ndarray = ok
    return out


def row_reasons(
    contract: RequestContract, names: Sequence[str], row: dict[str, Any], entity_id: Any, found: bool
) -> str | None:
    """Why a row cannot be scored (every reason, `; `-joined), or None. `found`: whether the
    offline store answered for the entity (only asked when the row lacks a feature). Pure."""
    problem = entity_problem(entity_id)
    if problem:
        return f"entity_id: {problem}"
    features = {n: _plain(row.get(n)) for n in names}
    if not found and any(features[n] is None for n in names):
        return NO_FEATURES
    judged = contract.judge(0, features)
    if isinstance(judged, list):
        return "; ".join(p.message for p in judged)
    return None


def id_text(ids: pd.Series) -> np.ndarray:
    """Entity ids as text (an object array of `str`), as the endpoint logs them: an integer id's
    digits (Arrow's cast: a tenth of pandas' `astype(str)` on a million ids). Pure."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pandas.api.types import is_integer_dtype

    if not is_integer_dtype(ids):
        out: np.ndarray = ids.astype(str).to_numpy(dtype=object)
        return out
    text: np.ndarray = pc.cast(pa.array(ids.to_numpy()), pa.string()).to_numpy(zero_copy_only=False)
    return text


def answers(outputs: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """The endpoint's answer for each scored row: `score` (a binary model's probability, a
    regression's value, a multiclass model's top probability), and a multiclass model's `class`
    and `probabilities` (JSON, by class); a column the model does not answer is left out (null). Pure."""
    import numpy as np

    scores = np.asarray(outputs["score"], dtype=np.float64).reshape(-1)
    if not classes:
        return {"score": scores}
    return {
        "score": scores,
        "class": [str(c) for c in outputs[CLASS].reshape(-1)],
        "probabilities": [json.dumps(dict(zip(classes, map(float, p), strict=True))) for p in outputs[PROBABILITIES]],
    }


# ----------------------------------------------------------------------------------------- step
def with_features(rows: pd.DataFrame, ctx: StepContext, names: list[str], as_of: datetime) -> pd.DataFrame:
    """The rows with the model inputs they do not carry (a column they lack, or a null in one)
    from the offline store at `as_of`, and `_found`: whether the store answered for the entity
    (True where nothing had to be asked). A value the row carries wins over the store's."""
    key = ctx.spec.entity.join_key
    needs = [n for n in names if n not in rows.columns or rows[n].isna().any()]
    if not needs or rows.empty:
        return rows.assign(_found=True)
    fetched = offline_features(ctx.spec, ctx.settings, rows[key].tolist(), as_of)
    # Feast answers an entity it knows nothing of (within the TTL) with nulls, or leaves it out
    answered = fetched.drop(columns=[key]).notna().any(axis=1)
    out = rows.merge(fetched[[key, *needs]].assign(_found=answered), on=key, how="left", suffixes=("", STORE))
    for name in needs:
        if name + STORE in out.columns:
            out[name] = out[name].where(out[name].notna(), out.pop(name + STORE))
    return out.assign(_found=out["_found"].eq(True))


@dataclass(frozen=True)
class Scorer:
    """What scoring a chunk needs, made once per partition: the session, its inputs and classes,
    the request contract the endpoint applies, the entity key."""

    session: Any
    names: list[str]
    classes: list[str]
    contract: RequestContract
    key: str

    @classmethod
    def of(cls, session: Any, ctx: StepContext) -> Scorer:
        names = [i.name for i in session.get_inputs()]
        return cls(session, names, model_classes(session), request_contract(ctx.spec, names), ctx.spec.entity.join_key)

    def score(self, chunk: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(answers, quarantined) of one chunk: each row judged by the contract (column-wise where
        plainly clean, one by one otherwise), the valid ones scored."""
        import numpy as np
        import pandas as pd

        ids = chunk[self.key].tolist()
        reasons: list[str | None] = [None] * len(chunk)
        doubtful = np.flatnonzero(~surely_clean(chunk, self.contract, self.names, self.key))
        records = chunk.iloc[doubtful][[*self.names, "_found"]].to_dict("records")
        for j, r in zip(doubtful, records, strict=True):
            reasons[j] = row_reasons(self.contract, self.names, r, ids[j], bool(r["_found"]))
        bad = np.array([r is not None for r in reasons], dtype=bool)
        kept = [(str(i), r) for i, r in zip(ids, reasons, strict=True) if r is not None]
        quarantined = pd.DataFrame(kept, columns=["entity_id", "reasons"])
        good = chunk[~bad]
        outputs = ["score", PROBABILITIES, CLASS] if self.classes else ["score"]
        answered = (
            dict(zip(outputs, self.session.run(outputs, session_feed(self.session, good)), strict=True))
            if len(good)
            else None
        )
        frame = pd.DataFrame({"entity_id": id_text(good[self.key])})
        if answered is not None:
            frame = frame.assign(**answers(answered, self.classes))
        frame = frame.assign(**{c: None for c in TABLE_COLUMNS if c not in frame.columns})[list(TABLE_COLUMNS)]
        return frame, quarantined


def pinned_model(ctx: StepContext, pin: dict[str, Any]) -> bytes:
    """The ONNX model the pin copied, refused unless its sha256 is the one the pin recorded."""
    key = ctx.require("batch_pin", "model.onnx")
    return check_digest(ctx.storage.read_bytes(key), pin.get("model_sha256"), key)


def pinned_keep(ctx: StepContext, pin: dict[str, Any]) -> np.ndarray:
    """Which staged rows the pin kept (one per entity)."""
    import numpy as np

    bits = np.frombuffer(ctx.storage.read_bytes(ctx.require("batch_pin", "keep.bin")), dtype=np.uint8)
    keep: np.ndarray = np.unpackbits(bits, count=int(pin["staged_rows"])).astype(bool)
    return keep


def run(ctx: StepContext) -> dict[str, Any]:
    batch = ctx.spec.batch
    if batch is None:
        raise SpecError(f"{ctx.pipeline}: the spec has no `batch` section")
    pin = ctx.manifest("batch_pin")
    n, parallelism = ctx.worker, int(pin["parallelism"])
    if n is None or not 0 <= n < parallelism:
        raise InvalidArgument(f"step batch scores one partition: --worker 0..{parallelism - 1}, got {n}")
    started = time.monotonic()
    as_of = datetime.fromisoformat(pin["as_of"])
    threads = cpu_threads(ctx.spec.resources.for_step(STEP).cpu, os.cpu_count())  # the pod's CPUs, as train's
    scorer = Scorer.of(onnx_session(pinned_model(ctx, pin), threads=threads), ctx)
    chunks = partition_chunks(
        ctx.storage, pin["staged"], pinned_keep(ctx, pin), scorer.key, parallelism, n, batch.chunk_rows
    )
    meta = {
        "pipeline": ctx.pipeline,
        "run_id": ctx.run_id,
        "partition": n,
        "as_of": pin["as_of"],
        "version": int(pin["version"]),
        "table": batch.outputs.table,
        "parquet": batch.outputs.parquet,
    }
    rows, first_reason = 0, None
    with (
        tempfile.TemporaryDirectory(prefix="mlcycle-batch-") as tmp,
        PartitionWriter(ctx.settings, ctx.storage, meta, Path(tmp)) as out,
    ):
        for chunk in chunks:
            rows += len(chunk)
            scored, quarantined = scorer.score(with_features(chunk, ctx, scorer.names, as_of))
            first_reason = first_reason or (quarantined["reasons"].iloc[0] if len(quarantined) else None)
            out.add(scored, quarantined)
        if rows and not out.rows_scored:
            raise DataQualityError(
                f"{ctx.pipeline}/{ctx.run_id} partition {n}: no valid row to score ({out.rows_quarantined} "
                f"quarantined; first: {first_reason})"
            )
        outputs = out.finish(
            {"answers": ctx.key(f"part-{n}.parquet"), "quarantine": ctx.key(f"quarantine-{n}.parquet")}
        )
    result = {
        "step": STEP,
        "partition": n,
        "version": int(pin["version"]),
        "as_of": pin["as_of"],
        "entities": int(pin["entities"]),
        "rows": rows,
        "rows_scored": out.rows_scored,
        "rows_quarantined": out.rows_quarantined,
        "outputs": outputs,
        "scoring_seconds": round(time.monotonic() - started, 3),
    }
    write_json(ctx.storage, ctx.key(f"manifest-{n}.json"), result)
    return result
