from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from pipelines.core.spec import TASK_METRICS, Evaluation
from pipelines.ml.metrics import (
    HIGHER_IS_BETTER,
    baseline,
    baseline_scores,
    beats_baseline,
    bootstrap_difference,
    calibration_error,
    f1_at,
    gate,
    log_loss,
    metric_functions,
    overall,
    roc_auc,
    slices,
)


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, 2000), 0.001, 0.999)
    return y, p


def test_metrics_agree_with_references(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p))
    assert f1_at(0.5)(y, p) == pytest.approx(f1_score(y, p >= 0.5))
    assert np.isnan(roc_auc(np.ones(5), np.linspace(0, 1, 5)))


def test_calibration_error() -> None:
    y = np.array([0, 0, 1, 1] * 250)
    assert calibration_error(y, np.full(1000, 0.5)) == pytest.approx(0.0)
    assert calibration_error(y, np.full(1000, 0.9)) == pytest.approx(0.4)


def test_overall_and_slices(scored: tuple[np.ndarray, np.ndarray]) -> None:
    import pandas as pd

    y, p = scored
    df = pd.DataFrame({"plan": ["a"] * 1000 + ["b"] * 990 + ["c"] * 10})
    result = overall(y, p, 0.5)
    assert set(result) == {"roc_auc", "pr_auc", "log_loss", "f1", "calibration_error"}
    by_plan = slices(df, y, p, ["plan"], 0.5)["plan"]
    assert set(by_plan) == {"a", "b"}  # 'c' has too few rows
    assert by_plan["a"]["rows"] == 1000
    assert by_plan["a"]["roc_auc"] == pytest.approx(roc_auc_score(y[:1000], p[:1000]))


