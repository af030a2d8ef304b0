"""Model families of one search: the torch MLP (`pipelines.ml.model`), LightGBM and a regularised
linear model, interchangeable downstream.

* Every family reads the same `FeatureEncoding`. LightGBM and the linear model fit on the raw
  columns' matrix (`matrix`: numeric values as they are, NaN kept; categorical codes, 0 for a
  category unseen in training); the linear model imputes (median), scales and one-hot encodes
  inside its scikit-learn pipeline.
* Missing values: LightGBM routes a NaN down each split's learnt default branch; the linear model
  imputes the training median; the MLP imputes the median and adds a missing indicator inside its
  module (`pipelines.ml.model`). A null category is the unknown code 0 in every family. Each
  family's ONNX graph does the same on the wire convention (NaN, `""`).
* A fit whose loss or scores are not finite raises `TrialFailed` with the reason: the search
  marks the trial failed and never takes it for the best.
* Every family reports intermediate values (epochs, boosting rounds, SGD passes) through
  `Fitting.report`, which the pruner acts on, and stops at `Fitting.deadline` (the search's time
  budget) with the best it has.
* Every family exports ONNX with the same raw-column inputs and `score` output (`wrap_converted`
  puts the shared string-to-code front, `raw_front`, before the converted model), so evaluate,
  promote, the parity check and serving take any family unchanged.
* A trained model travels as one artifact (`pack` / `load_trained`): a JSON header (family,
  encoding, parameters) and the family's payload: the MLP's torch checkpoint, LightGBM's model
  text, the linear pipeline as scikit-learn saves models (pickle; written and read only by our own
  steps, in the run's storage).
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipelines.core.errors import MlcycleError
from pipelines.ml.model import (
    PROBABILITIES,
    FeatureEncoding,
    add_class_outputs,
    embeddings,
    encode,
    load_module,
    module_bytes,
    predict,
    raw_front,
    to_onnx,
)

if TYPE_CHECKING:
    import onnx
    import pandas as pd
    import torch

REPORT_EVERY_ROUNDS = 10
"""LightGBM reports (and may be pruned, and checks the deadline) every this many boosting rounds."""
MAX_ROUNDS = 2000
LINEAR_MAX_PASSES = 50


class TrialFailed(MlcycleError):
    """A trial's loss, scores or metric is not a finite number (e.g. NaN from a missing value):
    the trial fails with this reason and is never the search's best."""


def non_finite_reason(figures: dict[str, float], step: int, unit: str = "epoch") -> str | None:
    """Why a trial fails where one of its figures is not finite (NaN, infinity), else None. Pure."""
    bad = [f"{name} is {value}" for name, value in figures.items() if not math.isfinite(value)]
    return f"{', '.join(bad)} at {unit} {step}" if bad else None


def require_finite(figures: dict[str, float], step: int, unit: str = "epoch") -> None:
    """Raise `TrialFailed` with the reason where a figure is not finite."""
    reason = non_finite_reason(figures, step, unit)
    if reason is not None:
        raise TrialFailed(reason)


def require_finite_scores(scores: np.ndarray, step: int, unit: str) -> None:
    """Raise `TrialFailed` where a model scores a validation row NaN or infinite."""
    bad = int(np.size(scores) - np.count_nonzero(np.isfinite(scores)))
    if bad:
        raise TrialFailed(f"{bad} validation scores are not finite at {unit} {step}")


@dataclass
class Fitting:
    """What a trial's fit needs from the search."""

    metric: Callable[[np.ndarray, np.ndarray], float]
    higher: bool
    seed: int
    patience: int  # reports without improvement before a fit stops
    report: Callable[[float, int], None]  # an intermediate value at a step; raises optuna.TrialPruned when pruned
    log: Callable[[dict[str, float], int], None]
    deadline: float | None = None  # time.monotonic() past which a fit stops with its best so far
    threads: int = 1
    kind: str = "binary"  # the label's: binary (score: probability of 1) or regression (score: the value)
    classes: list[str] = field(default_factory=list)  # a multiclass label's (scores: [n, K] probabilities)

    def better(self, value: float, best: float) -> bool:
        if math.isnan(value):
            return False
        return math.isnan(best) or (value > best if self.higher else value < best)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def matrix(df: pd.DataFrame, enc: FeatureEncoding) -> np.ndarray:
    """The raw columns as one float32 matrix: numeric values (NaN kept), then category codes. Pure."""
    return stack(*encode(df, enc))


