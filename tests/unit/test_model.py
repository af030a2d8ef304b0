from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.io.status import outcome
from pipelines.ml.datagen import CATEGORICAL, NUMERIC
from pipelines.ml.model import (
    build_module,
    encode,
    fit_encoding,
    load_module,
    module_bytes,
    onnx_providers,
    onnx_session,
    predict,
    predict_onnx,
    select_device,
    to_onnx,
)
from pipelines.steps.train import EarlyStopping, remaining_budget, study_name


@pytest.fixture(scope="module")
def fitted(churn_df: pd.DataFrame):  # type: ignore[no-untyped-def]
    enc = fit_encoding(churn_df, list(NUMERIC), list(CATEGORICAL))
    torch.manual_seed(0)
    return enc, build_module(enc, hidden_units=16, layers=2, dropout=0.1)


def test_encoding_is_fitted_on_training_data(churn_df: pd.DataFrame, fitted) -> None:  # type: ignore[no-untyped-def]
    enc, _ = fitted
    assert enc.vocab["plan"] == ["basic", "premium", "standard"]
    assert enc.means[0] == pytest.approx(churn_df["tenure_months"].mean())
    df = churn_df.head(3).copy()
    df.loc[0, "plan"] = "platinum"  # unseen: the unknown bucket
    _, codes = encode(df, enc)
    assert codes[0, 0] == 0
    assert codes[1, 0] == enc.vocab["plan"].index(df.loc[1, "plan"]) + 1


def test_onnx_takes_raw_columns_and_matches_torch(churn_df: pd.DataFrame, fitted) -> None:  # type: ignore[no-untyped-def]
    enc, module = fitted
    session = onnx_session(to_onnx(module, enc).SerializeToString())
    names = {i.name: i.type for i in session.get_inputs()}
    assert names["plan"] == "tensor(string)" and names["tenure_months"] == "tensor(float)"
    assert set(names) == set(NUMERIC) | set(CATEGORICAL)
    df = churn_df.head(300).copy()
    df.loc[0, "region"] = "atlantis"
    torch_p, onnx_p = predict(module, enc, df), predict_onnx(session, df)
    assert np.max(np.abs(torch_p - onnx_p)) < 1e-5
    assert ((onnx_p > 0) & (onnx_p < 1)).all()


@pytest.mark.parametrize(("numeric", "categorical"), [(list(NUMERIC), []), ([], list(CATEGORICAL))])
def test_a_model_of_numeric_or_categorical_features_only_exports_and_matches(
    churn_df: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> None:
    enc = fit_encoding(churn_df, numeric, categorical)
    torch.manual_seed(0)
    module = build_module(enc, hidden_units=8, layers=1)
    x_num, x_cat = encode(churn_df.head(200), enc)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        module(torch.from_numpy(x_num), torch.from_numpy(x_cat)), torch.ones(200)
    )
    loss.backward()  # trainable on its inputs alone
    session = onnx_session(to_onnx(module, enc).SerializeToString())
    assert {i.name for i in session.get_inputs()} == set(numeric) | set(categorical)
    df = churn_df.head(100)
    assert np.max(np.abs(predict(module, enc, df) - predict_onnx(session, df))) < 1e-5
    loaded, _, _ = load_module(module_bytes(module, enc, {"hidden_units": 8, "layers": 1}))
    np.testing.assert_allclose(predict(loaded, enc, df), predict(module, enc, df))


def test_checkpoint_round_trip(churn_df: pd.DataFrame, fitted) -> None:  # type: ignore[no-untyped-def]
    enc, module = fitted
    params = {"hidden_units": 16, "layers": 2, "dropout": 0.1, "learning_rate": 0.01}
    loaded, enc2, params2 = load_module(module_bytes(module, enc, params))
    assert enc2 == enc and params2 == params
    np.testing.assert_allclose(predict(loaded, enc, churn_df.head(50)), predict(module, enc, churn_df.head(50)))


def test_device_selection_on_a_cpu_host() -> None:
    assert select_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert select_device("auto") == "cuda"
    else:
        assert select_device("auto") == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA device"):
            select_device("cuda")


def test_onnx_providers_prefer_cuda() -> None:
    assert onnx_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert onnx_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnx_providers([]) == ["CPUExecutionProvider"]


def test_early_stopping() -> None:
    stop = EarlyStopping(patience=2, higher_is_better=True)
    assert stop.step(0.6) and stop.step(0.7)
    assert not stop.step(0.65) and not stop.should_stop
    assert not stop.step(float("nan")) and stop.should_stop
    assert stop.best_value == 0.7
    low = EarlyStopping(patience=1, higher_is_better=False)
    assert low.step(0.5) and low.step(0.4) and not low.step(0.45)
    assert low.best_value == 0.4 and low.should_stop


def test_small_helpers() -> None:
    assert remaining_budget(10, 4) == 6
    assert remaining_budget(10, 12) == 0
    assert remaining_budget(None, 3) is None
    assert study_name("churn", "r1") == "churn:r1"
    assert outcome("ingest:succeeded validate:failed validate:succeeded features:succeeded") == "ok through features"
    assert outcome("ingest:succeeded validate:failed") == "failed at validate"
    assert outcome("train:succeeded evaluate:succeeded promote:skipped") == "rejected by the gate"
    dry = "dry run: the challenger was trained and evaluated, nothing is registered or served"
    assert outcome("train:succeeded evaluate:succeeded promote:skipped", dry) == "dry run: nothing registered"
