"""The drift check's pure parts: PSI, the two-sample tests, Evidently's results, the verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from operators.trigger import event_extra
from pipelines.core.spec import Drift, Evaluation
from pipelines.ml.metrics import tagged_figure
from pipelines.steps.drift import (
    batch_drift,
    evidently_columns,
    live_performance,
    psi,
    two_sample_test,
    verdict,
)

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
CFG = Drift(min_requests=100, max_drift_share=0.3, psi_threshold=0.2, max_performance_drop=0.05, cooldown_hours=24)


def test_psi_is_near_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    assert psi(ref, rng.normal(0, 1, 5000), categorical=False) < 0.02
    small, large = psi(ref, rng.normal(0.2, 1, 5000), False), psi(ref, rng.normal(1.0, 1, 5000), False)
    assert 0.02 < small < large and large > 0.5
    cats = rng.choice(["a", "b", "c"], 5000)
    assert psi(cats, rng.choice(["a", "b", "c"], 5000), categorical=True) < 0.01
    assert psi(cats, rng.choice(["a", "b", "c"], 5000, p=[0.8, 0.1, 0.1]), categorical=True) > 0.3
    # a category never seen in training counts as drift, not as an error
    assert psi(cats, np.array(["new"] * 100), categorical=True) > 1


def test_two_sample_tests() -> None:
    rng = np.random.default_rng(1)
    same = two_sample_test(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000), categorical=False)
    moved = two_sample_test(rng.normal(0, 1, 2000), rng.normal(0.3, 1, 2000), categorical=False)
    assert same["test"] == "ks" and same["p_value"] > 0.01 and moved["p_value"] < 1e-6
    chi = two_sample_test(np.array(["a", "b"] * 500), np.array(["a"] * 900 + ["b"] * 100), categorical=True)
    assert chi["test"] == "chi2" and chi["p_value"] < 1e-6
    assert two_sample_test(np.array(["a"] * 10), np.array(["a"] * 10), categorical=True)["p_value"] == 1.0


def test_evidently_columns_reads_the_snapshot() -> None:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 400), "c": rng.choice(["a", "b"], 400)})
    cur = pd.DataFrame({"x": rng.normal(2, 1, 300), "c": rng.choice(["a", "b"], 300)})
    definition = DataDefinition(numerical_columns=["x"], categorical_columns=["c"])
    snap = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )
    cols = evidently_columns(snap.dict())
    assert set(cols) == {"x", "c"}
    assert cols["x"]["drifted"] and not cols["c"]["drifted"]
    assert cols["x"]["method"] and isinstance(cols["x"]["score"], float)


def _features(drifted: int, total: int = 10) -> dict[str, dict[str, bool]]:
    return {f"f{i}": {"drifted": i < drifted} for i in range(total)}


def test_verdict() -> None:
    few = verdict(CFG, 99, _features(10), 5.0, None, None, NOW)
    assert few["status"] == "insufficient_data" and not few["retrain"] and "insufficient" in few["reasons"][0]
    calm = verdict(CFG, 500, _features(2), 0.05, None, None, NOW)
    assert calm["status"] == "ok" and not calm["retrain"] and calm["drift_share"] == 0.2
    shifted = verdict(CFG, 500, _features(4), 0.05, None, None, NOW)
    assert shifted["status"] == "drift" and shifted["retrain"] and "4 of 10 features drifted" in shifted["reasons"][0]
    prediction = verdict(CFG, 500, _features(0), 0.3, None, None, NOW)
    assert prediction["retrain"] and "prediction PSI 0.300" in prediction["reasons"][0]
    perf = {"metric": "roc_auc", "value": 0.70, "reference": 0.80, "drop": 0.10, "labelled": 400}
    concept = verdict(CFG, 500, _features(0), 0.01, perf, None, NOW)
    assert concept["status"] == "performance" and concept["retrain"] and "live roc_auc 0.7000" in concept["reasons"][0]
    slight = verdict(CFG, 500, _features(0), 0.01, {**perf, "value": 0.78, "drop": 0.02}, None, NOW)
    assert slight["status"] == "ok"
    cooling = verdict(CFG, 500, _features(5), 0.01, None, NOW - timedelta(hours=3), NOW)
    assert cooling["status"] == "drift" and not cooling["retrain"] and "cooldown" in cooling["reasons"][-1]
    cooled = verdict(CFG, 500, _features(5), 0.01, None, NOW - timedelta(hours=25), NOW)
    assert cooled["retrain"]


def test_live_performance_needs_labels_of_both_classes() -> None:
    cfg = Evaluation()
    rows = [(1, 0.9, 1.0)] * 20 + [(1, 0.1, 0.0)] * 20
    assert live_performance(cfg, rows[:20], 0.8) is None
    assert live_performance(cfg, rows[:29], 0.8) is None
    perf = live_performance(cfg, rows, 0.8)
    assert perf is not None and perf["value"] == pytest.approx(1.0) and perf["drop"] == pytest.approx(-0.2)
    lower_better = live_performance(Evaluation(primary_metric="log_loss"), rows, 0.05)
    assert lower_better is not None and lower_better["drop"] == pytest.approx(lower_better["value"] - 0.05)


def test_the_champions_tag_names_the_metric_its_live_figure_is_judged_by() -> None:
    """A champion promoted on PR AUC by default (a rare positive class) is checked on PR AUC."""
    assert tagged_figure("pr_auc=0.412300") == ("pr_auc", 0.4123)
    assert tagged_figure("") == (None, None) and tagged_figure("roc_auc=x") == ("roc_auc", None)
    name, reference = tagged_figure("pr_auc=0.5")
    # (version, score, label): half the positives ranked first, then 10 negatives, then the rest
    rows = [(1, 0.9, 1.0)] * 5 + [(1, 0.7, 0.0)] * 10 + [(1, 0.5, 1.0)] * 5 + [(1, 0.1, 0.0)] * 20
    perf = live_performance(Evaluation().judged_by(str(name)), rows, reference)
    assert perf is not None and perf["metric"] == "pr_auc" and perf["drop"] == pytest.approx(0.5 - perf["value"])
    assert perf["value"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)  # the precision at each positive found


def test_event_extra_carries_the_reasons() -> None:
    result = {"pipeline": "churn", "status": "drift", "reasons": ["r"], "champion": 3, "requests": 900, "x": 1}
    extra = event_extra(result, "scheduled__2026-11-25")
    assert extra["reasons"] == ["r"] and extra["drift_run_id"] == "scheduled__2026-11-25" and "x" not in extra


def test_expected_drift_is_reported_but_not_counted() -> None:
    """drift.ignore: tenure grows with time; its drift alone is no alarm, and it leaves the share."""
    ignoring = CFG.model_copy(update={"ignore": ["f0", "f1"]})
    features = _features(3)  # f0, f1, f2 drifted
    out = verdict(ignoring, 500, features, 0.05, None, None, NOW)
    assert out["drifted"] == ["f2"] and out["expected_drift"] == ["f0", "f1"]
    assert out["drift_share"] == pytest.approx(1 / 8) and out["status"] == "ok" and not out["retrain"]
    assert verdict(CFG, 500, features, 0.05, None, None, NOW)["retrain"]  # counted, the same is an alarm


def test_event_extra_carries_the_window_and_the_live_metric() -> None:
    perf = {"metric": "roc_auc", "value": 0.61, "reference": 0.8, "drop": 0.19, "labelled": 300}
    result = {
        "pipeline": "churn",
        "status": "performance",
        "reasons": ["live roc_auc"],
        "champion": 1,
        "requests": 900,
        "window_start": "2026-11-25T00:00:00+00:00",
        "window_end": "2026-11-26T00:00:00+00:00",
        "performance": perf,
        "drifted": ["usage_hours_30d"],
    }
    extra = event_extra(result, "manual__1")
    assert extra["window_end"] == "2026-11-26T00:00:00+00:00" and extra["drifted"] == ["usage_hours_30d"]
    assert extra["live_metric"] == {"metric": "roc_auc", "value": 0.61, "reference": 0.8, "labelled": 300}
    assert event_extra({**result, "performance": None}, "manual__1")["live_metric"] is None


def test_a_multiclass_models_prediction_drift_is_on_its_predicted_class() -> None:
    import pandas as pd

    from pipelines.steps.drift import prediction_figures

    reference = pd.DataFrame({"score": [0.9] * 300, "predicted_class": ["red", "white", "rose"] * 100})
    same = pd.DataFrame({"score": [0.5] * 300, "predicted_class": ["white", "rose", "red"] * 100})
    calm = prediction_figures(reference, same, multiclass=True)
    assert calm["on"] == "predicted class" and calm["psi"] < 0.01 and calm["test"] == "chi2"
    assert calm["mean_current"] == 0.5  # the score moved, the classes did not: no prediction drift
    shifted = prediction_figures(
        reference, pd.DataFrame({"score": [0.9] * 300, "predicted_class": ["red"] * 300}), True
    )
    assert shifted["psi"] > 1 and shifted["p_value"] < 1e-6
    assert shifted["shares_current"] == {"red": 1.0} and shifted["shares_reference"]["rose"] == pytest.approx(1 / 3)
    plain = prediction_figures(reference.assign(predicted_class=None), same.assign(predicted_class=None), False)
    assert plain["on"] == "score" and plain["test"] == "ks" and "shares_current" not in plain


PAYLOAD = "</script><script>window.top.__pwned=1</script>"


def test_a_served_category_the_reference_never_held_reaches_the_report_as_unseen_not_as_markup() -> None:
    """A value counted as unseen (`unknown_categories: score`, or a column without `allowed`
    values) that carries markup: Evidently embeds the data in a `<script>` unescaped, so the
    drift step shows it as `(unseen)`; a known value and a null stay."""
    import pandas as pd

    from pipelines.steps.drift import UNSEEN, evidently_report, unseen_as_one

    rng = np.random.default_rng(3)
    reference = pd.DataFrame({"plan": rng.choice(["basic", "pro"], 300), "score": rng.random(300)})
    current = pd.DataFrame({"plan": ["basic", PAYLOAD, None, "pro"] * 50, "score": rng.random(200)})
    shown = unseen_as_one(reference, current, ["plan"])
    assert shown["plan"].tolist()[:4] == ["basic", UNSEEN, None, "pro"]
    assert current["plan"].tolist()[1] == PAYLOAD  # the figures' own frame is left alone
    raw, _ = evidently_report(reference, current, [], ["plan"], 0.5)
    assert PAYLOAD.encode() in raw  # what the step used to write: the value closes Evidently's script
    html, _ = evidently_report(reference, shown, [], ["plan"], 0.5)
    assert b"__pwned" not in html and UNSEEN.encode() in html


def test_a_batch_runs_scores_are_drifted_past_the_psi_threshold_of_the_reference_scores() -> None:
    import pandas as pd

    rng = np.random.default_rng(1)
    reference = pd.DataFrame({"score": rng.beta(2, 5, 4000), "predicted_class": None})
    same = pd.DataFrame({"score": rng.beta(2, 5, 3000), "predicted_class": None})
    moved = pd.DataFrame({"score": rng.beta(5, 2, 3000), "predicted_class": None})
    calm, drifted = batch_drift(reference, "b1", same, False, 0.2), batch_drift(reference, "b2", moved, False, 0.2)
    assert (calm["run_id"], calm["rows"], calm["drifted"], calm["on"]) == ("b1", 3000, False, "score")
    assert drifted["drifted"] and drifted["psi"] > 0.2 > calm["psi"]
    assert drifted["mean_current"] > drifted["mean_reference"] and drifted["test"] == "ks"
    classes = pd.DataFrame({"score": 0.9, "predicted_class": rng.choice(["a", "b"], 4000)})
    flipped = pd.DataFrame({"score": 0.9, "predicted_class": ["c"] * 2000})
    multi = batch_drift(classes, "b3", flipped, True, 0.2)
    assert multi["on"] == "predicted class" and multi["drifted"] and multi["shares_current"] == {"c": 1.0}