def stack(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Encoded numeric values and category codes as one float32 matrix. Pure."""
    return np.hstack([numeric, codes.astype(np.float32)])


# ------------------------------------------------------------------------------------- artifacts
def pack(
    family: str, enc: FeatureEncoding, params: dict[str, Any], payload: bytes, classes: list[str] | None = None
) -> bytes:
    """A trained model as one self-describing artifact (with a multiclass model's class names). Pure."""
    header = json.dumps(
        {"family": family, "encoding": enc.to_dict(), "params": params, "classes": classes or []}, default=str
    )
    return header.encode() + b"\n" + payload


class Trained(Protocol):
    family: str
    enc: FeatureEncoding
    params: dict[str, Any]

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """The scores natively (not through ONNX): probabilities of the positive class, values, or
        a multiclass model's `[n, K]` probabilities."""

    def embeddings(self, df: pd.DataFrame) -> np.ndarray | None:
        """The rows' embeddings natively, None for a family without them."""

    def to_onnx(self, embedding: bool = False) -> onnx.ModelProto:
        """Raw columns in, `score` out (and `embedding`, where the family has it; a multiclass
        model's `probabilities` and `class`)."""


def load_trained(blob: bytes) -> Trained:
    header_bytes, payload = blob.split(b"\n", 1)
    header = json.loads(header_bytes)
    family, enc, params = header["family"], FeatureEncoding.from_dict(header["encoding"]), header["params"]
    classes = list(header.get("classes") or [])
    if family == "tabular_mlp":
        return MLPModel(family, enc, params, load_module(payload)[0], classes=classes)
    if family == "lightgbm":
        import lightgbm as lgb

        return LightGBMModel(family, enc, params, lgb.Booster(model_str=payload.decode()), classes=classes)
    if family == "linear":
        import pickle

        # our own artifact, written by this platform's train step into the run's storage
        return LinearModel(family, enc, params, pickle.loads(payload), classes=classes)  # noqa: S301
    if family == ENSEMBLE:
        members = json.loads(payload)
        return EnsembleModel(
            family,
            enc,
            params,
            [load_trained(base64.b64decode(m["artifact"])) for m in members],
            [float(m["weight"]) for m in members],
            classes=classes,
        )
    raise ValueError(f"unknown model family {family!r} in the artifact")


@dataclass
class TrainedBase:
    """What every family's trained model carries; no embeddings unless the family has them."""

    family: str
    enc: FeatureEncoding
    params: dict[str, Any]
    classes: list[str] = field(default_factory=list, kw_only=True)  # a multiclass model's, in output order

    def embeddings(self, df: pd.DataFrame) -> np.ndarray | None:
        return None


@dataclass
class MLPModel(TrainedBase):
    module: torch.nn.Module

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return predict(self.module, self.enc, df)

    def embeddings(self, df: pd.DataFrame) -> np.ndarray | None:
        return embeddings(self.module, self.enc, df)

    def to_onnx(self, embedding: bool = False) -> onnx.ModelProto:
        return to_onnx(self.module, self.enc, embedding=embedding, classes=self.classes or None)


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


@dataclass
class LinearModel(TrainedBase):
    pipeline: Any

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        x = matrix(df, self.enc)
        if is_regressor(self.pipeline):
            return np.asarray(self.pipeline.predict(x), dtype=np.float64)
        probabilities = np.asarray(self.pipeline.predict_proba(x), dtype=np.float64)
        return probabilities if self.classes else probabilities[:, 1]

    def to_onnx(self, embedding: bool = False) -> onnx.ModelProto:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        width = len(self.enc.numeric) + len(self.enc.categorical)
        options = {} if is_regressor(self.pipeline) else {id(self.pipeline.steps[-1][1]): {"zipmap": False}}
        inner = convert_sklearn(
            self.pipeline,
            initial_types=[("X", FloatTensorType([None, width]))],
            options=options,
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        return wrap_converted(inner, self.enc, "mlcycle linear model", self.classes)


def is_regressor(pipeline: Any) -> bool:
    return not hasattr(pipeline.steps[-1][1], "predict_proba")


def wrap_converted(
    inner: onnx.ModelProto, enc: FeatureEncoding, doc: str, classes: list[str] | None = None
) -> onnx.ModelProto:
    """A converted scikit-learn / LightGBM model (input `X`; output `probabilities` of a
    classifier, `variable` of a regressor) behind the raw-column front: one input per feature
    column, `score` (`[n]`: the positive class's probability, or the predicted value) the only
    output; a multiclass model's (`classes`) outputs are `add_class_outputs`'."""
    import onnx
    from onnx import TensorProto, helper

    inner = onnx.compose.add_prefix(inner, "model/")  # the converter's names never meet ours (it has a `score`)
    nodes, inputs = raw_front(enc)
    parts = []
    if enc.numeric:
        parts.append("numeric")
    if enc.categorical:
        nodes.append(helper.make_node("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT, name="codes_to_float"))
        parts.append("codes_f")
    nodes.append(helper.make_node("Concat", parts, ["model/X"], axis=1, name="concat_x"))
    graph = inner.graph
    kept = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *kept])
    produced = {o for n in kept for o in n.output}
    if classes:
        graph.node.append(helper.make_node("Identity", ["model/probabilities"], [PROBABILITIES], name="probabilities"))
        what = "the classes' probabilities"
    elif "model/probabilities" in produced:
        graph.initializer.append(helper.make_tensor("positive_class", TensorProto.INT64, [], [1]))
        graph.node.append(
            helper.make_node("Gather", ["model/probabilities", "positive_class"], ["score"], axis=1, name="score")
        )
        what = "probability"
    else:
        graph.initializer.append(helper.make_tensor("flat", TensorProto.INT64, [1], [-1]))
        graph.node.append(helper.make_node("Reshape", ["model/variable", "flat"], ["score"], name="score"))
        what = "predicted value"
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.output[:]
    if classes:
        graph.output.append(helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["n", len(classes)]))
        add_class_outputs(inner, classes)
    else:
        graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"]))
    for opset in inner.opset_import:
        if opset.domain == "ai.onnx.ml":
            opset.version = max(opset.version, 2)  # LabelEncoder with string keys
    if not any(o.domain == "ai.onnx.ml" for o in inner.opset_import):
        inner.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    inner.doc_string = f"{doc}: raw feature columns in, {what} out"
    onnx.checker.check_model(inner)
    return inner


# ------------------------------------------------------------------------------------ ensembles
ENSEMBLE = "ensemble"
ENSEMBLE_ROUNDS = 20


def greedy_ensemble(
    scores: dict[str, np.ndarray],
    y: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    higher: bool,
    rounds: int = ENSEMBLE_ROUNDS,
) -> tuple[dict[str, float], float]:
    """Ensemble selection (Caruana et al., 2004): `rounds` times, add (with replacement) the model
    whose score most improves the average's metric on the validation rows. Returns the weights
    (the share of rounds each model was picked) and the average's metric. Pure."""
    names = sorted(scores)
    picks: dict[str, int] = dict.fromkeys(names, 0)
    total = np.zeros(np.shape(scores[names[0]]), dtype=np.float64)  # [n], or [n, K] probabilities
    value = math.nan
    for n in range(1, rounds + 1):
        tried = {name: metric(y, (total + scores[name]) / n) for name in names}
        best = max(tried, key=lambda k: tried[k]) if higher else min(tried, key=lambda k: tried[k])
        picks[best] += 1
        total += scores[best]
        value = tried[best]
    return {name: count / rounds for name, count in picks.items() if count}, float(value)


def pack_ensemble(
    enc: FeatureEncoding, members: list[tuple[bytes, float]], params: dict[str, Any], classes: list[str] | None = None
) -> bytes:
    """Member artifacts and their weights as one artifact. Pure."""
    payload = json.dumps([{"artifact": base64.b64encode(blob).decode(), "weight": w} for blob, w in members])
    return pack(ENSEMBLE, enc, params, payload.encode(), classes)


@dataclass
class EnsembleModel(TrainedBase):
    """A weighted average of other families' models (each with its own preprocessing)."""

    members: list[Any]
    weights: list[float]

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return np.asarray(sum(w * m.predict(df) for m, w in zip(self.members, self.weights, strict=True)))

    def to_onnx(self, embedding: bool = False) -> onnx.ModelProto:
        """One graph: each member's graph under its own prefix, fed the same raw columns, and
        `score` the weighted sum of theirs (a multiclass model's `probabilities`, then its class
        outputs)."""
        import onnx
        from onnx import TensorProto, helper

        graphs = [m.to_onnx() for m in self.members]
        inputs = list(graphs[0].graph.input)
        nodes: list[onnx.NodeProto] = []
        initializers: list[onnx.TensorProto] = []
        opsets: dict[str, int] = {}
        weighted = []
        for i, (graph, weight) in enumerate(zip(graphs, self.weights, strict=True)):
            for o in graph.opset_import:
                opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
            member = onnx.compose.add_prefix(graph, f"m{i}/")
            nodes += [helper.make_node("Identity", [v.name], [f"m{i}/{v.name}"]) for v in inputs]
            nodes += list(member.graph.node)
            initializers += list(member.graph.initializer)
            initializers.append(helper.make_tensor(f"weight_{i}", TensorProto.FLOAT, [], [weight]))
            summed = PROBABILITIES if self.classes else "score"
            nodes.append(helper.make_node("Mul", [f"m{i}/{summed}", f"weight_{i}"], [f"weighted_{i}"]))
            weighted.append(f"weighted_{i}")
        nodes.append(helper.make_node("Sum", weighted, [summed], name=summed))
        shape: list[str | int | None] = ["n", len(self.classes)] if self.classes else ["n"]
        graph = helper.make_graph(
            nodes,
            "mlcycle_ensemble",
            inputs,
            [helper.make_tensor_value_info(summed, TensorProto.FLOAT, shape)],
            initializer=initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())])
        if self.classes:
            add_class_outputs(model, self.classes)
        model.doc_string = "mlcycle ensemble: " + ", ".join(
            f"{m.family} x{w:.2f}" for m, w in zip(self.members, self.weights, strict=True)
        )
        onnx.checker.check_model(model)
        return model


