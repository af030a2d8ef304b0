"""Missing values, handled the same way by every family, offline and in ONNX: a public dataset with
nulls in nullable numeric and categorical columns trains every family through the train step's own
Trainer to a finite loss and a metric above the trivial baseline's, and each family's graph scores
the rows with nulls (NaN, and "" for a null category) as the model does offline. A trial whose loss
is not finite fails with its reason."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from pipelines.core.settings import Settings
from pipelines.core.spec import PipelineSpec, parse_spec
from pipelines.io.storage import LocalStorage
from pipelines.ml.datasets import wine
from pipelines.ml.families import TrialFailed, load_trained, pack_ensemble, require_finite
from pipelines.ml.families.fitting import non_finite_reason
from pipelines.ml.metrics import baseline, encode_label
from pipelines.ml.model import fit_encoding, onnx_session, predict_onnx, session_feed
from pipelines.ml.search import TrialClock, failure_summary
from pipelines.steps.context import StepContext
from pipelines.steps.train import Trainer

WINE_SPEC = Path(__file__).resolve().parents[2] / "include" / "pipelines" / "wine.yaml"
NULLABLE_NUMERIC = ("magnesium", "hue")
TOLERANCE = 1e-4
PARAMS: dict[str, dict[str, Any]] = {
    "linear": {"alpha": 1e-3, "l1_ratio": 0.15},
    "lightgbm": {"learning_rate": 0.1, "num_leaves": 8, "min_child_samples": 5},
    "tabular_mlp": {"hidden_units": 32, "layers": 2, "dropout": 0.0, "learning_rate": 0.01},
}


def nullable_wine_spec() -> PipelineSpec:
    """The bundled wine spec with a derived categorical feature (`color_band`) and three nullable
    columns, sized for a unit test."""
    data = yaml.safe_load(WINE_SPEC.read_text())
    columns = data["contract"]["columns"]
    for name in NULLABLE_NUMERIC:
        columns[name]["nullable"] = True
    columns["color_band"] = {"dtype": "string", "nullable": True, "allowed": ["pale", "medium", "deep"]}
    data["features"]["views"][0]["features"].append("color_band")
    data["model"]["categorical_features"] = ["color_band"]
    data["training"].update({"max_epochs": 40, "early_stopping_patience": 5, "batch_size": 16})
    return parse_spec(data)


def wines_with_nulls(seed: int = 7, end: date = date(2026, 1, 1)) -> pd.DataFrame:
    """The bundled wine data (dated over the six months to `end`), a colour band derived from the
    colour intensity, and about a tenth of two measurements and of the band set to null (seeded)."""
    df = wine(6, end, 3)
    df["color_band"] = pd.cut(df["color_intensity"], [0, 3.5, 7.0, 20], labels=["pale", "medium", "deep"]).astype(
        object
    )
    rng = np.random.default_rng(seed)
    for column in (*NULLABLE_NUMERIC, "color_band"):
        df.loc[rng.random(len(df)) < 0.1, column] = None
    return df


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    df = wines_with_nulls()
    assert all(df[c].isna().mean() > 0.04 for c in (*NULLABLE_NUMERIC, "color_band"))
    return {"train": df.iloc[:110], "val": df.iloc[110:140], "test": df.iloc[140:]}


@pytest.fixture(scope="module")
def trainer(data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    spec = nullable_wine_spec()
    root = tmp_path_factory.mktemp("nulls")
    ctx = StepContext(spec, Settings(state_dir=root), "nulls-1", LocalStorage(root / "artifacts"), "train")
    nullable = [n for n, c in spec.contract.columns.items() if c.nullable]
    enc = fit_encoding(data["train"], spec.model.numeric_features, spec.model.categorical_features, nullable)
    return Trainer(ctx, enc, data["train"], data["val"], "cpu")


@pytest.fixture(scope="module")
def trained(trainer: Trainer) -> dict[str, tuple[float, bytes, list[dict[str, float]]]]:
    """Each family's trial on the data with nulls: its best validation value, artifact and logged metrics."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    out = {}
    for family, params in PARAMS.items():
        trial = study.ask()
        logged: list[dict[str, float]] = []
        clock = TrialClock(trial, trainer.metric_name)
        value, blob = trainer.fit_family(trial, family, params, lambda m, step, into=logged: into.append(m), clock)
        out[family] = (value, blob, logged)
    return out


def test_the_encoding_imputes_and_flags_what_the_contract_lets_be_null(trainer: Trainer) -> None:
    enc = trainer.enc
    assert enc.missing == list(NULLABLE_NUMERIC)  # the contract's nullable numbers, in feature order
    assert enc.vocab["color_band"] == ["deep", "medium", "pale"]  # no null token


