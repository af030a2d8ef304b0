from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.io.status import outcome
from pipelines.ml.datagen import CATEGORICAL, NUMERIC
from pipelines.ml.families import EarlyStopping
from pipelines.ml.model import (
    FeatureEncoding,
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
    session_feed,
    to_onnx,
)
from pipelines.ml.search import remaining_budget
from pipelines.steps.train import study_name


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


# --------------------------------------------------------------------------------- missing values
def with_nulls(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A tenth of `tenure_months` and of `plan` null (None in an object column, as Parquet gives)."""
    out = df.copy()
    rng = np.random.default_rng(seed)
    out["plan"] = out["plan"].astype(object)
    out.loc[rng.random(len(out)) < 0.1, "tenure_months"] = np.nan
    out.loc[rng.random(len(out)) < 0.1, "plan"] = None
    return out


def test_missing_numbers_take_the_training_median_and_an_indicator_and_null_categories_no_token(
    churn_df: pd.DataFrame,
) -> None:
    train = with_nulls(churn_df)
    train.loc[train.index[:5], "region"] = "nan"  # the string a null becomes through astype(str)
    enc = fit_encoding(train, list(NUMERIC), list(CATEGORICAL), nullable=["monthly_charges", "plan"])
    i = enc.numeric.index("tenure_months")
    assert enc.medians[i] == pytest.approx(float(np.nanmedian(train["tenure_months"])))
    assert enc.means[i] == pytest.approx(float(train["tenure_months"].mean()))  # of the values present
    # an indicator for each numeric feature the contract lets be null or that had a null in training
    assert enc.missing == ["tenure_months", "monthly_charges"]
    assert all(not set(v) & {"", "nan", "None"} for v in enc.vocab.values())
    assert enc.vocab["plan"] == ["basic", "premium", "standard"]
    rows = churn_df.head(3).copy().astype({"plan": object})
    rows.loc[rows.index[0], "plan"] = None
    rows.loc[rows.index[1], "plan"] = np.nan
    rows.loc[rows.index[2], "region"] = "nan"
    _, codes = encode(rows, enc)
    assert codes[0, 0] == 0 and codes[1, 0] == 0  # a null category is the unseen code
    assert codes[2, enc.categorical.index("region")] == 0


def test_the_mlp_imputes_the_median_inside_the_module_and_onnx_scores_nulls_as_torch(churn_df: pd.DataFrame) -> None:
    train = with_nulls(churn_df)
    enc = fit_encoding(train, list(NUMERIC), list(CATEGORICAL))
    assert enc.missing == ["tenure_months"]
    torch.manual_seed(0)
    module = build_module(enc, hidden_units=16, layers=1, dropout=0.0)
    rows = with_nulls(churn_df.head(400), seed=1)
    rows.loc[rows.index[:40], "monthly_charges"] = np.nan  # null where training had none: no indicator
    native = predict(module, enc, rows)
    assert np.isfinite(native).all()
    charges = enc.numeric.index("monthly_charges")
    filled = rows.copy()
    filled["monthly_charges"] = filled["monthly_charges"].fillna(enc.medians[charges])
    np.testing.assert_allclose(predict(module, enc, filled), native, rtol=1e-6)  # the median, exactly
    tenure = rows["tenure_months"].isna().to_numpy()
    filled["tenure_months"] = filled["tenure_months"].fillna(enc.medians[enc.numeric.index("tenure_months")])
    moved = np.abs(predict(module, enc, filled) - native) > 1e-7
    assert moved[tenure].all() and not moved[~tenure].any()  # the indicator is an input of its own
    session = onnx_session(to_onnx(module, enc, embedding=True).SerializeToString())
    assert np.abs(predict_onnx(session, rows) - native).max() < 1e-5
    loaded, enc2, _ = load_module(module_bytes(module, enc, {"hidden_units": 16, "layers": 1}))
    assert enc2.medians == enc.medians and enc2.missing == enc.missing  # the checkpoint carries them
    np.testing.assert_allclose(predict(loaded, enc2, rows), native)


def test_session_feed_sends_nulls_as_the_graphs_take_them(churn_df: pd.DataFrame, fitted) -> None:  # type: ignore[no-untyped-def]
    enc, module = fitted
    session = onnx_session(to_onnx(module, enc).SerializeToString())
    rows = churn_df.head(3).copy().astype({"plan": object, "tenure_months": object})
    rows.loc[rows.index[0], "plan"] = None
    rows.loc[rows.index[1], "plan"] = np.nan
    rows.loc[rows.index[2], "tenure_months"] = None
    feed = session_feed(session, rows)
    assert list(feed["plan"][:2, 0]) == ["", ""] and feed["plan"].shape == (3, 1)
    assert feed["tenure_months"].dtype == np.float32 and np.isnan(feed["tenure_months"][2, 0])


def test_an_encoding_saved_before_medians_loads_and_imputes_with_its_means(churn_df: pd.DataFrame) -> None:
    enc = fit_encoding(churn_df, list(NUMERIC), list(CATEGORICAL))
    old = {k: v for k, v in enc.to_dict().items() if k not in ("medians", "missing")}
    loaded = FeatureEncoding.from_dict(old)
    assert loaded.missing == [] and loaded.fill == enc.means
    module = build_module(loaded, hidden_units=8, layers=1)
    first = next(p for p in module.parameters() if p.dim() == 2 and p.shape[0] == 8)
    dims = sum(e.embedding_dim for e in module.embeddings)  # type: ignore[union-attr]
    assert first.shape[1] == len(NUMERIC) + dims  # the width of a model trained before