# ------------------------------------------------------------------------------------------- fits
def fit_lightgbm(
    enc: FeatureEncoding,
    params: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    fitting: Fitting,
) -> tuple[float, bytes]:
    """Boost until the validation metric has not improved for `patience` reports (a report every
    `REPORT_EVERY_ROUNDS` rounds), the pruner stops it, or the deadline; keeps the best round."""
    import lightgbm as lgb

    (x, y), (xv, yv) = train, val
    objective = {"regression": {"objective": "regression"}, "multiclass": {"objective": "multiclass"}}
    booster_params = {
        **objective.get(fitting.kind, {"objective": "binary"}),
        **({"num_class": len(fitting.classes)} if fitting.kind == "multiclass" else {}),
        "metric": "None",
        "verbosity": -1,
        "seed": fitting.seed,
        "deterministic": True,
        "num_threads": fitting.threads,
        **{k: v for k, v in params.items() if k != "max_rounds"},
    }
    state = {"best": math.nan, "best_round": 0, "bad": 0, "calls": 0}

    def feval(preds: np.ndarray, data: Any) -> tuple[str, float, bool]:
        state["calls"] += 1  # only every REPORT_EVERY_ROUNDS-th round is scored (the rest is not read)
        if state["calls"] % REPORT_EVERY_ROUNDS:
            return "primary", math.nan, fitting.higher
        require_finite_scores(preds, int(state["calls"]), "round")
        value = fitting.metric(yv, preds)
        return "primary", value, fitting.higher

    def callback(env: Any) -> None:
        done = env.iteration + 1
        if done % REPORT_EVERY_ROUNDS:
            return
        value = float(env.evaluation_result_list[0][2])
        fitting.log({"val_metric": value}, done)
        if fitting.better(value, state["best"]):
            state.update(best=value, best_round=done, bad=0)
        else:
            state["bad"] += 1
        fitting.report(value, done)
        if state["bad"] >= fitting.patience or fitting.out_of_time():
            raise lgb.callback.EarlyStopException(max(0, int(state["best_round"]) - 1), [])

    booster = lgb.train(
        booster_params,
        lgb.Dataset(x, y, free_raw_data=False),
        num_boost_round=int(params.get("max_rounds", MAX_ROUNDS)),
        valid_sets=[lgb.Dataset(xv, yv, free_raw_data=False)],
        feval=feval,
        callbacks=[callback],
    )
    best_round = int(state["best_round"]) or booster.current_iteration()
    text = float32_thresholds(booster.model_to_string(num_iteration=best_round))
    return float(state["best"]), pack("lightgbm", enc, {**params, "rounds": best_round}, text.encode(), fitting.classes)


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


