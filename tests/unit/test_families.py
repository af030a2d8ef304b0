"""Model families: each exports ONNX that matches its own predictions on raw columns (unknown
categories, missing numbers (NaN) and null categories (None, sent as "") included), reports intermediate values that a pruner acts on, and
stops at the search's deadline; the search's budget and per-family figures are pure arithmetic."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from pipelines.core.spec import ModelSpec, default_spaces
from pipelines.ml.datagen import CATEGORICAL, NUMERIC
from pipelines.ml.families import Fitting, TrainingData, greedy_ensemble, load_trained, pack_ensemble
from pipelines.ml.families.lightgbm import fit_lightgbm
from pipelines.ml.families.linear import fit_linear
from pipelines.ml.families.mlp import mlp_artifact
from pipelines.ml.metrics import macro_f1, rmse, roc_auc
from pipelines.ml.model import build_module, fit_encoding, onnx_session, predict_onnx, session_feed
from pipelines.ml.search import FamilyPruner, budget_left, choose, family_summary, spent_seconds

TOLERANCE = 1e-4  # the bundled spec's evaluation.onnx_parity_tolerance


@pytest.fixture(scope="module")
def split(churn_df: pd.DataFrame):  # type: ignore[no-untyped-def]
    df = churn_df.copy()
    rng = np.random.default_rng(0)
    df.loc[rng.random(len(df)) < 0.1, "monthly_charges"] = np.nan  # missing values in training too
    train, val = df.iloc[:3000], df.iloc[3000:]
    enc = fit_encoding(train, list(NUMERIC), list(CATEGORICAL))
    return enc, TrainingData(enc, train, val, "churned", []), val


def awkward(val: pd.DataFrame) -> pd.DataFrame:
    """Rows a served model meets: categories never seen in training, and missing numbers."""
    rows = val.head(300).copy()
    rows.loc[rows.index[:40], "plan"] = "platinum"
    rows.loc[rows.index[20:60], "contract"] = "weekly"
    rows.loc[rows.index[50:90], "tenure_months"] = np.nan
    rows["region"] = rows["region"].astype(object)
    rows.loc[rows.index[80:110], "region"] = None  # a null category: the unseen code
    return rows


def fitting(**kw: Any) -> Fitting:
    base: dict[str, Any] = {
        "metric": roc_auc,
        "higher": True,
        "seed": 1,
        "patience": 3,
        "report": lambda value, step: None,
        "log": lambda metrics, step: None,
    }
    return Fitting(**{**base, **kw})


@pytest.mark.parametrize(
    ("fit", "params"),
    [
        (fit_lightgbm, {"learning_rate": 0.1, "num_leaves": 15, "min_child_samples": 10}),
        (fit_linear, {"alpha": 1e-4, "l1_ratio": 0.2}),
    ],
)
def test_each_family_exports_onnx_matching_its_own_predictions_on_awkward_raw_rows(split, fit, params) -> None:  # type: ignore[no-untyped-def]
    _, data, val = split
    value, blob = fit(data, params, fitting())
    assert 0.6 < value <= 1.0
    trained = load_trained(blob)
    rows = awkward(val)
    native = trained.predict(rows)
    session = onnx_session(trained.to_onnx().SerializeToString())
    assert [i.name for i in session.get_inputs()] == list(NUMERIC) + list(CATEGORICAL)  # raw columns, as the MLP
    assert [o.name for o in session.get_outputs()] == ["score"]
    scored = predict_onnx(session, rows)
    assert np.isfinite(native).all() and np.isfinite(scored).all()  # missing values are imputed / routed, not NaN
    assert np.abs(native - scored).max() <= TOLERANCE
    assert len(np.unique(np.round(scored, 6))) > 10  # not a constant
    assert trained.embeddings(rows) is None


def test_the_mlp_artifact_exports_the_same_graph_as_before_and_matches_torch(split) -> None:  # type: ignore[no-untyped-def]
    enc, _, val = split
    torch.manual_seed(0)
    module = build_module(enc, hidden_units=8, layers=1, dropout=0.0)
    trained = load_trained(mlp_artifact(module, enc, {"hidden_units": 8, "layers": 1}))
    rows = awkward(val)  # the MLP imputes missing numbers inside its graph
    session = onnx_session(trained.to_onnx(embedding=True).SerializeToString())
    assert [o.name for o in session.get_outputs()] == ["score", "embedding"]
    assert np.abs(trained.predict(rows) - predict_onnx(session, rows)).max() <= TOLERANCE
    assert trained.embeddings(rows).shape == (len(rows), 8)


def test_an_artifact_of_an_unknown_family_is_refused(split) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = split
    _, blob = fit_linear(data, {}, fitting())
    with pytest.raises(ValueError, match="unknown model family 'forest'"):
        load_trained(blob.replace(b'"family": "linear"', b'"family": "forest"', 1))


@pytest.mark.parametrize("fit", [fit_lightgbm, fit_linear])
def test_every_family_reports_steps_and_stops_when_pruned_or_out_of_time(split, fit) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = split
    steps: list[int] = []

    def prune_at_third(value: float, step: int) -> None:
        steps.append(step)
        assert not math.isnan(value)
        if len(steps) == 3:
            raise optuna.TrialPruned("pruned")

    with pytest.raises(optuna.TrialPruned):
        fit(data, {}, fitting(report=prune_at_third, patience=100))
    assert len(steps) == 3 and steps == sorted(steps)

    reported: list[int] = []
    past = time.monotonic() - 1  # the budget is already spent: the fit ends after its first report
    value, blob = fit(data, {}, fitting(report=lambda v, s: reported.append(s), patience=100, deadline=past))
    assert len(reported) == 1 and not math.isnan(value)
    assert load_trained(blob).predict(pd.DataFrame({c: [1.0] for c in NUMERIC} | {c: ["x"] for c in CATEGORICAL}))


def test_auto_samples_a_family_then_its_own_space() -> None:
    model = ModelSpec(kind="auto", numeric_features=["x"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(30):
        trial = study.ask()
        family, params = choose(trial, model)
        seen[family] = params
        assert set(params) == set(default_spaces()[family])
        assert set(trial.params) == {"family"} | {f"{family}.{p}" for p in params}
        study.tell(trial, 0.5)
    assert set(seen) == {"linear", "lightgbm", "tabular_mlp"}
    pinned = optuna.create_study().ask()
    assert choose(pinned, ModelSpec(numeric_features=["x"])) == ("tabular_mlp", {})  # as before families


def _trial_of(study: optuna.Study, family: str) -> optuna.Trial:
    study.enqueue_trial({"family": family})
    trial = study.ask()
    assert trial.suggest_categorical("family", ["linear", "lightgbm"]) == family
    return trial


def test_the_median_pruner_compares_a_trial_with_its_own_family_only() -> None:
    pruner = FamilyPruner(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for family, value in (("lightgbm", 0.9), ("lightgbm", 0.9), ("linear", 0.6), ("linear", 0.6)):
        t = _trial_of(study, family)
        t.report(value, 0)
        study.tell(t, value)
    linear = _trial_of(study, "linear")
    linear.report(0.65, 0)
    assert not linear.should_prune()  # above its family's median (0.6), below the study's (0.75)
    lgbm = _trial_of(study, "lightgbm")
    lgbm.report(0.65, 0)
    assert lgbm.should_prune()  # below its family's median (0.9)
    plain = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(2, 0))
    for t in study.trials[:4]:
        plain.add_trial(t)
    unfair = _trial_of(plain, "linear")
    unfair.report(0.65, 0)
    assert unfair.should_prune()  # without the family view, linear is judged against lightgbm


def test_the_time_budget_is_what_the_trials_spent_kept_across_attempts() -> None:
    assert spent_seconds([12.5, None, 30.0]) == 42.5  # a trial that recorded nothing yet counts nothing
    assert budget_left(60, 42.5) == 17.5
    assert budget_left(60, 75.0) == 0.0  # spent (a trial overran it): no trial starts
    assert budget_left(None, 75.0) is None


def test_per_family_figures() -> None:
    rows = [
        ("linear", "COMPLETE", 0.70, 1.5, 0),
        ("lightgbm", "COMPLETE", 0.82, 6.0, 1),
        ("lightgbm", "PRUNED", 0.75, 2.0, 2),
        ("lightgbm", "COMPLETE", 0.84, 7.25, 3),
        ("tabular_mlp", "FAIL", None, 3.0, 4),
        ("tabular_mlp", "RUNNING", None, None, 5),
    ]
    out = family_summary(rows, higher=True)
    assert out["lightgbm"] == {
        "trials": 3,
        "complete": 2,
        "pruned": 1,
        "failed": 0,
        "best": 0.84,
        "best_trial": 3,
        "seconds": 15.2,
    }
    assert out["tabular_mlp"] == {
        "trials": 2,
        "complete": 0,
        "pruned": 0,
        "failed": 1,
        "best": None,
        "best_trial": None,
        "seconds": 3.0,
    }
    assert family_summary(rows, higher=False)["lightgbm"]["best"] == 0.82
    assert family_summary(rows, higher=False)["lightgbm"]["best_trial"] == 1


def test_thresholds_rounded_down_to_float32_change_no_prediction_on_float32_inputs(split) -> None:  # type: ignore[no-untyped-def]
    import lightgbm as lgb

    from pipelines.ml.families.lightgbm import float32_thresholds

    _, data, _ = split
    (x, y), (xv, _) = data.train_xy, data.val_xy
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_leaves": 31}, lgb.Dataset(x, y), 60)
    text = booster.model_to_string()
    adjusted = float32_thresholds(text)
    assert adjusted != text
    before = booster.predict(np.vstack([x, xv]))
    after = lgb.Booster(model_str=adjusted).predict(np.vstack([x, xv]))
    assert np.array_equal(before, after)


# ------------------------------------------------------------------------------------ regression
@pytest.fixture(scope="module")
def regression_split():  # type: ignore[no-untyped-def]
    """The bundled diabetes data (a package's own file), a tenth of a measurement missing."""
    from datetime import date

    from pipelines.ml.datasets import diabetes

    df = diabetes(6, date(2026, 1, 1), 7)
    df.loc[np.random.default_rng(0).random(len(df)) < 0.1, "bmi"] = np.nan
    numeric = ["age", "bmi", "blood_pressure", "total_cholesterol", "ldl", "hdl", "log_triglycerides", "glucose"]
    train, val = df.iloc[:340], df.iloc[340:]
    enc = fit_encoding(train, numeric, ["sex"])
    return enc, TrainingData(enc, train, val, "progression", []), val


def awkward_patients(val: pd.DataFrame) -> pd.DataFrame:
    rows = val.copy()
    rows.loc[rows.index[:15], "sex"] = "3"  # a code never seen in training
    rows.loc[rows.index[10:30], "glucose"] = np.nan
    rows.loc[rows.index[25:35], "sex"] = None
    return rows


@pytest.mark.parametrize(
    ("fit", "params"),
    [
        (fit_lightgbm, {"learning_rate": 0.05, "num_leaves": 8, "min_child_samples": 10}),
        (fit_linear, {"alpha": 1e-4, "l1_ratio": 0.2}),
    ],
)
def test_a_regression_family_predicts_values_and_its_onnx_matches_them_on_awkward_rows(
    regression_split, fit, params
) -> None:  # type: ignore[no-untyped-def]
    _, data, val = regression_split
    (_, y), (_, yv) = data.train_xy, data.val_xy
    baseline = rmse(yv, np.full(len(yv), y.mean()))  # predicting the training mean
    value, blob = fit(data, params, fitting(metric=rmse, higher=False, kind="regression", patience=5))
    assert value < 0.9 * baseline  # learnt something: an RMSE in the label's units, below the mean's
    trained = load_trained(blob)
    rows = awkward_patients(val)
    native = trained.predict(rows)
    assert 25 < native.mean() < 350  # values in the label's units, not probabilities
    session = onnx_session(trained.to_onnx().SerializeToString())
    assert [o.name for o in session.get_outputs()] == ["score"]
    scored = predict_onnx(session, rows)
    assert np.isfinite(scored).all()
    assert np.abs(native - scored).max() <= TOLERANCE * max(1.0, float(np.abs(native).max()))


def test_a_regression_mlp_scales_its_head_to_the_label_and_onnx_matches_torch(regression_split) -> None:  # type: ignore[no-untyped-def]
    enc, _, val = regression_split
    torch.manual_seed(0)
    module = build_module(enc, hidden_units=8, layers=1, dropout=0.0, target=(150.0, 75.0))
    trained = load_trained(mlp_artifact(module, enc, {"hidden_units": 8, "layers": 1}))
    assert trained.module.regression  # the target's scaling travels with the artifact
    rows = awkward_patients(val)
    native = trained.predict(rows)
    assert abs(native.mean() - 150.0) < 75.0  # an untrained head is near the label's mean, not in [0, 1]
    scored = predict_onnx(onnx_session(trained.to_onnx().SerializeToString()), rows)
    assert np.abs(native - scored).max() <= TOLERANCE * 150.0


# ------------------------------------------------------------------------------------- ensembles
def test_greedy_ensemble_picks_complementary_models_and_keeps_one_that_needs_no_help() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000).astype(float)
    a, b = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)  # two models' independent errors
    scores = {"first": y + a, "second": y + b, "noise": rng.normal(0, 1, 2000)}
    weights, value = greedy_ensemble(scores, y, roc_auc, higher=True)
    assert set(weights) == {"first", "second"} and sum(weights.values()) == pytest.approx(1.0)
    assert value > max(roc_auc(y, scores["first"]), roc_auc(y, scores["second"])) + 0.02  # averaging pays
    alone, _ = greedy_ensemble({"exact": y, "noise": scores["noise"]}, y, roc_auc, higher=True)
    assert alone == {"exact": 1.0}
    lower, _ = greedy_ensemble({"close": y + 0.1, "far": y + 5.0}, y, rmse, higher=False)
    assert lower == {"close": 1.0}


