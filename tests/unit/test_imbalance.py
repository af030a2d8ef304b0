"""A rare class handled: balanced class weights, searched where the label is imbalanced and applied
by every family; the decision threshold tuned on validation rows, recorded in the ONNX graph and
served as each binary answer's `class`."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest

from pipelines.core.spec import Evaluation, ModelSpec, Training
from pipelines.ml.datagen import CATEGORICAL, NUMERIC
from pipelines.ml.families import Fitting, TrainingData, family, load_trained
from pipelines.ml.imbalance import (
    DEFAULT_THRESHOLD,
    balanced_weights,
    best_f1,
    binary_threshold,
    fixed_threshold,
    imbalance,
    rarest_share,
    recorded_threshold,
    row_weights,
    session_threshold,
    set_threshold,
    tuned_threshold,
    weightings,
)
from pipelines.ml.metrics import f1_at, metric_functions, pr_auc
from pipelines.ml.model import fit_encoding, onnx_session
from pipelines.ml.search import choose
from serving.records import Instance, Scored, Served


def brute_f1(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """The best F1 over every distinct score as a threshold, and that threshold: the definition."""
    return max((f1_at(float(t))(y, p), float(t)) for t in np.unique(p))


def test_balanced_weights_give_every_class_the_same_total_weight() -> None:
    y = np.array([0] * 95 + [1] * 5)
    w = balanced_weights(y, 0)
    assert w == pytest.approx([100 / (2 * 95), 100 / (2 * 5)])
    per_row = row_weights(w, y)
    assert per_row is not None and per_row[y == 0].sum() == pytest.approx(per_row[y == 1].sum())
    assert row_weights(None, y) is None
    three = np.array([0] * 6 + [1] * 3 + [2] * 1)
    assert balanced_weights(three, 3) * np.bincount(three) == pytest.approx([10 / 3] * 3)
    assert balanced_weights(np.array([0, 0, 2]), 3)[1] == 1.0  # a class without rows: weight 1, no division by 0
    assert rarest_share(y, 0) == 0.05 and rarest_share(three, 3) == 0.1


@pytest.mark.parametrize(
    ("mode", "kind", "positives", "expected"),
    [
        ("auto", "binary", 5, ("none", "balanced")),  # 5 % <= 10 %: the search tries both
        ("auto", "binary", 30, ("none",)),  # balanced enough: never weighed
        ("balanced", "binary", 30, ("balanced",)),
        ("none", "binary", 5, ("none",)),
        ("auto", "regression", 5, ("none",)),
    ],
)
def test_the_search_tries_class_weights_only_where_the_label_is_imbalanced_or_the_spec_says(
    mode: str, kind: str, positives: int, expected: tuple[str, ...]
) -> None:
    y = np.array([1] * positives + [0] * (100 - positives))
    assert weightings(mode, kind, y, 0, Training().imbalance_rate) == expected


def test_a_multiclass_label_is_imbalanced_by_its_rarest_share_against_an_even_split() -> None:
    even = np.repeat(np.arange(12), 50)  # twelve classes, each 1/12 < 0.1 of the rows: balanced all the same
    assert imbalance(even, 12) == 0.5 and weightings("auto", "multiclass", even, 12, 0.1) == ("none",)
    rare = np.array([0] * 60 + [1] * 35 + [2] * 5)  # 5 % where an even split gives each a third
    assert imbalance(rare, 3) == pytest.approx(0.075)
    assert weightings("auto", "multiclass", rare, 3, 0.1) == ("none", "balanced")


def test_choose_searches_class_weight_per_family_or_fixes_it() -> None:
    model = ModelSpec(kind="auto", numeric_features=["x"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: set[Any] = set()
    for _ in range(20):
        trial = study.ask()
        family_name, params = choose(trial, model, ("none", "balanced"))
        seen.add(params["class_weight"])
        assert f"{family_name}.class_weight" in trial.params  # a parameter of the family's own space
        study.tell(trial, 0.5)
    assert seen == {"none", "balanced"}
    pinned = optuna.create_study().ask()
    assert choose(pinned, ModelSpec(numeric_features=["x"]), ("balanced",)) == (
        "tabular_mlp",
        {"class_weight": "balanced"},
    )
    assert "class_weight" not in choose(optuna.create_study().ask(), ModelSpec(numeric_features=["x"]))[1]


@pytest.mark.parametrize("seed", range(5))
def test_the_tuned_threshold_decides_at_the_best_f1_of_the_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.07).astype(int)
    p = np.clip(0.05 + 0.4 * y * rng.random(400) + 0.3 * rng.random(400), 0, 1).round(3)  # ties included
    best, at = brute_f1(y, p)
    assert best_f1(y, p) == pytest.approx(best)
    t = tuned_threshold(y, p)
    assert f1_at(t)(y, p) == pytest.approx(best)  # the served decisions reach the best F1
    assert ((p >= t) == (p >= at)).all()  # and are the best threshold's decisions, row by row
    assert metric_functions("tuned")["f1"](y, p) == pytest.approx(best)  # the search judges a trial so


def test_a_threshold_is_tuned_only_for_a_binary_label_and_a_fixed_one_is_kept() -> None:
    y, p = np.array([0] * 6 + [1] * 6), np.array([0.1] * 5 + [0.2] + [0.3] * 5 + [0.9])
    assert 0.2 < binary_threshold("tuned", y, p) <= 0.3  # every positive, no negative
    assert binary_threshold("tuned", y[2:-2], p[2:-2]) == DEFAULT_THRESHOLD  # four positives: too few
    assert binary_threshold(0.7, y, p) == 0.7
    assert tuned_threshold(np.zeros(4), p) == DEFAULT_THRESHOLD  # nothing to tune on
    assert fixed_threshold("tuned") == DEFAULT_THRESHOLD and fixed_threshold(0.3) == 0.3
    assert Evaluation().threshold == "tuned"
    with pytest.raises(ValueError, match="not in \\(0, 1\\)"):
        Evaluation(threshold=1.5)


@pytest.fixture(scope="module")
def rare(churn_df: pd.DataFrame) -> tuple[TrainingData, pd.DataFrame]:
    """The churn rows with four positives in a hundred."""
    rng = np.random.default_rng(3)
    positives = churn_df[churn_df["churned"] == 1]
    negatives = churn_df[churn_df["churned"] == 0]
    keep = positives.sample(n=max(20, len(negatives) * 4 // 96), random_state=3)
    df = pd.concat([negatives, keep]).sample(frac=1.0, random_state=int(rng.integers(100)))
    train, val = df.iloc[: len(df) * 2 // 3], df.iloc[len(df) * 2 // 3 :]
    enc = fit_encoding(train, list(NUMERIC), list(CATEGORICAL))
    return TrainingData(enc, train, val, "churned", []), val


def fitting(**kw: Any) -> Fitting:
    base: dict[str, Any] = {"metric": pr_auc, "higher": True, "seed": 1, "patience": 3, "max_epochs": 8}
    return Fitting(report=lambda value, step: None, log=lambda metrics, step: None, **{**base, **kw})


@pytest.mark.parametrize("name", ["linear", "lightgbm", "tabular_mlp"])
def test_every_family_trains_with_balanced_weights_and_scores_the_rare_class_up(
    rare: tuple[TrainingData, pd.DataFrame], name: str
) -> None:
    data, val = rare
    assert rarest_share(data.y, 0) < 0.06
    weights = balanced_weights(data.y, 0)
    plain_value, plain = family(name).fit(data, {}, fitting())
    weighed_value, weighed = family(name).fit(data, {"class_weight": "balanced"}, fitting(class_weights=weights))
    chance = rarest_share(data.v_y, 0)  # a PR AUC without skill
    assert plain_value > chance and weighed_value > chance, (chance, plain_value, weighed_value)
    before, after = load_trained(plain).predict(val), load_trained(weighed).predict(val)
    # weighed as much as the common class, the rare one is scored several times more likely
    assert after.mean() > 3 * before.mean(), (before.mean(), after.mean())
    assert load_trained(weighed).params["class_weight"] == "balanced"  # the artifact says how it was fitted


def test_the_threshold_travels_in_the_onnx_graph_and_decides_each_served_answer(
    rare: tuple[TrainingData, pd.DataFrame],
) -> None:
    data, _ = rare
    _, blob = family("linear").fit(data, {}, fitting())
    graph = load_trained(blob).to_onnx()
    set_threshold(graph, 0.25)
    set_threshold(graph, 0.125)  # recorded again: replaced, not doubled
    session = onnx_session(graph.SerializeToString())
    assert session_threshold(session) == 0.125
    assert [p.key for p in graph.metadata_props].count("mlcycle.threshold") == 1
    assert recorded_threshold({}) is None  # a version from before thresholds
    inst = Instance(7, {})
    assert Served(inst, 1, Scored(0.3, {}, label="1")).answer() == {
        "entity_id": 7,
        "version": 1,
        "score": 0.3,
        "class": 1,
    }
    assert "class" not in Served(inst, 1, Scored(0.3, {})).answer()  # a regression model: no decision
    multi = Served(inst, 1, Scored(0.6, {}, label="b", probabilities={"a": 0.4, "b": 0.6})).answer()
    assert multi["class"] == "b" and multi["probabilities"] == {"a": 0.4, "b": 0.6}


def test_live_f1_is_each_versions_at_the_threshold_it_decided_at_not_the_hindsight_best() -> None:
    from pipelines.ml.abtest import compare
    from pipelines.ml.metrics import live_metric

    cfg = Evaluation(primary_metric="f1", bootstrap_samples=50)
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.2).astype(float)
    p = np.clip(0.1 + 0.3 * y + 0.4 * rng.random(200), 0, 1)
    assert live_metric(cfg, "binary", 0.3)(y, p) == f1_at(0.3)(y, p)
    assert live_metric(cfg, "binary")(y, p) == f1_at(DEFAULT_THRESHOLD)(y, p)  # none recorded: the spec's
    assert live_metric(cfg, "binary")(y, p) < best_f1(y, p)  # what the search would have said
    rows = [(1, float(s), float(t)) for s, t in zip(p, y, strict=True)] + [
        (2, float(s), float(t)) for s, t in zip(p, y, strict=True)
    ]
    result = compare(cfg, rows, 1, 2, thresholds={1: 0.5, 2: 0.35})  # the same scores, decided apart
    assert result["champion"]["value"] == f1_at(0.5)(y, p) and result["challenger"]["value"] == f1_at(0.35)(y, p)
    assert result["difference"] == pytest.approx(f1_at(0.35)(y, p) - f1_at(0.5)(y, p))
