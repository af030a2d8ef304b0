from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from pipelines.core.spec import Evaluation
from pipelines.ml.metrics import (
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