def linear_pipeline(enc: FeatureEncoding, params: dict[str, Any], seed: int, kind: str = "binary") -> Any:
    """Median imputation and scaling of the numeric columns, one-hot codes (an unseen category:
    all zeros), an elastic-net logistic regression (a binary label; one against the rest per
    class for a multiclass one) or least-squares regression (a regression label) fitted by SGD.
    Pure (unfitted)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import SGDClassifier, SGDRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    n_num = len(enc.numeric)
    parts: list[tuple[str, Any, list[int]]] = []
    if enc.numeric:
        numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        parts.append(("numeric", numeric, list(range(n_num))))
    if enc.categorical:
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        parts.append(("categorical", onehot, list(range(n_num, n_num + len(enc.categorical)))))
    regularised = {
        "penalty": "elasticnet",
        "alpha": float(params.get("alpha", 1e-4)),
        "l1_ratio": float(params.get("l1_ratio", 0.15)),
        "random_state": seed,
    }
    model = (
        SGDRegressor(loss="squared_error", **regularised)
        if kind == "regression"
        else SGDClassifier(loss="log_loss", **regularised)
    )
    return Pipeline([("prepare", ColumnTransformer(parts)), ("model", model)])


def fit_linear(
    enc: FeatureEncoding,
    params: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    fitting: Fitting,
) -> tuple[float, bytes]:
    """Passes of SGD over the prepared training matrix, one report per pass; keeps the best pass.
    A regression model learns the standardised label and is rescaled to the label's units."""
    import copy
    import pickle

    (x, y), (xv, yv) = train, val
    regression = fitting.kind == "regression"
    pipeline = linear_pipeline(enc, params, fitting.seed, fitting.kind)
    prepare, model = pipeline.steps[0][1], pipeline.steps[1][1]
    xt, xvt = prepare.fit_transform(x), prepare.transform(xv)
    shift, scale = target_scaling(y) if regression else (0.0, 1.0)
    y_fit = (y - shift) / scale if regression else y
    classes = np.arange(len(fitting.classes)) if fitting.classes else np.array([0, 1])
    fit_args: dict[str, Any] = {} if regression else {"classes": classes}
    best, best_model, bad = math.nan, None, 0
    for n in range(1, LINEAR_MAX_PASSES + 1):
        model.partial_fit(xt, y_fit, **fit_args)
        if regression:
            scores = model.predict(xvt) * scale + shift
        else:
            scores = model.predict_proba(xvt) if fitting.classes else model.predict_proba(xvt)[:, 1]
        require_finite_scores(scores, n, "pass")
        value = fitting.metric(yv, scores)
        fitting.log({"val_metric": value}, n)
        if fitting.better(value, best):
            best, best_model, bad = value, copy.deepcopy(model), 0
        else:
            bad += 1
        fitting.report(value, n)
        if bad >= fitting.patience or fitting.out_of_time():
            break
    final = best_model if best_model is not None else model
    if regression:  # y = scale * y_std + shift: the same line in the label's units
        final.coef_ = final.coef_ * scale
        final.intercept_ = final.intercept_ * scale + shift
    pipeline.steps[1] = ("model", final)
    buf = io.BytesIO()
    pickle.dump(pipeline, buf)
    return float(best), pack("linear", enc, params, buf.getvalue(), fitting.classes)


def target_scaling(y: np.ndarray) -> tuple[float, float]:
    """A regression label's mean and standard deviation (1 where it does not vary). Pure."""
    std = float(np.std(y))
    return float(np.mean(y)), std if std > 0 else 1.0


def mlp_artifact(
    module: torch.nn.Module, enc: FeatureEncoding, params: dict[str, Any], classes: list[str] | None = None
) -> bytes:
    """The MLP's torch checkpoint as an artifact."""
    return pack("tabular_mlp", enc, params, module_bytes(module, enc, params), classes)