@pytest.mark.parametrize("kind", ["binary", "regression"])
def test_an_ensemble_exports_one_onnx_graph_matching_its_weighted_members(split, regression_split, kind) -> None:  # type: ignore[no-untyped-def]
    enc, data, val = split if kind == "binary" else regression_split
    metric, higher, rows = (roc_auc, True, awkward(val)) if kind == "binary" else (rmse, False, awkward_patients(val))
    fit = fitting(metric=metric, higher=higher, kind=kind)
    _, trees = fit_lightgbm(data, {"learning_rate": 0.1, "num_leaves": 8}, fit)
    _, line = fit_linear(data, {}, fit)
    torch.manual_seed(0)
    target = (150.0, 75.0) if kind == "regression" else None
    mlp = mlp_artifact(
        build_module(enc, hidden_units=8, layers=1, target=target), enc, {"hidden_units": 8, "layers": 1}
    )
    blob = pack_ensemble(enc, [(trees, 0.5), (line, 0.3), (mlp, 0.2)], {"members": {"lightgbm": 0.5}})
    model = load_trained(blob)
    assert model.family == "ensemble" and model.embeddings(rows) is None
    assert rows[enc.numeric].isna().any().any()  # every member scores missing values
    members = [load_trained(b).predict(rows) for b in (trees, line, mlp)]
    native = model.predict(rows)
    assert np.allclose(native, 0.5 * members[0] + 0.3 * members[1] + 0.2 * members[2])
    session = onnx_session(model.to_onnx().SerializeToString())
    assert [i.name for i in session.get_inputs()] == enc.numeric + enc.categorical  # the raw columns, once
    assert [o.name for o in session.get_outputs()] == ["score"]
    scale = 1.0 if kind == "binary" else float(np.abs(native).max())
    assert np.abs(native - predict_onnx(session, rows)).max() <= TOLERANCE * scale


