"""What a retraining run carries: the champion's hyperparameters as a warm start, its cause in the
logs and status, and the lineage tags that link a new version to its window and drift check."""

from __future__ import annotations

from pipelines.core.spec import CategoricalParam, FloatParam, IntParam, ModelSpec
from pipelines.io.status import outcome, render_status
from pipelines.ml.search import warm_start
from pipelines.steps.ingest import cause_line
from pipelines.steps.promote import window_tags

SPACE = {
    "learning_rate": FloatParam(type="float", low=1e-4, high=1e-1, log=True),
    "layers": IntParam(type="int", low=1, high=3),
    "hidden_units": CategoricalParam(type="categorical", choices=[32, 64]),
}
MLP = ModelSpec(kind="tabular_mlp", numeric_features=["x"], search_space=SPACE)
AUTO = ModelSpec(kind="auto", numeric_features=["x"], search_spaces={"tabular_mlp": SPACE})


def test_the_champions_hyperparameters_as_a_trial_of_this_space() -> None:
    logged = {"learning_rate": "0.003", "layers": "2", "hidden_units": "64", "dropout": "0.1"}
    assert warm_start(logged, MLP) == {"learning_rate": 0.003, "layers": 2, "hidden_units": 64}
    assert warm_start({**logged, "layers": "5"}, MLP) is None  # the space shrank since
    assert warm_start({**logged, "hidden_units": "128"}, MLP) is None
    assert warm_start({"learning_rate": "0.003", "layers": "2"}, MLP) is None  # a new parameter
    assert warm_start({**logged, "layers": "two"}, MLP) is None
    # a champion of a family this search does not try: no warm start
    assert warm_start({**logged, "family": "lightgbm"}, MLP) is None
    # several families: the champion's family, its parameters under `<family>.<name>` as the study names them
    assert warm_start({**logged, "family": "tabular_mlp"}, AUTO) == {
        "family": "tabular_mlp",
        "tabular_mlp.learning_rate": 0.003,
        "tabular_mlp.layers": 2,
        "tabular_mlp.hidden_units": 64,
    }
    lgbm = {"learning_rate": "0.1", "num_leaves": "31", "min_child_samples": "20", "feature_fraction": "0.8"}
    assert warm_start({**lgbm, "lambda_l2": "1.0", "family": "lightgbm"}, AUTO)["lightgbm.num_leaves"] == 31
    # a search that tries class weights: the champion's weighting (an unweighted one's: none)
    both = ("none", "balanced")
    assert warm_start({**logged, "class_weight": "balanced"}, MLP, both)["class_weight"] == "balanced"
    assert warm_start(logged, MLP, both)["class_weight"] == "none"
    assert warm_start({**logged, "family": "tabular_mlp"}, AUTO, both)["tabular_mlp.class_weight"] == "none"
    assert "class_weight" not in warm_start({**logged, "class_weight": "balanced"}, MLP)  # not searched: left out


def test_the_cause_of_a_retraining_run() -> None:
    cause = {"status": "performance", "reasons": ["live roc_auc 0.61", "2 of 9 features drifted"], "drift_run_id": "d1"}
    assert cause_line(cause) == "retraining because: live roc_auc 0.61; 2 of 9 features drifted (drift check d1)"
    assert cause_line({"status": "drift"}) == "retraining because: drift"
    assert cause_line(None) is None


def test_lineage_links_the_window_and_the_drift_check() -> None:
    ingested = {
        "window": {"start": "2026-08-01T00:00:00+00:00", "end": "2026-11-26T08:00:00+00:00"},
        "feedback_rows": 412,
        "trigger": "asset",
        "cause": {"drift_run_id": "manual__d1", "reasons": ["live roc_auc 0.61"]},
    }
    assert window_tags(ingested) == {
        "mlcycle.data_window": "2026-08-01T00:00:00+00:00 .. 2026-11-26T08:00:00+00:00",
        "mlcycle.feedback_rows": "412",
        "mlcycle.trigger": "asset",
        "mlcycle.drift_check": "manual__d1",
        "mlcycle.retraining_reasons": "live roc_auc 0.61",
    }
    assert window_tags({"window": {"start": None, "end": "e"}}) == {"mlcycle.data_window": "- .. e"}


def test_status_says_why_a_run_retrained_and_when_it_stopped_for_want_of_data() -> None:
    assert outcome("ingest:skipped") == "stopped: no new data"
    status = {
        "pipeline": "churn",
        "model": "mlcycle-churn",
        "champion": {
            "version": 2,
            "metric": "roc_auc=0.81",
            "data_hash": "sha256:ab",
            "since": "t",
            "by": "canary",
            "run_id": "r2",
            "data_window": "a .. b",
            "drift_check": "d1",
        },
        "challenger": None,
        "runs": [
            {
                "run_id": "r2",
                "started": "2026-11-26 08:00:00",
                "outcome": "ok through canary",
                "cause": "retraining because: x",
            }
        ],
    }
    text = render_status(status)
    assert "data window a .. b" in text and "retrained after drift check d1" in text
    assert "      retraining because: x" in text
