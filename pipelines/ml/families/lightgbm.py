"""The LightGBM family: gradient-boosted trees on the raw columns' matrix (NaN routed down each
split's learnt default branch, a category's code as a number). The payload is LightGBM's model text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.families import LIGHTGBM, FamilyCard
from pipelines.ml.families.converted import wrap_converted
from pipelines.ml.families.fitting import Fitting, TrainingData, matrix, require_finite_scores
from pipelines.ml.families.registry import Header, TrainedBase, pack
from pipelines.ml.imbalance import CLASS_WEIGHT, row_weights

if TYPE_CHECKING:
    import onnx
    import pandas as pd

NAME = LIGHTGBM.name
REPORT_EVERY_ROUNDS = 10
"""LightGBM reports (and may be pruned, and checks the deadline) every this many boosting rounds."""
MAX_ROUNDS = 2000


@dataclass
class LightGBMModel(TrainedBase):
    booster: Any

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.booster.predict(matrix(df, self.enc)), dtype=np.float64)

    def to_onnx(self, embedding: bool = False) -> onnx.ModelProto:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        width = len(self.enc.numeric) + len(self.enc.categorical)
        inner = convert_lightgbm(
            self.booster, initial_types=[("X", FloatTensorType([None, width]))], zipmap=False, target_opset=15
        )
        return wrap_converted(inner, self.enc, "mlcycle lightgbm model", self.classes)


def fit_lightgbm(data: TrainingData, params: dict[str, Any], fitting: Fitting) -> tuple[float, bytes]:
    """Boost until the validation metric has not improved for `patience` reports (a report every
    `REPORT_EVERY_ROUNDS` rounds), the pruner stops it, or the deadline; keeps the best round."""
    import lightgbm as lgb

    (x, y), (xv, yv) = data.train_xy, data.val_xy
    objective = {"regression": {"objective": "regression"}, "multiclass": {"objective": "multiclass"}}
    booster_params = {
        **objective.get(fitting.kind, {"objective": "binary"}),
        **({"num_class": len(fitting.classes)} if fitting.kind == "multiclass" else {}),
        "metric": "None",
        "verbosity": -1,
        "seed": fitting.seed,
        "deterministic": True,
        "num_threads": fitting.threads,
        **{k: v for k, v in params.items() if k not in ("max_rounds", CLASS_WEIGHT)},
    }
    stopper = fitting.stopper()
    state = {"best_round": 0, "calls": 0}

    def feval(preds: np.ndarray, _data: Any) -> tuple[str, float, bool]:
        state["calls"] += 1  # only every REPORT_EVERY_ROUNDS-th round is scored (the rest is not read)
        if state["calls"] % REPORT_EVERY_ROUNDS:
            return "primary", math.nan, fitting.higher
        require_finite_scores(preds, state["calls"], "round")
        value = fitting.metric(yv, preds)
        return "primary", value, fitting.higher

    def callback(env: Any) -> None:
        done = env.iteration + 1
        if done % REPORT_EVERY_ROUNDS:
            return
        value = float(env.evaluation_result_list[0][2])
        fitting.log({"val_metric": value}, done)
        if stopper.step(value):
            state["best_round"] = done
        fitting.report(value, done)
        if stopper.should_stop or fitting.out_of_time():
            raise lgb.callback.EarlyStopException(max(0, state["best_round"] - 1), [])

    booster = lgb.train(
        booster_params,
        lgb.Dataset(x, y, weight=row_weights(fitting.class_weights, y), free_raw_data=False),
        num_boost_round=int(params.get("max_rounds", MAX_ROUNDS)),
        valid_sets=[lgb.Dataset(xv, yv, free_raw_data=False)],
        feval=feval,
        callbacks=[callback],
    )
    best_round = state["best_round"] or booster.current_iteration()
    text = float32_thresholds(booster.model_to_string(num_iteration=best_round))
    artifact = pack(NAME, data.enc, {**params, "rounds": best_round}, text.encode(), fitting.classes)
    return float(stopper.best_or_nan), artifact


def float32_thresholds(model_text: str) -> str:
    """LightGBM's split thresholds (doubles) rounded down to float32. ONNX Runtime compares a
    float32 input with a float32 threshold: rounded to nearest, a threshold just below an input
    value can become that value, and `x <= t` flips (seen: 0.003 apart on one row in 300). Rounded
    down, `x <= t` is unchanged for every float32 `x`, so the booster predicts exactly as before
    on float32 inputs and ONNX agrees with it. Pure."""
    lines = []
    for line in model_text.split("\n"):
        if line.startswith("tree_sizes="):
            continue  # the trees' byte sizes change; without them LightGBM reads the trees in order
        if line.startswith("threshold="):
            values = []
            for raw in line.removeprefix("threshold=").split():
                t = float(raw)
                down = np.float32(t)
                if float(down) > t:
                    down = np.nextafter(down, np.float32(-np.inf), dtype=np.float32)
                values.append(repr(float(down)))
            line = "threshold=" + " ".join(values)
        lines.append(line)
    return "\n".join(lines)


class LightGBM:
    card: FamilyCard = LIGHTGBM

    def fit(self, data: TrainingData, params: dict[str, Any], fitting: Fitting) -> tuple[float, bytes]:
        return fit_lightgbm(data, params, fitting)

    def load(self, header: Header, payload: bytes) -> LightGBMModel:
        import lightgbm as lgb

        booster = lgb.Booster(model_str=payload.decode())
        return LightGBMModel(header.family, header.enc, header.params, booster, classes=header.classes)


FAMILY = LightGBM()