# ------------------------------------------------------------------------------------ multiclass
@pytest.fixture(scope="module")
def multiclass_split():  # type: ignore[no-untyped-def]
    """The bundled wine data (a package's own file: three cultivars), with a categorical column
    (the cellar, unrelated to the cultivar) and a tenth of one measurement missing."""
    from datetime import date

    from pipelines.ml.datasets import WINE_CULTIVARS, wine

    df = wine(6, date(2026, 1, 1), 3)
    rng = np.random.default_rng(0)
    df["cellar"] = rng.choice(["north", "south", "east"], len(df))
    df.loc[rng.random(len(df)) < 0.1, "magnesium"] = np.nan
    numeric = ["alcohol", "malic_acid", "magnesium", "flavanoids", "color_intensity", "hue", "proline"]
    train, val = df.iloc[:120], df.iloc[120:]
    enc = fit_encoding(train, numeric, ["cellar"])
    classes = list(WINE_CULTIVARS)
    return enc, TrainingData(enc, train, val, "cultivar", classes), val, classes


def awkward_wines(val: pd.DataFrame) -> pd.DataFrame:
    rows = val.copy()
    rows.loc[rows.index[:10], "cellar"] = "cave"  # a category never seen in training
    rows.loc[rows.index[5:15], "hue"] = np.nan
    rows.loc[rows.index[12:20], "cellar"] = None
    return rows