def test_bootstrap_difference(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    same = bootstrap_difference(y, p, p, roc_auc, 200, 0.95)
    assert same["difference"] == 0 and same["lower"] == 0 and same["upper"] == 0
    noisy = np.clip(p + np.random.default_rng(1).normal(0, 0.4, len(p)), 0, 1)
    better = bootstrap_difference(y, p, noisy, roc_auc, 200, 0.95)
    assert better["lower"] > 0 and better["difference"] > better["lower"]
    worse = bootstrap_difference(y, noisy, p, roc_auc, 200, 0.95)
    assert worse["upper"] < 0


def test_gate() -> None:
    cfg = Evaluation(primary_metric="roc_auc", min_primary=0.7, min_improvement=0.01, max_latency_ms_per_row=1.0)
    first = gate(cfg, {"roc_auc": 0.8}, None, None, 0.1)
    assert first["passed"] and "no champion yet" in first["reasons"][1]
    assert not gate(cfg, {"roc_auc": 0.65}, None, None, 0.1)["passed"]
    assert not gate(cfg, {"roc_auc": 0.8}, None, None, 3.0)["passed"]
    champ = {"roc_auc": 0.78}
    beats = gate(
        cfg, {"roc_auc": 0.8}, champ, {"difference": 0.02, "lower": 0.005, "upper": 0.03, "confidence": 0.95}, 0.1
    )
    assert beats["passed"]
    unsure = gate(
        cfg, {"roc_auc": 0.8}, champ, {"difference": 0.02, "lower": -0.004, "upper": 0.04, "confidence": 0.95}, 0.1
    )
    assert not unsure["passed"] and "does not beat the champion" in unsure["reasons"][1]
    small = gate(
        cfg, {"roc_auc": 0.8}, champ, {"difference": 0.005, "lower": 0.001, "upper": 0.01, "confidence": 0.95}, 0.1
    )
    assert not small["passed"]


def test_gate_non_inferiority() -> None:
    cfg = Evaluation(primary_metric="roc_auc", min_primary=0.7, min_improvement=-0.02)
    champ = {"roc_auc": 0.80}
    close = {"difference": -0.005, "lower": -0.015, "upper": 0.005, "confidence": 0.95}
    assert gate(cfg, {"roc_auc": 0.795}, champ, close, None)["passed"]
    far = {"difference": -0.01, "lower": -0.03, "upper": 0.01, "confidence": 0.95}
    assert not gate(cfg, {"roc_auc": 0.79}, champ, far, None)["passed"]


def test_gate_lower_is_better() -> None:
    cfg = Evaluation(primary_metric="log_loss", min_primary=0.4, min_improvement=0.0)
    assert gate(cfg, {"log_loss": 0.3}, None, None, None)["passed"]
    assert not gate(cfg, {"log_loss": 0.5}, None, None, None)["passed"]
    # new - old = -0.02 (better), interval entirely below zero
    better = {"difference": -0.02, "lower": -0.03, "upper": -0.01, "confidence": 0.95}
    assert gate(cfg, {"log_loss": 0.3}, {"log_loss": 0.32}, better, None)["passed"]
    worse = {"difference": 0.02, "lower": 0.01, "upper": 0.03, "confidence": 0.95}
    assert not gate(cfg, {"log_loss": 0.34}, {"log_loss": 0.32}, worse, None)["passed"]


def test_regression_metrics_agree_with_references_and_gate_lower_errors() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(1)
    y = rng.normal(150, 70, 500)
    p = y + rng.normal(0, 40, 500)
    got = overall(y, p, 0.5, "regression")
    assert set(got) == {"rmse", "mae", "r2"}
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)))
    assert got["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert got["r2"] == pytest.approx(r2_score(y, p))
    assert "roc_auc" not in metric_functions(0.5, "regression")
    cfg = Evaluation(primary_metric="rmse", min_primary=None)
    first = gate(cfg, got, None, None, None)
    assert first["passed"] and "no evaluation.min_primary set" in first["reasons"][0]
    better = bootstrap_difference(
        y, y + rng.normal(0, 20, 500), p, metric_functions(0.5, "regression")["rmse"], 200, 0.95
    )
    assert better["upper"] < 0  # a smaller error: the difference is negative, and lower is better
    assert gate(cfg, {"rmse": 20.0}, got, better, None)["passed"]
    assert not gate(Evaluation(primary_metric="rmse", min_primary=30.0), got, None, None, None)["passed"]


def test_multiclass_metrics_agree_with_references_and_take_every_slice_and_bootstrap() -> None:
    import pandas as pd
    from sklearn.metrics import accuracy_score

    from pipelines.ml.metrics import encode_label

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 900)
    logits = rng.normal(0, 1, (900, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = overall(y, p, 0.5, kind="multiclass")
    assert set(result) == {"macro_f1", "accuracy", "multi_log_loss"}
    assert result["macro_f1"] == pytest.approx(f1_score(y, p.argmax(axis=1), average="macro"))
    assert result["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(axis=1)))
    assert result["multi_log_loss"] == pytest.approx(sk_log_loss(y, p, labels=[0, 1, 2]))
    by_region = slices(pd.DataFrame({"region": ["n", "s"] * 450}), y, p, ["region"], 0.5, kind="multiclass")
    assert by_region["region"]["n"]["accuracy"] == pytest.approx(accuracy_score(y[::2], p[::2].argmax(axis=1)))
    worse = np.roll(p, 1, axis=1)  # every row's probabilities on the wrong classes
    diff = bootstrap_difference(y, p, worse, metric_functions(0.5, "multiclass")["macro_f1"], 200, 0.95)
    assert diff["lower"] > 0.3  # rows resampled with their [K] probabilities
    assert list(encode_label(["b", "a", "c"], ["a", "b", "c"])) == [1, 0, 2]
    with pytest.raises(ValueError, match=r"label values \['z'\] are not among the classes"):
        encode_label(["a", "z"], ["a", "b"])


# ------------------------------------------------------------------------------ trivial baselines
def test_each_kinds_baseline_is_fitted_on_the_training_labels_alone() -> None:
    binary = baseline_scores(np.array([0, 1, 1, 1]), 3, "binary")
    assert binary.tolist() == [0.75, 0.75, 0.75]  # the prior
    many = baseline_scores(np.array([2, 2, 0, 2, 1]), 2, "multiclass", classes=4)
    assert many.shape == (2, 4) and many[0].tolist() == [0.2, 0.2, 0.6, 0.0]  # the majority class on top
    assert baseline_scores(np.array([1.0, 2.0, 6.0]), 2, "regression").tolist() == [3.0, 3.0]


def test_the_baseline_figures_are_a_trivial_models_on_the_test_rows() -> None:
    rng = np.random.default_rng(3)
    y_train, y_test = rng.integers(0, 2, 500), rng.integers(0, 2, 300)
    binary = baseline(y_train, y_test, 0.5, "binary")
    assert binary["name"] == "class-prior baseline"
    assert binary["metrics"]["roc_auc"] == 0.5  # one score for every row ranks nothing
    assert binary["metrics"]["log_loss"] == pytest.approx(sk_log_loss(y_test, np.full(300, y_train.mean())))
    y3 = np.array([0] * 60 + [1] * 25 + [2] * 15)
    multi = baseline(y3, y3, 0.5, "multiclass", 3)
    assert multi["name"] == "majority-class baseline"
    assert multi["metrics"]["accuracy"] == pytest.approx(0.6)
    assert multi["metrics"]["macro_f1"] == pytest.approx(2 * 0.6 / 1.6 / 3)  # class 0's F1 and two zeros
    values = rng.normal(100, 10, 400)
    regression = baseline(values[:300], values[300:], 0.5, "regression")
    assert regression["name"] == "training-mean baseline"
    assert regression["metrics"]["rmse"] == pytest.approx(np.sqrt(np.mean((values[300:] - values[:300].mean()) ** 2)))


def test_the_gate_fails_a_model_no_better_than_the_baseline_by_default() -> None:
    cfg = Evaluation(primary_metric="macro_f1", min_primary=None)
    trivial = {"name": "majority-class baseline", "metrics": {"macro_f1": 0.3333}}
    chance = gate(cfg, {"macro_f1": 0.181}, None, None, None, trivial)
    assert not chance["passed"]
    assert "macro_f1 0.1810 is not above the majority-class baseline 0.3333" in chance["reasons"]
    assert chance["baseline"] == {"name": "majority-class baseline", "macro_f1": 0.3333}
    good = gate(cfg, {"macro_f1": 0.91}, None, None, None, trivial)
    assert good["passed"] and "macro_f1 0.9100 beats the majority-class baseline 0.3333" in good["reasons"]
    assert not gate(cfg, {"macro_f1": 0.3333}, None, None, None, trivial)["passed"]  # a tie is no better
    off = Evaluation(primary_metric="macro_f1", min_primary=None, beat_baseline=False)
    assert gate(off, {"macro_f1": 0.181}, None, None, None, trivial)["passed"]
    errors = Evaluation(primary_metric="rmse", min_primary=None)
    mean = {"name": "training-mean baseline", "metrics": {"rmse": 75.0}}
    worse = gate(errors, {"rmse": 80.0}, None, None, None, mean)
    assert not worse["passed"] and "rmse 80.0000 is not below the training-mean baseline 75.0000" in worse["reasons"]
    assert gate(errors, {"rmse": 55.0}, None, None, None, mean)["passed"]


def test_a_baseline_or_a_metric_that_is_not_a_number() -> None:
    nan = float("nan")
    ok, reason = beats_baseline("roc_auc", 0.7, {"name": "class-prior baseline", "metrics": {"roc_auc": nan}})
    assert ok and "not defined on these test rows" in reason  # e.g. test rows of one class
    ok, reason = beats_baseline("r2", nan, {"name": "training-mean baseline", "metrics": {"r2": -0.01}})
    assert not ok and reason == "r2 is nan: the model is not comparable with the training-mean baseline"


def test_the_evaluation_report_shows_the_baseline_beside_the_challenger() -> None:
    from pipelines.steps.evaluate import render_html

    rng = np.random.default_rng(5)
    y_train, y = rng.integers(0, 3, 200), rng.integers(0, 3, 90)
    p = rng.dirichlet(np.ones(3), 90)
    cfg = Evaluation(primary_metric="macro_f1", min_primary=None)
    trivial = baseline(y_train, y, 0.5, "multiclass", 3)
    challenger = overall(y, p, 0.5, "multiclass")
    report = {
        "pipeline": "wine",
        "run_id": "r1",
        "test_rows": 90,
        "challenger": {"metrics": challenger, "slices": {}},
        "champion": None,
        "baseline": trivial,
        "verdict": gate(cfg, challenger, None, None, None, trivial),
    }
    page = render_html(report, "")
    assert "<th>majority-class baseline</th>" in page
    assert f"<td>{trivial['metrics']['macro_f1']:.4f}</td>" in page
    assert "majority-class baseline" in report["verdict"]["reasons"][1]


def test_every_metric_name_of_the_spec_has_a_function_and_a_direction_and_nothing_else_does() -> None:
    for kind, names in TASK_METRICS.items():
        assert tuple(metric_functions(0.5, kind)) == names
    assert set(HIGHER_IS_BETTER) == {name for names in TASK_METRICS.values() for name in names}
