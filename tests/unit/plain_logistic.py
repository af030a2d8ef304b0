"""A model family that exists only in the tests: logistic regression by gradient descent in plain
numpy (median imputation and scaling learnt from the training rows), for binary labels.

It is what the README's "Adding a model family" describes: one module implementing
`pipelines.ml.families.registry.ModelFamily` (a card, `fit`, `load`; the trained model predicts and
exports ONNX behind the shared raw-column front, `converted.wrap_converted`) and one registry line,
`register(FAMILY)`, which a test runs (and `unregister` undoes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from pipelines.core.families import FamilyCard
from pipelines.ml.families.converted import wrap_converted
from pipelines.ml.families.fitting import Fitting, TrainingData, TrialFailed, matrix, require_finite_scores
from pipelines.ml.families.registry import Header, TrainedBase, pack

NAME = "plain_logistic"
PASSES = 80
CARD = FamilyCard(
    NAME,
    frozenset({"learning_rate", "l2"}),
    {
        "learning_rate": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
        "l2": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    },
)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


@dataclass
class PlainLogisticModel(TrainedBase):
    fill: np.ndarray  # per column of the raw matrix: what a missing value becomes
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float

    def standard(self, x: np.ndarray) -> np.ndarray:
        return np.asarray((np.where(np.isnan(x), self.fill, x) - self.mean) / self.std)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return sigmoid(self.standard(matrix(df, self.enc).astype(np.float64)) @ self.weights + self.bias)

    def to_onnx(self, embedding: bool = False) -> onnx.ModelProto:
        """`X` in, `probabilities` ([n, 2]) out, as a converted scikit-learn classifier's graph."""
        consts = {
            "fill": self.fill,
            "mean": self.mean,
            "std": self.std,
            "w": self.weights.reshape(-1, 1),
            "b": np.array([self.bias]),
            "one": np.array([1.0]),
        }
        initializers = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in consts.items()]
        nodes = [
            helper.make_node("IsNaN", ["X"], ["absent"]),
            helper.make_node("Where", ["absent", "fill", "X"], ["filled"]),
            helper.make_node("Sub", ["filled", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["z"]),
            helper.make_node("MatMul", ["z", "w"], ["wz"]),
            helper.make_node("Add", ["wz", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["p"]),
            helper.make_node("Sub", ["one", "p"], ["q"]),
            helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
        ]
        width = len(self.fill)
        graph = helper.make_graph(
            nodes,
            NAME,
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, width])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
            initializer=initializers,
        )
        inner = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return wrap_converted(inner, self.enc, "mlcycle plain logistic model (a test family)")


def fit(data: TrainingData, params: dict[str, Any], fitting: Fitting) -> tuple[float, bytes]:
    """Passes of gradient descent, one report a pass, to early stopping; keeps the best pass."""
    if fitting.kind != "binary":
        raise TrialFailed(f"{NAME} scores binary labels only")
    (x, y), (xv, yv) = data.train_xy, data.val_xy
    x, xv, y = x.astype(np.float64), xv.astype(np.float64), y.astype(np.float64)
    fill = np.nan_to_num(np.nanmedian(x, axis=0)) if len(x) else np.zeros(x.shape[1])
    filled = np.where(np.isnan(x), fill, x)
    mean, std = filled.mean(axis=0), filled.std(axis=0)
    std[std == 0] = 1.0
    model = PlainLogisticModel(NAME, data.enc, params, fill, mean, std, np.zeros(x.shape[1]), 0.0)
    xs, xvs = model.standard(x), model.standard(xv)
    rate, l2 = float(params.get("learning_rate", 0.2)), float(params.get("l2", 1e-3))
    w, b = np.zeros(x.shape[1]), 0.0
    stopper = fitting.stopper()
    for n in range(1, PASSES + 1):
        error = sigmoid(xs @ w + b) - y
        w, b = w - rate * (xs.T @ error / len(y) + l2 * w), b - rate * float(error.mean())
        scores = sigmoid(xvs @ w + b)
        require_finite_scores(scores, n, "pass")
        value = fitting.metric(yv, scores)
        fitting.log({"val_metric": value}, n)
        if stopper.step(value):
            model.weights, model.bias = w.copy(), b
        fitting.report(value, n)
        if stopper.should_stop or fitting.out_of_time():
            break
    payload = {k: np.asarray(getattr(model, k)).tolist() for k in ("fill", "mean", "std", "weights", "bias")}
    return stopper.best_or_nan, pack(NAME, data.enc, params, json.dumps(payload).encode())


class PlainLogistic:
    card: FamilyCard = CARD

    def fit(self, data: TrainingData, params: dict[str, Any], fitting: Fitting) -> tuple[float, bytes]:
        return fit(data, params, fitting)

    def load(self, header: Header, payload: bytes) -> PlainLogisticModel:
        p = json.loads(payload)
        fill, mean, std, weights = (np.asarray(p[k], dtype=np.float64) for k in ("fill", "mean", "std", "weights"))
        return PlainLogisticModel(header.family, header.enc, header.params, fill, mean, std, weights, float(p["bias"]))


FAMILY = PlainLogistic()