def multiclass_fitting(classes: list[str]) -> Fitting:
    return fitting(metric=macro_f1, higher=True, kind="multiclass", classes=classes, patience=5)


@pytest.mark.parametrize(
    ("fit", "params"),
    [
        (fit_lightgbm, {"learning_rate": 0.1, "num_leaves": 8, "min_child_samples": 5}),
        (fit_linear, {"alpha": 1e-3, "l1_ratio": 0.2}),
    ],
)
def test_a_multiclass_family_answers_every_class_probability_and_its_onnx_names_the_class(
    multiclass_split, fit, params
) -> None:  # type: ignore[no-untyped-def]
    _, data, val, classes = multiclass_split
    value, blob = fit(data, params, multiclass_fitting(classes))
    assert value > 0.8  # three cultivars told apart (chance: about 0.33)
    trained = load_trained(blob)
    assert trained.classes == classes  # the class names travel in the artifact
    rows = awkward_wines(val)
    native = trained.predict(rows)
    assert native.shape == (len(rows), 3) and np.allclose(native.sum(axis=1), 1.0)
    session = onnx_session(trained.to_onnx().SerializeToString())
    assert [o.name for o in session.get_outputs()] == ["score", "probabilities", "class"]
    probabilities = predict_onnx(session, rows)
    assert np.abs(native - probabilities).max() <= TOLERANCE
    score, names = session.run(["score", "class"], session_feed(session, rows))
    assert list(names) == [classes[i] for i in np.argmax(native, axis=1)]
    assert np.abs(score - native.max(axis=1)).max() <= TOLERANCE
    assert json.loads(session.get_modelmeta().custom_metadata_map["mlcycle.classes"]) == classes


