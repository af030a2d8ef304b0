"""The regularised linear family: median imputation, scaling and one-hot codes inside a
scikit-learn pipeline before an elastic-net logistic (or least-squares) model fitted by SGD. The
payload is the fitted pipeline in skops' format, loaded with skops' own list of trusted
scikit-learn types plus `TRUSTED_TYPES`: nothing else is built, no pickle runs (an artifact of an
older version, a pickle, is refused)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.errors import ArtifactRefused
from pipelines.core.families import LINEAR, FamilyCard
from pipelines.ml.families.converted import wrap_converted
from pipelines.ml.families.fitting import Fitting, TrainingData, matrix, require_finite_scores, target_scaling
from pipelines.ml.families.registry import Header, TrainedBase, pack
from pipelines.ml.imbalance import row_weights
from pipelines.ml.model import FeatureEncoding

if TYPE_CHECKING:
    import onnx
    import pandas as pd

NAME = LINEAR.name
TRUSTED_TYPES = ["numpy.dtype"]
"""What the fitted pipeline holds beyond the scikit-learn, NumPy and SciPy types skops trusts."""
LINEAR_MAX_PASSES = 50


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


def fit_linear(data: TrainingData, params: dict[str, Any], fitting: Fitting) -> tuple[float, bytes]:
    """Passes of SGD over the prepared training matrix, one report per pass; keeps the best pass.
    A regression model learns the standardised label and is rescaled to the label's units."""
    import copy

    import skops.io

    enc, ((x, y), (xv, yv)) = data.enc, (data.train_xy, data.val_xy)
    regression = fitting.kind == "regression"
    pipeline = linear_pipeline(enc, params, fitting.seed, fitting.kind)
    prepare, model = pipeline.steps[0][1], pipeline.steps[1][1]
    xt, xvt = prepare.fit_transform(x), prepare.transform(xv)
    shift, scale = target_scaling(y) if regression else (0.0, 1.0)
    y_fit = (y - shift) / scale if regression else y
    classes = np.arange(len(fitting.classes)) if fitting.classes else np.array([0, 1])
    fit_args: dict[str, Any] = {} if regression else {"classes": classes}
    weights = row_weights(fitting.class_weights, y)
    if weights is not None:
        fit_args["sample_weight"] = weights
    stopper, best_model = fitting.stopper(), None
    for n in range(1, LINEAR_MAX_PASSES + 1):
        model.partial_fit(xt, y_fit, **fit_args)
        if regression:
            scores = model.predict(xvt) * scale + shift
        else:
            scores = model.predict_proba(xvt) if fitting.classes else model.predict_proba(xvt)[:, 1]
        require_finite_scores(scores, n, "pass")
        value = fitting.metric(yv, scores)
        fitting.log({"val_metric": value}, n)
        if stopper.step(value):
            best_model = copy.deepcopy(model)
        fitting.report(value, n)
        if stopper.should_stop or fitting.out_of_time():
            break
    final = best_model if best_model is not None else model
    if regression:  # y = scale * y_std + shift: the same line in the label's units
        final.coef_ = final.coef_ * scale
        final.intercept_ = final.intercept_ * scale + shift
    pipeline.steps[1] = ("model", final)
    payload = skops.io.dumps(pipeline)
    return float(stopper.best_or_nan), pack(NAME, enc, params, payload, fitting.classes)


class Linear:
    card: FamilyCard = LINEAR

    def fit(self, data: TrainingData, params: dict[str, Any], fitting: Fitting) -> tuple[float, bytes]:
        return fit_linear(data, params, fitting)

    def load(self, header: Header, payload: bytes) -> LinearModel:
        pipeline = load_pipeline(payload)
        return LinearModel(header.family, header.enc, header.params, pipeline, classes=header.classes)


def load_pipeline(payload: bytes) -> Any:
    """The fitted pipeline of a payload in skops' format; `ArtifactRefused` for anything else (a
    pickle of an older version) or a type outside the trusted ones."""
    import zipfile

    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.loads(payload, trusted=TRUSTED_TYPES)
    except zipfile.BadZipFile:
        raise ArtifactRefused(
            "a linear model not in skops' format (a pickle of an older version?): refused; train it again"
        ) from None
    except UntrustedTypesFoundException as err:
        raise ArtifactRefused(f"a linear model holding types outside the trusted ones: {err}") from None


FAMILY = Linear()
