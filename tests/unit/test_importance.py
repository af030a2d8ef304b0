"""Global importances: the primary metric's drop when one feature is shuffled."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.ml.importance import permutation_importances
from pipelines.ml.metrics import metric_functions
from pipelines.steps.evaluate import importance_html


def _world(n: int = 2000, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n)})
    y = (df["a"] + 0.3 * df["c"] + rng.normal(scale=0.5, size=n) > 0).astype(float).to_numpy()
    return df, y


def test_a_feature_the_model_ignores_drops_nothing_and_the_one_it_leans_on_drops_most() -> None:
    df, y = _world()

    def score(frame: pd.DataFrame) -> np.ndarray:  # a model of a and c, blind to b
        return np.asarray(1 / (1 + np.exp(-(2 * frame["a"] + 0.6 * frame["c"]))))

    roc_auc = metric_functions(0.5, "binary")["roc_auc"]
    got = permutation_importances(score, df, y, ["b", "c", "a"], roc_auc, True, repeats=4, rows=1500, seed=3)
    assert got["rows"] == 1500 and got["repeats"] == 4 and got["base"] > 0.85
    by = {f["feature"]: f for f in got["features"]}
    assert [f["feature"] for f in got["features"]] == ["a", "c", "b"]  # largest drop first
    assert by["b"]["drop"] == 0.0 and by["b"]["sd"] == 0.0  # exactly: the scores never change
    assert by["a"]["drop"] > 0.25 and 0 < by["c"]["drop"] < by["a"]["drop"]
    again = permutation_importances(score, df, y, ["b", "c", "a"], roc_auc, True, repeats=4, rows=1500, seed=3)
    assert again == got  # seeded


def test_a_lower_is_better_metric_still_drops_positive_for_a_used_feature() -> None:
    df, _ = _world()
    y = 3.0 * df["a"].to_numpy()

    def score(frame: pd.DataFrame) -> np.ndarray:
        return 3.0 * frame["a"].to_numpy()

    rmse = metric_functions(0.5, "regression")["rmse"]
    got = permutation_importances(score, df, y, ["a", "b"], rmse, False, repeats=2)
    by = {f["feature"]: f["drop"] for f in got["features"]}
    assert got["base"] == pytest.approx(0.0) and by["a"] > 3.0 and by["b"] == 0.0  # rmse of a shuffled: ~3 * sqrt(2)


def test_the_report_shows_each_feature_with_a_bar_in_the_order_of_its_drop() -> None:
    importances = {
        "rows": 900,
        "repeats": 5,
        "base": 0.8,
        "features": [
            {"feature": "tenure", "drop": 0.2, "sd": 0.01},
            {"feature": "<plan>", "drop": 0.05, "sd": 0.002},
            {"feature": "region", "drop": -0.001, "sd": 0.002},
        ],
    }
    page = importance_html(importances, "pr_auc")
    assert "What pr_auc loses when the feature's values are shuffled across 900 test rows" in page
    assert page.index("tenure") < page.index("&lt;plan&gt;") < page.index("region")  # escaped
    assert "width:200px" in page and "width:50px" in page and "width:0px" in page
    assert importance_html(None, "roc_auc") == "" and importance_html({**importances, "features": []}, "x") == ""