def test_a_multiclass_mlp_and_an_ensemble_of_families_export_the_same_outputs(multiclass_split) -> None:  # type: ignore[no-untyped-def]
    enc, data, val, classes = multiclass_split
    torch.manual_seed(0)
    module = build_module(enc, hidden_units=8, layers=1, dropout=0.0, classes=3)
    mlp = mlp_artifact(module, enc, {"hidden_units": 8, "layers": 1}, classes)
    trained = load_trained(mlp)
    rows = awkward_wines(val)
    native = trained.predict(rows)
    assert native.shape == (len(rows), 3) and np.allclose(native.sum(axis=1), 1.0, atol=1e-6)
    session = onnx_session(trained.to_onnx(embedding=True).SerializeToString())
    assert [o.name for o in session.get_outputs()] == ["score", "probabilities", "class", "embedding"]
    assert np.abs(native - predict_onnx(session, rows)).max() <= TOLERANCE
    fit = multiclass_fitting(classes)
    _, trees = fit_lightgbm(data, {"learning_rate": 0.1, "num_leaves": 8, "min_child_samples": 5}, fit)
    _, line = fit_linear(data, {}, fit)
    model = load_trained(pack_ensemble(enc, [(trees, 0.5), (line, 0.3), (mlp, 0.2)], {}, classes))
    blended = model.predict(rows)
    members = [load_trained(b).predict(rows) for b in (trees, line, mlp)]
    assert np.allclose(blended, 0.5 * members[0] + 0.3 * members[1] + 0.2 * members[2])
    session = onnx_session(model.to_onnx().SerializeToString())
    assert [o.name for o in session.get_outputs()] == ["score", "probabilities", "class"]
    assert np.abs(blended - predict_onnx(session, rows)).max() <= TOLERANCE
    (names,) = session.run(["class"], session_feed(session, rows))
    assert list(names) == [classes[i] for i in np.argmax(blended, axis=1)]


def test_greedy_ensemble_weighs_class_probabilities() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    exact = np.eye(3)[y] * 0.6 + 0.4 / 3
    noise = rng.dirichlet(np.ones(3), 600)
    weights, value = greedy_ensemble({"exact": exact, "noise": noise}, y, macro_f1, higher=True)
    assert weights == {"exact": 1.0} and value == 1.0


def test_an_ensemble_is_exported_only_for_a_gain_worth_its_latency() -> None:
    from pipelines.ml.search import ensemble_pays

    assert ensemble_pays(0.8300, 0.8280, higher=True, min_gain=0.001)  # +0.0020 > 0.1 % of 0.828
    assert not ensemble_pays(0.82643, 0.82638, higher=True, min_gain=0.001)  # +0.00005: not worth 3x latency
    assert ensemble_pays(0.82643, 0.82638, higher=True, min_gain=0.0)
    assert not ensemble_pays(0.8280, 0.8280, higher=True, min_gain=0.0)  # a tie is no gain
    assert ensemble_pays(49.0, 50.0, higher=False, min_gain=0.001) and not ensemble_pays(49.99, 50.0, False, 0.001)
