"""bench/quality.py's pure parts: the dataset registry covers the kinds the bench must (binary,
multiclass, regression; categoricals, nulls, a rare positive class, 50,000+ rows), each dataset's
spec is a valid pipeline spec, and a row's delta and interval are the metric's difference on the
same test rows. No training."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import quality  # noqa: E402
import quality_data  # noqa: E402

from pipelines.core.spec.loading import parse_spec  # noqa: E402

END = date(2026, 6, 30)


@pytest.fixture(scope="module")
def frames() -> dict[str, object]:
    return {name: quality_data.dated_rows(d.load(), END) for name, d in quality_data.DATASETS.items()}


def test_the_registry_covers_every_kind_the_bench_needs(frames: dict) -> None:
    datasets = quality_data.DATASETS
    assert len(datasets) >= 8
    assert {d.task for d in datasets.values()} == {"binary", "multiclass", "regression"}
    features = {
        n: [c for c in f.columns if c not in ("row_id", "event_timestamp", datasets[n].label)]
        for n, f in frames.items()
    }
    with_categoricals = {n for n, f in frames.items() if any(f[c].dtype == object for c in features[n])}
    with_nulls = {n for n, f in frames.items() if f[features[n]].isna().any().any()}
    rare = {n for n, d in datasets.items() if d.task == "binary" and frames[n][d.label].mean() <= 0.05}
    large = {n for n, f in frames.items() if len(f) >= 50_000}
    assert {"penguins", "penguins_mass", "diabetes"} <= with_categoricals
    assert {"penguins", "penguins_mass"} <= with_nulls
    assert rare == {"breast_cancer_rare", "digits_rare"}
    assert {datasets[n].primary for n in rare} == {"pr_auc"}
    assert large == {"synthetic_60k"}
    for name, frame in frames.items():
        assert frame["row_id"].is_unique and frame[datasets[name].label].notna().all(), name


def test_the_rare_set_keeps_every_negative_and_few_enough_positives() -> None:
    full = quality_data.breast_cancer()
    rare = quality_data.rare_positives(full, "malignant", 0.05, seed=5)
    assert (rare["malignant"] == 0).sum() == (full["malignant"] == 0).sum() == 357
    assert 0.04 < rare["malignant"].mean() <= 0.05
    again = quality_data.rare_positives(full, "malignant", 0.05, seed=5)
    assert rare.equals(again)


def test_each_dataset_is_a_valid_pipeline_spec_with_its_kinds(frames: dict) -> None:
    for name, dataset in quality_data.DATASETS.items():
        raw = quality_data.spec_for(dataset, frames[name], f"/data/{name}.parquet", 25)
        spec = parse_spec(raw, name)
        assert spec.label.kind == dataset.task and spec.evaluation.primary_metric == dataset.primary
        assert spec.model.kind == "auto" and spec.training.time_budget_s == 25
    penguins = quality_data.spec_for(quality_data.DATASETS["penguins"], frames["penguins"], "/p.parquet", 5)
    assert penguins["model"]["categorical_features"] == ["island", "sex"]
    assert penguins["contract"]["columns"]["sex"] == {"dtype": "string", "nullable": True}
    assert penguins["contract"]["columns"]["species"]["allowed"] == ["Adelie", "Chinstrap", "Gentoo"]


def test_a_row_is_mlcycle_minus_flaml_on_the_same_rows() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400).astype(float)
    good, noisy = y * 0.8 + 0.1, np.clip(y * 0.6 + rng.normal(0.2, 0.3, 400), 0, 1)
    row = quality.quality_row(quality_data.DATASETS["breast_cancer"], 30, y, good, noisy, "lightgbm", samples=200)
    assert set(row) == {"dataset", "task", "metric", "budget_s", "mlcycle", "flaml", "delta", "delta_ci95", "family"}
    assert row["mlcycle"] == 1.0 and row["flaml"] < 1.0
    assert row["delta"] == pytest.approx(row["mlcycle"] - row["flaml"])
    lo, hi = row["delta_ci95"]
    assert 0 < lo <= row["delta"] <= hi
    swapped = quality.quality_row(quality_data.DATASETS["breast_cancer"], 30, y, noisy, good, "linear", samples=200)
    assert swapped["delta"] == pytest.approx(-row["delta"])


def test_a_regression_row_scores_r2() -> None:
    y = np.linspace(0, 10, 200)
    row = quality.quality_row(quality_data.DATASETS["diabetes"], 10, y, y + 1.0, np.full(200, y.mean()), "linear")
    assert row["metric"] == "r2" and row["flaml"] == pytest.approx(0.0)
    assert row["mlcycle"] == pytest.approx(1 - 200 / np.sum((y - y.mean()) ** 2))


def test_flaml_probabilities_land_in_the_platform_class_order() -> None:
    proba = np.array([[0.7, 0.3], [0.1, 0.9]])
    full = quality.class_columns(proba, np.array([0, 2]), 3)
    assert full.tolist() == [[0.7, 0.0, 0.3], [0.1, 0.0, 0.9]]


def test_unknown_dataset_names_are_refused_with_the_known_ones() -> None:
    assert [d.name for d in quality.chosen("wine,iris")] == ["wine", "iris"]
    with pytest.raises(SystemExit, match="breast_cancer"):
        quality.chosen("wine,mnist")
