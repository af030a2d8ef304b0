"""How a batch partition scores rows, whatever runs it (a partition's task, a Ray Data actor):
the features a row lacks from the offline store at as_of, each row judged by the request
contract the endpoint applies (quarantined with its reasons, or scored), the answers in the
endpoint's shape; the pinned model and the pin's bitmap of kept rows, read back from the run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.integrity import check_digest
from pipelines.io.batch import TABLE_COLUMNS, OfflineFeatures
from pipelines.ml.imbalance import session_threshold
from pipelines.ml.model import CLASS, PROBABILITIES, session_feed
from pipelines.steps.context import StepContext
from serving.contract import RequestContract, entity_problem, request_contract
from serving.versions import model_classes

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

STORE = "__offline_store"
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
        if rule.nullable:  # a null is never `good` (not an allowed value, not finite): allowed here
            good |= col.isna().to_numpy()
        ok &= good
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


def answers(outputs: dict[str, Any], classes: list[str], threshold: float | None = None) -> dict[str, Any]:
    """The endpoint's answer for each scored row: `score` (a binary model's probability, a
    regression's value, a multiclass model's top probability), a multiclass model's `class`
    and `probabilities` (JSON, by class), a binary model's decision at its `threshold` as its
    `class` ("1" or "0"); a column the model does not answer is left out (null). Pure."""
    import numpy as np

    scores = np.asarray(outputs["score"], dtype=np.float64).reshape(-1)
    if not classes:
        if threshold is None:
            return {"score": scores}
        return {"score": scores, "class": np.where(scores >= threshold, "1", "0").astype(object)}
    return {
        "score": scores,
        "class": [str(c) for c in outputs[CLASS].reshape(-1)],
        "probabilities": [json.dumps(dict(zip(classes, map(float, p), strict=True))) for p in outputs[PROBABILITIES]],
    }


# ----------------------------------------------------------------------------------------- step
def with_features(rows: pd.DataFrame, lookup: OfflineFeatures, names: list[str], as_of: datetime) -> pd.DataFrame:
    """The rows with the model inputs they do not carry (a column they lack, or a null in one)
    from the offline store at `as_of`, and `_found`: whether the store answered for the entity
    (True where nothing had to be asked). A value the row carries wins over the store's."""
    key = lookup.spec.entity.join_key
    needs = [n for n in names if n not in rows.columns or rows[n].isna().any()]
    if not needs or rows.empty:
        return rows.assign(_found=True)
    fetched = lookup(rows[key].tolist(), as_of)
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
    threshold: float | None = None  # a binary model's decision threshold (its graph's metadata)

    @classmethod
    def of(cls, session: Any, ctx: StepContext) -> Scorer:
        names = [i.name for i in session.get_inputs()]
        contract, classes = request_contract(ctx.spec, names), model_classes(session)
        threshold = None if classes else session_threshold(session)
        return cls(session, names, classes, contract, ctx.spec.entity.join_key, threshold)

    def score(self, chunk: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(answers, quarantined) of one chunk: each row judged by the contract (column-wise where
        plainly clean, one by one otherwise), the valid ones scored."""
        import numpy as np
        import pandas as pd

        doubtful = np.flatnonzero(~surely_clean(chunk, self.contract, self.names, self.key))
        ids = chunk[self.key].iloc[doubtful].tolist()  # only a doubtful row is judged one by one
        records = chunk.iloc[doubtful][[*self.names, "_found"]].to_dict("records")
        bad = np.zeros(len(chunk), dtype=bool)
        kept = []
        for j, i, r in zip(doubtful, map(_plain, ids), records, strict=True):  # a null id: None, not NA
            reason = row_reasons(self.contract, self.names, r, i, bool(r["_found"]))
            if reason is not None:
                bad[j] = True
                kept.append((str(i), reason))
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
            frame = frame.assign(**answers(answered, self.classes, self.threshold))
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
