"""The MLflow pyfunc of a registered mlcycle model: a DataFrame of raw features in, the scores out.

MLflow's own ONNX pyfunc feeds a DataFrame's columns as 1-D arrays and casts only float64, so a
model with one `[n, 1]` input per raw feature (strings for categoricals, float32 for numbers)
refuses a plain DataFrame. This wrapper feeds the ONNX session exactly as the endpoint does and
answers what it scores: the `probabilities` (`[n, K]`) of a multiclass model, else the `score`
(`[n]`). MLflow copies this file into each registered model ("models from code"), so loading one
needs MLflow, ONNX Runtime, NumPy and pandas, not mlcycle; the ONNX file is the model's artifact
`model`, also named by its `onnx` flavor (`mlflow.onnx.load_model` keeps working).
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel

ARTIFACT = "model"
PROBABILITIES = "probabilities"


def onnx_feed(inputs: list[tuple[str, str]], df: pd.DataFrame) -> dict[str, np.ndarray]:
    """One `[n, 1]` tensor per model input from the frame's column of that name: text for a
    `tensor(string)` input, float32 otherwise. A null is fed as every family was trained to read a
    missing value (`pipelines.ml.model.category_strings`, kept in step by a test): NaN for a
    number, the empty string (an unseen category) for text. Pure."""
    missing = [name for name, _ in inputs if name not in df.columns]
    if missing:
        raise ValueError(f"the frame lacks the model's input columns {missing}")
    feed: dict[str, np.ndarray] = {}
    for name, kind in inputs:
        column = df[name]
        if kind == "tensor(string)":
            text = column.astype(object).astype(str).to_numpy(dtype=object)
            text[column.isna().to_numpy()] = ""
            feed[name] = text.reshape(-1, 1)
        else:
            feed[name] = pd.to_numeric(column, errors="raise").to_numpy(dtype=np.float32).reshape(-1, 1)
    return feed


class OnnxScorer(PythonModel):
    """An ONNX Runtime session on the model's ONNX artifact."""

    def load_context(self, context: Any) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(context.artifacts[ARTIFACT], opts, providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, i.type) for i in self.session.get_inputs()]
        names = {o.name for o in self.session.get_outputs()}
        self.output = PROBABILITIES if PROBABILITIES in names else "score"

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        (scores,) = self.session.run([self.output], onnx_feed(self.inputs, frame))
        out = np.asarray(scores, dtype=np.float64)
        return out.reshape(-1) if self.output == "score" else out


mlflow.models.set_model(OnnxScorer())