@pytest.mark.parametrize("family", list(PARAMS))
def test_every_family_trains_on_nulls_to_a_finite_loss_and_beats_the_majority_class(
    family: str, trainer: Trainer, trained: dict[str, Any], data: dict[str, Any]
) -> None:
    value, blob, logged = trained[family]
    assert logged and all(np.isfinite(v) for m in logged for v in m.values())
    if family == "tabular_mlp":
        assert all("train_loss" in m for m in logged)
    classes = trainer.classes
    y_train = encode_label(data["train"]["cultivar"], classes)
    val_baseline = baseline(y_train, trainer.v_y, 0.5, "multiclass", len(classes))["metrics"]["macro_f1"]
    assert np.isfinite(value) and value > val_baseline + 0.3  # chance-level is about 0.17-0.33
    test = data["test"]
    y = encode_label(test["cultivar"], classes)
    assert test[list(NULLABLE_NUMERIC)].isna().any().all() and test["color_band"].isna().any()
    scored = predict_onnx(onnx_session(load_trained(blob).to_onnx().SerializeToString()), test)
    test_baseline = baseline(y_train, y, 0.5, "multiclass", len(classes))["metrics"]["macro_f1"]
    assert trainer.metric(y, scored) > test_baseline + 0.3


@pytest.mark.parametrize("family", [*PARAMS, "ensemble"])
def test_every_graph_scores_rows_with_nulls_as_the_model_does_offline(
    family: str, trainer: Trainer, trained: dict[str, Any], data: dict[str, Any]
) -> None:
    if family == "ensemble":
        weights = {"linear": 0.2, "lightgbm": 0.5, "tabular_mlp": 0.3}
        members = [(trained[f][1], w) for f, w in weights.items()]
        model = load_trained(pack_ensemble(trainer.enc, members, {"members": weights}, trainer.classes))
    else:
        model = load_trained(trained[family][1])
    rows = pd.concat([data["val"], data["test"]]).copy()
    rows.loc[rows.index[:6], "color_band"] = np.nan  # NaN and None alike: a null category
    rows.loc[rows.index[6:12], "color_band"] = "violet"  # unseen: the same unknown code
    rows.loc[rows.index[12:16], list(NULLABLE_NUMERIC)] = np.nan  # both missing in one row
    native = model.predict(rows)
    assert np.isfinite(native).all()
    session = onnx_session(model.to_onnx().SerializeToString())
    feed = session_feed(session, rows)
    assert "" in set(feed["color_band"][:, 0]) and not {"None", "nan"} & set(feed["color_band"][:, 0])
    assert np.abs(predict_onnx(session, rows) - native).max() <= TOLERANCE
    # the wire convention alone (what serving sends): NaN floats and "" strings, fed by hand
    by_hand = {k: v.copy() for k, v in feed.items()}
    by_hand["color_band"][:16, 0] = ""
    nulls = rows.copy()
    nulls.loc[nulls.index[:16], "color_band"] = None
    (probabilities,) = session.run(["probabilities"], by_hand)
    assert np.abs(probabilities - model.predict(nulls)).max() <= TOLERANCE


def test_a_trial_whose_loss_is_not_finite_fails_with_its_reason(data: dict[str, Any], tmp_path: Path) -> None:
    spec = nullable_wine_spec()
    ctx = StepContext(spec, Settings(state_dir=tmp_path), "nan-1", LocalStorage(tmp_path / "artifacts"), "train")
    train = data["train"].copy()
    train.loc[train.index[:3], "proline"] = np.inf  # not a missing value: nothing imputes it
    enc = fit_encoding(train.iloc[3:], spec.model.numeric_features, spec.model.categorical_features)
    bad = Trainer(ctx, enc, train, data["val"], "cpu")
    trial = optuna.create_study(direction="maximize").ask()
    with pytest.raises(TrialFailed, match=r"train_loss is (nan|inf) at epoch 1$"):
        bad.fit_family(trial, "tabular_mlp", PARAMS["tabular_mlp"], lambda m, step: None, TrialClock(trial, "macro_f1"))


def test_non_finite_figures_and_failed_searches_read_as_reasons() -> None:
    assert non_finite_reason({"train_loss": 0.4, "val_macro_f1": 0.9}, 3) is None
    assert non_finite_reason({"train_loss": float("nan")}, 2) == "train_loss is nan at epoch 2"
    assert non_finite_reason({"a": float("inf"), "b": 1.0, "c": float("-inf")}, 10, "round") == (
        "a is inf, c is -inf at round 10"
    )
    require_finite({"train_loss": 1e30}, 1)
    with pytest.raises(TrialFailed, match="train_loss is nan at epoch 4"):
        require_finite({"train_loss": float("nan")}, 4)
    reasons = ["tabular_mlp: train_loss is nan at epoch 1"] * 3 + [None]
    assert failure_summary(reasons, pruned=2) == (
        "3 failed: tabular_mlp: train_loss is nan at epoch 1; 1 failed: failed without a recorded reason; 2 pruned"
    )
    assert failure_summary([]) == "no trial ran"
