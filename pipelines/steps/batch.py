"""`batch`: one partition of a batch run (`mlcycle step batch --worker N`), scored with the
version `batch_pin` pinned.

1. the partition's entities as `batch_pin` planned them (a source's rows or the offline store's
   ids, one row per entity, those whose id hashes to this partition: `partition_of`);
2. the features a row does not carry, point-in-time at the pinned as_of from Feast's offline store;
3. each row judged by the pipeline's request contract (`serving.contract`, what the endpoint
   applies): a row outside it is quarantined with its reasons and counted, never scored;
4. the rest scored by ONNX Runtime `chunk_rows` at a time, answered in the endpoint's shape (score;
   a multiclass model's class and probabilities);
5. written idempotently: the partition's rows of `batch_predictions` replaced in one transaction
   and/or `batch/part-<n>.parquet`; the partition's manifest last.

No valid row exits 3 (`DataQualityError`): nothing of the partition is written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import DataQualityError, InvalidArgument, SpecError
from pipelines.io.batch import TABLE_COLUMNS, offline_features, write_partition
from pipelines.io.registry import load_onnx_model
from pipelines.io.storage import read_parquet, write_json, write_parquet
from pipelines.ml.model import CLASS, PROBABILITIES, onnx_session, session_feed
from pipelines.steps.context import StepContext
from serving.contract import RequestContract, entity_problem, request_contract
from serving.versions import model_classes

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

STEP = "batch"
STORE = "__offline_store"
NO_FEATURES = "no features for the entity at as_of in the offline store (none within the views' TTL)"


# ----------------------------------------------------------------------------------- pure core
def partition_of(ids: pd.Series, parallelism: int) -> np.ndarray:
    """The partition of each entity id: a stable hash of the id (of an integer id's value, of any
    other's text) modulo `parallelism`, the same in every process and on every run. Pure."""
    from pandas.api.types import is_integer_dtype
    from pandas.util import hash_pandas_object

    hashed = hash_pandas_object(ids if is_integer_dtype(ids) else ids.astype(str), index=False).to_numpy()
    out: np.ndarray = (hashed % parallelism).astype("int64")
    return out


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


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of `range(n)`, `size` at a time. Pure."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


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


def score_rows(session: Any, rows: pd.DataFrame, ctx: StepContext, chunk_rows: int) -> tuple[Any, Any]:
    """(scored frame, quarantined frame): each chunk judged by the contract, its valid rows scored."""
    import numpy as np
    import pandas as pd

    key = ctx.spec.entity.join_key
    names = [i.name for i in session.get_inputs()]
    classes = model_classes(session)
    contract = request_contract(ctx.spec, names)
    outputs = ["score", PROBABILITIES, CLASS] if classes else ["score"]
    scored, quarantined = [], []
    for part in chunks(len(rows), chunk_rows):
        chunk = rows.iloc[part]
        ids = chunk[key].tolist()
        reasons: list[str | None] = [None] * len(chunk)
        doubtful = np.flatnonzero(~surely_clean(chunk, contract, names, key))
        records = chunk.iloc[doubtful][[*names, "_found"]].to_dict("records")
        for j, r in zip(doubtful, records, strict=True):
            reasons[j] = row_reasons(contract, names, r, ids[j], bool(r["_found"]))
        bad = pd.Series([r is not None for r in reasons], index=chunk.index)
        if bad.any():
            kept = [(str(i), r) for i, r in zip(ids, reasons, strict=True) if r is not None]
            quarantined.append(pd.DataFrame(kept, columns=["entity_id", "reasons"]))
        good = chunk[~bad]
        if good.empty:
            continue
        out = dict(zip(outputs, session.run(outputs, session_feed(session, good)), strict=True))
        scored.append(pd.DataFrame({"entity_id": good[key].astype(str).tolist(), **answers(out, classes)}))
    out = pd.concat(scored, ignore_index=True) if scored else pd.DataFrame({"entity_id": [], "score": []})
    out = out.assign(**{c: None for c in TABLE_COLUMNS if c not in out.columns})[list(TABLE_COLUMNS)]
    bad = pd.concat(quarantined, ignore_index=True) if quarantined else pd.DataFrame({"entity_id": [], "reasons": []})
    return out, bad


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
    session = onnx_session(load_onnx_model(ctx.settings, ctx.pipeline, pin["model"], int(pin["version"])))
    rows = read_parquet(ctx.storage, ctx.require("batch_pin", f"entities-{n}.parquet"))
    rows = with_features(rows, ctx, [i.name for i in session.get_inputs()], as_of)
    scored, quarantined = score_rows(session, rows, ctx, batch.chunk_rows)
    if len(rows) and scored.empty:
        raise DataQualityError(
            f"{ctx.pipeline}/{ctx.run_id} partition {n}: no valid row to score ({len(quarantined)} quarantined; "
            f"first: {quarantined['reasons'].iloc[0]})"
        )
    outputs: dict[str, Any] = {}
    if len(quarantined):
        outputs["quarantine"] = write_parquet(ctx.storage, ctx.key(f"quarantine-{n}.parquet"), quarantined)
    if batch.outputs.table:
        write_partition(ctx.settings, ctx.pipeline, ctx.run_id, n, pin, scored)
        outputs["table"] = "batch_predictions"
    if batch.outputs.parquet:
        frame = scored.assign(as_of=pin["as_of"], version=int(pin["version"]), run_id=ctx.run_id, partition=n)
        outputs["parquet"] = write_parquet(ctx.storage, ctx.key(f"part-{n}.parquet"), frame)
    result = {
        "step": STEP,
        "partition": n,
        "version": int(pin["version"]),
        "as_of": pin["as_of"],
        "entities": int(pin["entities"]),
        "rows": len(rows),
        "rows_scored": len(scored),
        "rows_quarantined": len(quarantined),
        "outputs": outputs,
        "scoring_seconds": round(time.monotonic() - started, 3),
    }
    write_json(ctx.storage, ctx.key(f"manifest-{n}.json"), result)
    return result
