"""train -> evaluate -> promote on real MLflow tracking and Optuna storage in the platform database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest

from pipelines.core.errors import StepSkipped
from pipelines.core.settings import Settings
from pipelines.core.spec import parse_spec
from pipelines.io import db
from pipelines.io.registry import audit, model_name
from pipelines.io.runs import render_run, run_steps
from pipelines.io.tracking import code_version, setup_mlflow
from pipelines.ml.families.fitting import CHECKPOINT_SHA256
from tests.integration.helpers import run, run_through, small_spec, step_process

pytestmark = pytest.mark.integration

LIFECYCLE = ("ingest", "validate", "features", "train", "evaluate", "promote")
FAST = {"n_trials": 4, "max_epochs": 5, "early_stopping_patience": 2, "pruner": "median", "batch_size": 128, "seed": 3}
EVAL = {
    "primary_metric": "roc_auc",
    "min_primary": 0.6,
    "min_improvement": 0.0,
    "bootstrap_samples": 200,
    "slices": ["plan", "contract"],
    "max_latency_ms_per_row": 50.0,
    "onnx_parity_tolerance": 0.0001,
}
SOURCE = {"kind": "synthetic", "customers": 700, "months": 10, "seed": 5}


def _spec(settings: Settings, name: str, **overrides: Any) -> None:
    small_spec(
        settings,
        overrides.pop("source", SOURCE),
        name=name,
        training=overrides.pop("training", FAST),
        evaluation=overrides.pop("evaluation", EVAL),
        **overrides,
    )


def test_first_model_becomes_champion_with_lineage(workspace: Settings) -> None:
    _spec(workspace, "churn_first")
    out = run_through(workspace, "first-1", LIFECYCLE, pipeline="churn_first")
    name = model_name("churn_first")
    promoted = out["promote"]
    assert promoted["version"] == 1
    assert promoted["aliases"] == ["challenger", "champion"]
    assert promoted["parity"]["passed"] and promoted["parity"]["max_abs_diff"] <= 1e-4

    setup_mlflow(workspace, "churn_first")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(name, "champion")
    tags = champion.tags
    assert tags["mlcycle.data_hash"] == out["ingest"]["content_hash"]
    assert tags["mlcycle.feature_service"] == "churn_features_v1"
    assert tags["mlcycle.run_id"] == "first-1"
    assert tags["mlcycle.code_version"] == code_version(workspace) != "unknown"
    assert tags["mlcycle.training_run"] == out["train"]["mlflow_run_id"]
    assert tags["mlcycle.verdict"] == "passed"

    # The parent run carries the lineage; every trial is a child run with per-epoch metrics.
    parent = client.get_run(out["train"]["mlflow_run_id"])
    assert parent.data.tags["mlcycle.data_hash"] == out["ingest"]["content_hash"]
    assert parent.data.tags["mlcycle.verdict"] == "passed"
    assert parent.data.tags["mlcycle.best_trial"] == str(out["train"]["best_trial"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    trials = out["train"]["trials"]
    assert len(children) == trials["complete"] + trials["pruned"] == FAST["n_trials"]
    assert {c.data.tags["mlcycle.trial_state"] for c in children} <= {"complete", "pruned"}
    assert {c.info.status for c in children} == {"FINISHED"}  # a pruned trial too: it stopped as asked
    history = client.get_metric_history(children[0].info.run_id, "val_roc_auc")
    assert len(history) >= 1 and [m.step for m in history] == list(range(len(history)))

    rows = audit(workspace, "churn_first")
    assert [(r["alias"], r["from_version"], r["to_version"]) for r in rows] == [
        ("challenger", None, 1),
        ("champion", None, 1),
    ]
    assert all(r["actor"] == "churn_first/first-1/promote" for r in rows)

    from pipelines.local.follow import without_champion

    assert without_champion(workspace, "churn_first", "first-1", "success") is None  # the links show the endpoint

    # A retry of promote reuses the version it registered and moves no alias.
    again = run(workspace, "promote", "first-1", pipeline="churn_first")
    assert again["version"] == 1
    assert len(audit(workspace, "churn_first")) == 2

    # The registered model carries a signature and an input example, and MLflow's pyfunc, loaded by
    # the alias, scores a plain DataFrame of raw features (ints, floats, text, extra columns) as the
    # ONNX model the endpoint loads does.
    import numpy as np

    from pipelines.io.registry import load_onnx_model
    from pipelines.io.storage import open_storage, read_parquet
    from pipelines.ml.model import onnx_session, predict_onnx

    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    signature = pyfunc.metadata.get_input_schema()
    assert signature is not None and "plan" in signature.input_names()
    assert pyfunc.metadata.saved_input_example_info is not None  # an input example of raw features
    assert {"onnx", "python_function"} <= set(pyfunc.metadata.flavors)
    test = read_parquet(open_storage(workspace), "churn_first/first-1/features/test.parquet")
    raw = test.drop(columns=["churned"]).head(200).reset_index(drop=True)
    assert raw["tenure_months"].dtype.kind == "i" and raw["plan"].dtype == object
    got = pyfunc.predict(raw)
    session = onnx_session(load_onnx_model(workspace, "churn_first", name, 1))
    expected = predict_onnx(session, raw)
    assert isinstance(got, np.ndarray) and got.shape == (200,)
    np.testing.assert_allclose(got, expected.reshape(-1), rtol=0, atol=1e-6)


def test_a_worse_model_is_rejected_and_the_champion_stays(workspace: Settings) -> None:
    _spec(workspace, "churn_gate")
    run_through(workspace, "gate-1", LIFECYCLE, pipeline="churn_gate")
    before = audit(workspace, "churn_gate")
    # Same data, a crippled search: one epoch at a learning rate too small to learn anything.
    crippled = churn_spec_search({"learning_rate": {"type": "float", "low": 1e-7, "high": 1.1e-7}})
    _spec(workspace, "churn_gate", training={**FAST, "n_trials": 2, "max_epochs": 1, "pruner": "none"}, model=crippled)
    out = run_through(workspace, "gate-2", LIFECYCLE[:5], pipeline="churn_gate")
    verdict = out["evaluate"]["verdict"]
    assert verdict["passed"] is False
    assert out["evaluate"]["champion_version"] == 1
    assert any("does not beat the champion" in r for r in verdict["reasons"])
    with pytest.raises(StepSkipped, match="the champion stays"):
        run(workspace, "promote", "gate-2", pipeline="churn_gate")
    setup_mlflow(workspace, "churn_gate")
    client = mlflow.MlflowClient()
    assert int(client.get_model_version_by_alias(model_name("churn_gate"), "champion").version) == 1
    assert len(client.search_model_versions(f"name = '{model_name('churn_gate')}'")) == 1
    assert audit(workspace, "churn_gate") == before
    with db.connect(workspace) as conn:
        status = conn.execute(
            "SELECT status FROM step_runs WHERE pipeline='churn_gate' AND run_id='gate-2' AND step='promote'"
        ).fetchone()
    assert status == ("skipped",)


def churn_spec_search(space: dict[str, Any]) -> dict[str, Any]:
    from tests.conftest import churn_spec_dict

    model = churn_spec_dict()["model"]
    model["search_space"] = space
    return model


def _checkpointed(settings: Settings, study: str, number: int) -> bool:
    """Whether trial `number` recorded a checkpoint's sha256 (a file written but not yet recorded
    is not one a resume may use: the trial starts over)."""
    with db.connect(settings) as conn:
        if conn.execute("SELECT to_regclass('optuna.trial_user_attributes')").fetchone() == (None,):
            return False
        row = conn.execute(
            "SELECT 1 FROM optuna.trial_user_attributes a JOIN optuna.trials t ON t.trial_id = a.trial_id"
            " JOIN optuna.studies s ON s.study_id = t.study_id"
            " WHERE s.study_name = %s AND t.number = %s AND a.key = %s",
            (study, number, CHECKPOINT_SHA256),
        ).fetchone()
    return row is not None


def _finished(settings: Settings, study: str) -> dict[int, float]:
    with db.connect(settings) as conn:
        if conn.execute("SELECT to_regclass('optuna.trial_values')").fetchone() == (None,):
            return {}  # the study's tables are not created yet
        rows = conn.execute(
            "SELECT t.number, v.value FROM optuna.trials t JOIN optuna.studies s ON s.study_id = t.study_id"
            " JOIN optuna.trial_values v ON v.trial_id = t.trial_id"
            " WHERE s.study_name = %s AND t.state = 'COMPLETE'",
            (study,),
        ).fetchall()
    return {int(n): float(v) for n, v in rows}


def _start_train(settings: Settings, pipeline: str) -> subprocess.Popen[str]:
    """Run kill-1's data steps, then start its train step as a process of its own (to be killed)."""
    run_through(settings, "kill-1", ("ingest", "validate", "features"), pipeline=pipeline)
    return step_process(
        settings,
        *("train", "--pipeline", pipeline, "--run-id", "kill-1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str, timeout_s: float = 240) -> None:
    """SIGKILL the step's process group once `ready()` holds (bounded: `what` failed to happen in time)."""
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            assert proc.poll() is None, "the train step ended before it could be killed"
            assert time.monotonic() < deadline, f"{what} in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_killed_train_task_resumes_its_study(workspace: Settings) -> None:
    # A checkpoint after every epoch, and trials long enough to be caught in the middle.
    training = {
        **FAST,
        "n_trials": 6,
        "max_epochs": 20,
        "early_stopping_patience": 20,
        "pruner": "none",
        "checkpoint_minutes": 0.00001,
    }
    _spec(workspace, "churn_resume", training=training)
    proc = _start_train(workspace, "churn_resume")
    # Kill while the third trial runs, after it recorded at least one checkpoint.
    _kill_when(
        proc,
        lambda: (
            len(_finished(workspace, "churn_resume:kill-1")) >= 2 and _checkpointed(workspace, "churn_resume:kill-1", 2)
        ),
        "no two finished trials",
    )
    kept = _finished(workspace, "churn_resume:kill-1")
    assert 2 <= len(kept) < 6
    # The killed attempt could record nothing: `runs show` says so, without made-up figures.
    shown = render_run("churn_resume", "kill-1", run_steps(workspace, "churn_resume", "kill-1"))
    assert "  train     running   attempt 1" in shown and "None" not in shown, shown

    result = run(workspace, "train", "kill-1", pipeline="churn_resume")
    assert result["finished_before_this_attempt"] == len(kept)
    assert result["trials"]["complete"] == 6  # the budget counts the trials kept from the killed attempt
    # The trial that was running is failed and run again from its checkpoint, not from scratch.
    assert result["recovered_trials"] == [2]
    assert result["trials"]["fail"] == 1
    import optuna

    from pipelines.io.tracking import optuna_url

    study = optuna.load_study(study_name="churn_resume:kill-1", storage=optuna_url(workspace))
    resumed = [t for t in study.trials if t.user_attrs.get("resume_from") == 2]
    assert len(resumed) == 1
    assert resumed[0].state.name == "COMPLETE"
    assert resumed[0].user_attrs["resumed_at_epoch"] >= 1
    after = _finished(workspace, "churn_resume:kill-1")
    assert {n: after[n] for n in kept} == kept  # finished trials kept, not rerun
    assert len(after) == 6
    # One MLflow parent run for the study, across both attempts.
    setup_mlflow(workspace, "churn_resume")
    parents = mlflow.MlflowClient().search_runs(
        [result["mlflow_experiment_id"]],
        filter_string="tags.`mlcycle.run_id` = 'kill-1' and tags.`mlcycle.step` = 'train'",
    )
    assert [p.info.run_id for p in parents] == [result["mlflow_run_id"]]
    # The killed attempt is marked interrupted by the one that took over; the MLflow run of the trial
    # it was running is ended KILLED, and no trial's run is left RUNNING.
    with db.connect(workspace) as conn:
        attempts = conn.execute(
            "SELECT attempt, status, error FROM step_runs WHERE pipeline='churn_resume' AND run_id='kill-1'"
            " AND step='train' ORDER BY attempt"
        ).fetchall()
    assert [(a, s) for a, s, _ in attempts] == [(1, "interrupted"), (2, "succeeded")]
    assert "ended without recording its outcome" in attempts[0][2] and "attempt 2 took over" in attempts[0][2]
    client = mlflow.MlflowClient()
    killed = next(t for t in study.trials if t.number == 2)
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    children = client.search_runs(
        [result["mlflow_experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'"
    )
    assert len(children) == 7 and "RUNNING" not in {c.info.status for c in children}


def _study_trials(settings: Settings, study: str) -> list[Any]:
    import optuna

    from pipelines.io.tracking import optuna_url

    return optuna.load_study(study_name=study, storage=optuna_url(settings)).get_trials(deepcopy=False)


def test_a_killed_auto_search_resumes_with_its_finished_trials_and_spent_budget(workspace: Settings) -> None:
    """`model.kind: auto` under `training.time_budget_s`: the families are tried once each, cheapest
    first; a kill keeps the finished trials and the seconds spent; the resumed search spends what is
    left, and its best model (whatever family) passes evaluate and promote's ONNX parity check."""
    from tests.specs import churn_spec_dict

    model = {k: v for k, v in churn_spec_dict()["model"].items() if k != "search_space"}
    model["kind"] = "auto"
    model["search_spaces"] = {"tabular_mlp": {"hidden_units": {"type": "categorical", "choices": [16]}}}
    budget = 40
    training = {
        **FAST,
        "n_trials": None,
        "time_budget_s": budget,
        "max_epochs": 30,
        "early_stopping_patience": 30,
        "checkpoint_minutes": 0.00001,
    }
    _spec(workspace, "auto_resume", training=training, model=model, embeddings=None)
    proc = _start_train(workspace, "auto_resume")
    deadline = time.monotonic() + 240
    try:
        while len(_finished(workspace, "auto_resume:kill-1")) < 3:  # one trial of each family
            assert proc.poll() is None, "the train step ended before it could be killed"
            assert time.monotonic() < deadline, "no three finished trials in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _study_trials(workspace, "auto_resume:kill-1")
    kept = _finished(workspace, "auto_resume:kill-1")
    spent = sum(t.user_attrs.get("elapsed_s", 0.0) for t in before)
    assert [t.params["family"] for t in sorted(before, key=lambda t: t.number)[:3]] == [
        "linear",
        "lightgbm",
        "tabular_mlp",
    ]  # cheapest first
    assert 0 < spent < budget

    result = run(workspace, "train", "kill-1", pipeline="auto_resume")
    assert result["finished_before_this_attempt"] >= len(kept)
    assert result["budget_spent_before_this_attempt_s"] == pytest.approx(
        spent, abs=0.2
    )  # the killed attempt's time counts
    after = _study_trials(workspace, "auto_resume:kill-1")
    assert {n: v for n, v in _finished(workspace, "auto_resume:kill-1").items() if n in kept} == kept  # not rerun
    # the budget is spent, not overrun by more than a trial's last report, and no more
    assert budget <= result["budget_spent_s"] <= budget + 15
    assert result["budget_spent_s"] == pytest.approx(sum(t.user_attrs.get("elapsed_s", 0.0) for t in after), abs=0.5)
    families = result["families"]
    assert set(families) == {"linear", "lightgbm", "tabular_mlp"}
    assert sum(f["trials"] for f in families.values()) == len(after)
    assert result["best_family"] in families and families[result["best_family"]]["best"] == pytest.approx(
        result["best_value"]
    )
    # the family bests were weighed as an ensemble on the validation rows; exported only if better
    # by training.ensemble_min_gain (relative)
    blend = result["ensemble"]
    assert set(blend["weights"]) <= set(families) and sum(blend["weights"].values()) == pytest.approx(1.0)
    gain = blend["value"] - blend["best_alone"]
    better = gain > 0.001 * abs(blend["best_alone"]) and len(blend["weights"]) > 1
    assert blend["chosen"] == better
    assert result["model_family"] == ("ensemble" if better else result["best_family"])
    # each trial an MLflow child run tagged with its family
    setup_mlflow(workspace, "auto_resume")
    children = mlflow.MlflowClient().search_runs(
        [result["mlflow_experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'"
    )
    assert {c.data.tags["mlcycle.family"] for c in children} == set(families)
    assert all(c.data.params["family"] == c.data.tags["mlcycle.family"] for c in children)

    evaluated = run(workspace, "evaluate", "kill-1", pipeline="auto_resume")
    assert evaluated["verdict"]["passed"], evaluated
    promoted = run(workspace, "promote", "kill-1", pipeline="auto_resume")
    assert promoted["version"] == 1 and promoted["parity"]["passed"]
    setup_mlflow(workspace, "auto_resume")
    trained = mlflow.MlflowClient().get_run(result["mlflow_run_id"])
    assert trained.data.params["best.family"] == result["best_family"]


def test_a_pruned_trial_is_a_finished_mlflow_run_tagged_pruned(workspace: Settings) -> None:
    """The pruner stopping a trial is the search working: its MLflow run ends FINISHED (tagged
    `pruned`), not FAILED beside the trials that crashed."""
    import optuna

    from pipelines.steps.train import objective_for
    from tests.specs import churn_spec_dict

    class PrunedEveryTime:  # a trainer whose every trial the pruner stops after its first epoch
        metric_name = "roc_auc"
        weightings = ("none",)  # no class weights searched

        def fit_family(
            self, trial: optuna.Trial, family: str, params: dict[str, Any], log_metrics: Any, clock: Any
        ) -> tuple[float, bytes]:
            log_metrics({"val_roc_auc": 0.5}, 0)
            raise optuna.TrialPruned("stopped at epoch 0")

    spec = parse_spec(churn_spec_dict())
    exp_id = setup_mlflow(workspace, "churn_pruned")
    with mlflow.start_run(experiment_id=exp_id) as parent:
        study = optuna.create_study(direction="maximize")
        study.optimize(objective_for(PrunedEveryTime(), spec, parent.info.run_id), n_trials=2)  # type: ignore[arg-type]
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    children = mlflow.MlflowClient().search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted((c.info.status, c.data.tags["mlcycle.trial_state"]) for c in children) == [
        ("FINISHED", "pruned"),
        ("FINISHED", "pruned"),
    ]


def test_parallel_trial_workers_share_one_study_and_budget(workspace: Settings) -> None:
    """Two worker processes (as two pods run them) on the run's one study in PostgreSQL spend one
    budget between them; a worker recovers only its own interrupted trials; train exports the best
    without running more."""
    import optuna
    from optuna.trial import TrialState

    from pipelines.io.tracking import optuna_url
    from pipelines.steps.train import recover_interrupted

    training = {**FAST, "n_trials": 6, "parallelism": 2, "pruner": "none"}
    _spec(workspace, "churn_par", training=training)
    run_through(workspace, "par-1", ("ingest", "validate", "features"), pipeline="churn_par")
    workers = [
        step_process(
            workspace,
            *("trials", "--pipeline", "churn_par", "--run-id", "par-1", "--worker", str(k)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for k in (0, 1)
    ]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-6000:] for o in outs)
    study = optuna.load_study(study_name="churn_par:par-1", storage=optuna_url(workspace))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 6 <= len(finished) <= 7  # one budget; a worker may finish the trial it had started
    by_worker = {k: sum(t.user_attrs.get("worker") == k for t in finished) for k in (0, 1)}
    assert by_worker[0] >= 1 and by_worker[1] >= 1, by_worker
    assert sum(by_worker.values()) == len(finished)

    # A worker killed mid-trial leaves it RUNNING: only that worker's retry (or train) recovers it.
    orphan = study.ask()
    orphan.set_user_attr("worker", 1)
    assert recover_interrupted(study, worker=0) == []
    assert recover_interrupted(study, worker=1) == [orphan.number]

    result = run(workspace, "train", "par-1", pipeline="churn_par")
    assert result["finished_before_this_attempt"] >= 6
    assert result["trials"]["complete"] == len(finished)  # the budget was spent: nothing more runs
    assert result["trials"]["fail"] == 1  # the orphan, recovered (failed, its parameters queued again)
    best = max(t.value for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None)
    assert result["best_value"] == pytest.approx(best)
    with pytest.raises(Exception, match="--worker K"):
        run(workspace, "trials", "par-1", pipeline="churn_par", worker=2)


def test_a_trial_whose_loss_is_not_finite_fails_with_its_reason_and_is_never_the_best(
    workspace: Settings, tmp_path: Path
) -> None:
    """The train step's objective, Trainer and export on real MLflow: MLP trials on numbers it
    cannot take (an infinity put into the training rows themselves: validation refuses one in the
    data, this is the trainer's own guard) end FAIL with the reason, their MLflow
    runs FAILED and tagged with it; the LightGBM trial beside them is the best; a search where
    every trial failed is an error naming the reason."""
    import numpy as np
    import optuna

    from pipelines.core.errors import MlcycleError
    from pipelines.io.storage import LocalStorage
    from pipelines.ml.families import TrialFailed
    from pipelines.ml.model import fit_encoding
    from pipelines.steps.context import StepContext
    from pipelines.steps.train import Trainer, export_best, objective_for
    from tests.unit.test_missing_values import nullable_wine_spec, wines_with_nulls

    base = nullable_wine_spec().model_dump(mode="json", exclude_none=True)
    base["model"]["kind"] = ["lightgbm", "tabular_mlp"]
    spec = parse_spec({**base, "name": "wine_nan"})
    ctx = StepContext(spec, workspace, "nan-1", LocalStorage(tmp_path / "artifacts"), "train")
    df = wines_with_nulls()
    train, val = df.iloc[:120].copy(), df.iloc[120:]
    train.loc[train.index[:3], "proline"] = np.inf
    enc = fit_encoding(train.iloc[3:], spec.model.numeric_features, spec.model.categorical_features)
    trainer = Trainer(ctx, enc, train, val, "cpu")
    mlp = {"family": "tabular_mlp", "tabular_mlp.layers": 1, "tabular_mlp.hidden_units": 32}
    exp_id = setup_mlflow(workspace, "wine_nan")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with mlflow.start_run(experiment_id=exp_id) as parent:
        study = optuna.create_study(direction="maximize")
        for params in (mlp, {"family": "lightgbm"}, mlp):
            study.enqueue_trial(params)
        study.optimize(objective_for(trainer, spec, parent.info.run_id), n_trials=3, catch=(TrialFailed,))
        best = export_best(ctx, study, trainer)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "FAIL"]
    reason = "tabular_mlp: train_loss is nan at epoch 1"
    assert study.trials[0].user_attrs["fail_reason"] == reason
    assert study.best_trial.number == 1 and best["best_family"] == "lightgbm"
    assert best["trials"] == {"complete": 1, "pruned": 0, "fail": 2} and best["failures"] == {reason: 2}
    children = mlflow.MlflowClient().search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    states = sorted(
        (c.info.status, c.data.tags["mlcycle.trial_state"], c.data.tags.get("mlcycle.fail_reason")) for c in children
    )
    assert states == [("FAILED", "failed", reason), ("FAILED", "failed", reason), ("FINISHED", "complete", None)]

    failing = StepContext(spec, workspace, "nan-2", LocalStorage(tmp_path / "artifacts"), "train")
    with mlflow.start_run(experiment_id=exp_id) as parent:
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial(mlp)
        study.optimize(objective_for(trainer, spec, parent.info.run_id), n_trials=1, catch=(TrialFailed,))
        with pytest.raises(MlcycleError, match=f"no trial completed \\(1 failed: {reason}\\)"):
            export_best(failing, study, trainer)


def test_a_source_with_nulls_trains_every_family_and_beats_the_baseline(workspace: Settings, tmp_path: Path) -> None:
    """A Parquet file of the wine data with nulls in two nullable measurements and a nullable
    category, through ingest, validation, features, an `auto` search and evaluate: every family
    completes its trials (none fails on a NaN loss) and the challenger passes the default gate
    against the majority class, which the verdict names with its figure."""
    import json
    from datetime import UTC, datetime, timedelta

    import pandas as pd
    import yaml

    from tests.unit.test_missing_values import nullable_wine_spec, wines_with_nulls

    df = wines_with_nulls(end=(datetime.now(UTC) + timedelta(days=1)).date())
    path = tmp_path / "wines.parquet"
    df.to_parquet(path, index=False)
    spec = nullable_wine_spec().model_dump(mode="json", exclude_none=True)
    spec.update(name="wine_nulls", source={"kind": "file", "path": str(path), "lookback_days": 400})
    spec["training"].update(n_trials=4, time_budget_s=120, max_epochs=30, pruner="none")
    spec["evaluation"].update(min_primary=None, bootstrap_samples=100, max_latency_ms_per_row=50.0)
    assert workspace.pipelines_dir is not None
    (workspace.pipelines_dir / "wine_nulls.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = run_through(workspace, "nulls-1", LIFECYCLE[:5], pipeline="wine_nulls")
    trained = out["train"]
    assert trained["trials"]["fail"] == 0 and trained["failures"] == {}
    assert set(trained["families"]) == {"linear", "lightgbm", "tabular_mlp"}
    assert all(f["complete"] >= 1 and f["best"] > 0.5 for f in trained["families"].values())
    run_dir = Path(str(workspace.artifact_root)) / "wine_nulls" / "nulls-1"
    split = pd.read_parquet(run_dir / "features" / "train.parquet")
    assert split[["magnesium", "hue", "color_band"]].isna().any().all()  # the nulls reached training
    encoding = json.loads((run_dir / "train" / "manifest.json").read_text())["encoding"]
    assert encoding["missing"] == ["magnesium", "hue"] and "" not in encoding["vocab"]["color_band"]
    verdict = out["evaluate"]["verdict"]
    assert verdict["passed"], verdict
    assert verdict["baseline"]["name"] == "majority-class baseline" and verdict["baseline"]["macro_f1"] < 0.4
    assert any("beats the majority-class baseline" in r for r in verdict["reasons"])


def test_a_first_model_rejected_by_its_gate_leaves_no_champion_and_the_links_say_why(workspace: Settings) -> None:
    """`mlcycle run --wait` after a first run whose model fails its gates: no endpoint URL (it
    would answer 404), "no champion yet" and the verdict instead."""
    from pipelines.local.follow import without_champion
    from pipelines.local.platform import Platform, open_these

    _spec(
        workspace,
        "churn_nochamp",
        training={**FAST, "n_trials": 2, "max_epochs": 2},
        evaluation={**EVAL, "min_primary": 0.999},
    )
    out = run_through(workspace, "nochamp-1", LIFECYCLE[:5], pipeline="churn_nochamp")
    assert out["evaluate"]["verdict"]["passed"] is False
    with pytest.raises(StepSkipped):
        run(workspace, "promote", "nochamp-1", pipeline="churn_nochamp")
    waiting = without_champion(workspace, "churn_nochamp", "nochamp-1", "success")
    assert waiting is not None and waiting["churn_nochamp"].startswith("the model failed its gates: ")
    assert "0.999" in waiting["churn_nochamp"]
    text = open_these(Platform(workspace), "churn_nochamp", waiting)
    assert "churn_nochamp: no champion yet (the model failed its gates: " in text
    assert "/v1/pipelines/churn_nochamp" not in text


def test_a_family_registered_by_a_test_is_searched_trained_evaluated_and_promoted(workspace: Settings) -> None:
    """A new family is one module and one registry line: the test-only `plain_logistic`
    (`tests/unit/plain_logistic.py`), registered here, is tried by an `auto` search beside the
    built-in families (its trials are MLflow child runs like theirs) and its trial's ONNX graph
    scores the test rows as the server feeds them; pinned, it is the run's model, which evaluate
    gates and promote registers after its ONNX parity check."""
    import numpy as np
    import pandas as pd

    from pipelines.ml.families import load_trained, register, trial_artifact, unregister
    from pipelines.ml.model import onnx_session, session_feed
    from tests.specs import churn_spec_dict
    from tests.unit import plain_logistic

    name = plain_logistic.NAME
    model = {k: v for k, v in churn_spec_dict()["model"].items() if k != "search_space"}
    model["search_spaces"] = {"tabular_mlp": {"hidden_units": {"type": "categorical", "choices": [16]}}}
    training = {**FAST, "n_trials": 4, "pruner": "none", "ensemble": False}
    register(plain_logistic.FAMILY)
    try:
        _spec(workspace, "fam_auto", training=training, model={**model, "kind": "auto"}, embeddings=None)
        out = run_through(workspace, "auto-1", LIFECYCLE[:4], pipeline="fam_auto")
        families = out["train"]["families"]
        assert list(families) == ["linear", "lightgbm", "tabular_mlp", name]  # each tried once, the new one last
        assert families[name]["complete"] == 1 and families[name]["best"] > 0.6
        setup_mlflow(workspace, "fam_auto")
        children = mlflow.MlflowClient().search_runs(
            [out["train"]["mlflow_experiment_id"]],
            filter_string=f"tags.mlflow.parentRunId = '{out['train']['mlflow_run_id']}'",
        )
        assert sorted(c.data.tags["mlcycle.family"] for c in children) == sorted(families)
        run_dir = Path(str(workspace.artifact_root)) / "fam_auto" / "auto-1"
        trained = load_trained((run_dir / "train" / trial_artifact(families[name]["best_trial"])).read_bytes())
        session = onnx_session(trained.to_onnx().SerializeToString())
        test = pd.read_parquet(run_dir / "features" / "test.parquet")
        (served,) = session.run(["score"], session_feed(session, test))
        assert np.abs(trained.predict(test) - served).max() <= EVAL["onnx_parity_tolerance"]

        pinned = {**model, "kind": name, "search_space": {}, "search_spaces": {}}
        _spec(workspace, "fam_pinned", training=training, model=pinned, embeddings=None)
        done = run_through(workspace, "pin-1", LIFECYCLE, pipeline="fam_pinned")
        assert done["train"]["model_family"] == name and done["train"]["best_family"] == name
        assert done["evaluate"]["verdict"]["passed"], done["evaluate"]["verdict"]
        assert done["promote"]["version"] == 1 and done["promote"]["parity"]["passed"]
    finally:
        unregister(name)


def _step_exit(settings: Settings, step: str, pipeline: str, run_id: str) -> tuple[int, str]:
    """`mlcycle step <step>` as its own process (as a pod runs it): its exit code and output."""
    proc = step_process(
        settings,
        *(step, "--pipeline", pipeline, "--run-id", run_id),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _tampered(path: Path) -> bytes:
    """Change the file's bytes after it was written (one byte flipped); returns the original."""
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    return original


def test_a_changed_trial_model_exported_model_or_promoted_model_is_refused_with_exit_3(workspace: Settings) -> None:
    """Every model artifact's sha256 is recorded where it is written and checked where it is read:
    a byte changed in storage afterwards makes the step that reads it exit 3 (no retry) naming the
    file, and a registered version whose ONNX file changed in MLflow's store is neither loaded by a
    step nor deployed. Put back, the same files train, evaluate and promote as before."""
    import onnx

    from pipelines.core.errors import ArtifactRefused
    from pipelines.core.integrity import sha256_hex
    from pipelines.core.settings import spec_for
    from pipelines.io.registry import FILES_TAG, load_onnx_model
    from serving.config import VersionConfig
    from serving.deploy import deploy, serving_args

    _spec(workspace, "churn_sealed")
    out = run_through(workspace, "seal-1", LIFECYCLE[:4], pipeline="churn_sealed")
    run_dir = Path(str(workspace.artifact_root)) / "churn_sealed" / "seal-1"
    trial = run_dir / "train" / "trials" / f"trial-{out['train']['best_trial']}.bin"
    original = _tampered(trial)
    code, text = _step_exit(workspace, "train", "churn_sealed", "seal-1")  # the study is done: it exports the best
    assert code == 3, text[-3000:]
    assert f"{trial}: its sha256 is" in text and "changed or swapped in storage" in text
    trial.write_bytes(original)

    onnx_file = run_dir / "train" / "model.onnx"
    original = _tampered(onnx_file)
    code, text = _step_exit(workspace, "evaluate", "churn_sealed", "seal-1")
    assert code == 3 and f"{onnx_file}: its sha256 is" in text, text[-3000:]
    onnx_file.write_bytes(original)

    done = {s: run(workspace, s, "seal-1", pipeline="churn_sealed") for s in ("evaluate", "promote")}
    assert done["promote"]["version"] == 1 and done["promote"]["onnx_sha256"] == sha256_hex(original)
    name = model_name("churn_sealed")
    setup_mlflow(workspace, "churn_sealed")
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    files = json.loads(mlflow.MlflowClient().get_model_version(name, "1").tags[FILES_TAG])
    assert files["artifacts/model.onnx"] == sha256_hex(original)  # the ONNX model and the pyfunc's files
    assert {"MLmodel", "onnx_pyfunc.py"} <= set(files)  # the pyfunc MLflow runs, as it runs it
    assert onnx.load_from_string(load_onnx_model(workspace, "churn_sealed", name, 1)) == onnx.load_from_string(original)

    stored = Path(ModelsArtifactRepository.get_underlying_uri(f"models:/{name}/1").removeprefix("file://"))
    _tampered(stored / "artifacts" / "model.onnx")
    with pytest.raises(ArtifactRefused, match=r"mlcycle-churn_sealed v1: .*changed \['artifacts/model.onnx'\]"):
        load_onnx_model(workspace, "churn_sealed", name, 1)
    spec = spec_for(workspace, "churn_sealed")
    with pytest.raises(ArtifactRefused, match="changed"):  # refused before Ray is asked for anything
        deploy(serving_args(spec, [VersionConfig(version=1, weight=100)], name), workspace)
    code, text = _step_exit(workspace, "drift", "churn_sealed", "drift-1")  # a step that loads the champion
    assert code == 3 and "changed ['artifacts/model.onnx']" in text, text[-3000:]


def test_a_changed_checkpoint_is_refused_at_resume_with_exit_3(workspace: Settings) -> None:
    """A trial killed mid-way is resumed from its checkpoint only where the checkpoint's bytes are
    those it recorded: changed in storage, the train step exits 3 naming the file."""
    training = {**FAST, "n_trials": 3, "max_epochs": 20, "early_stopping_patience": 20, "pruner": "none"}
    _spec(workspace, "churn_ckpt", training={**training, "checkpoint_minutes": 0.00001})
    proc = _start_train(workspace, "churn_ckpt")
    checkpoints = Path(str(workspace.artifact_root)) / "churn_ckpt" / "kill-1" / "train" / "checkpoints"
    # killed while the second trial runs, after it recorded a checkpoint
    _kill_when(
        proc,
        lambda: (
            len(_finished(workspace, "churn_ckpt:kill-1")) >= 1 and _checkpointed(workspace, "churn_ckpt:kill-1", 1)
        ),
        "no trial",
    )
    # the one it recorded, and at most one more (written, not yet recorded, when it was killed)
    originals = {path: _tampered(path) for path in checkpoints.glob("trial-1-*.pt")}
    assert 1 <= len(originals) <= 2, originals.keys()
    code, text = _step_exit(workspace, "train", "churn_ckpt", "kill-1")
    assert code == 3, text[-3000:]
    assert any(f"{path}: its sha256 is" in text for path in originals), text[-3000:]
    for path, original in originals.items():
        path.write_bytes(original)
    result = run(workspace, "train", "kill-1", pipeline="churn_ckpt")  # put back, the search goes on
    assert result["trials"]["complete"] == 3


def test_a_rare_positive_class_is_searched_with_class_weights_and_decided_at_the_tuned_threshold(
    workspace: Settings, tmp_path: Path
) -> None:
    """Churn with 4 positives in a hundred and a spec that names no primary metric: the run is
    judged by PR AUC (the features manifest chooses it, the search optimises it, the gates judge
    it with no ROC AUC bound), the search tries every family with and without balanced class
    weights (the trials' MLflow parameters say which), the exported graph carries the F1-best
    threshold of the validation rows, and evaluate judges F1 at that threshold."""
    import numpy as np
    import pandas as pd

    from pipelines.ml.datagen import ChurnConfig, generate_churn
    from pipelines.ml.imbalance import session_threshold
    from pipelines.ml.metrics import f1_at
    from pipelines.ml.model import onnx_session, predict_onnx
    from tests.specs import churn_spec_dict

    df = generate_churn(ChurnConfig(customers=1500, months=8, seed=7))
    negatives = df[df["churned"] == 0]
    rare = pd.concat([negatives, df[df["churned"] == 1].sample(n=len(negatives) * 4 // 96, random_state=1)])
    rare.sort_values("event_timestamp").to_parquet(tmp_path / "rare.parquet", index=False)
    model = {k: v for k, v in churn_spec_dict()["model"].items() if k != "search_space"}
    training = {**FAST, "n_trials": 8, "pruner": "none", "ensemble": False}
    evaluation = {k: v for k, v in EVAL.items() if k not in ("primary_metric", "min_primary")} | {"slices": []}
    source = {"kind": "file", "path": str(tmp_path / "rare.parquet")}
    _spec(workspace, "churn_rare", source=source, training=training, evaluation=evaluation,
          model={**model, "kind": ["linear", "lightgbm"]}, embeddings=None)  # fmt: skip
    out = run_through(workspace, "rare-1", LIFECYCLE[:5], pipeline="churn_rare")
    assert out["features"]["splits"]["train"]["label_rate"] < 0.1 and out["features"]["primary_metric"] == "pr_auc"
    trained = out["train"]
    setup_mlflow(workspace, "churn_rare")
    client = mlflow.MlflowClient()
    children = client.search_runs(
        [trained["mlflow_experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{trained['mlflow_run_id']}'"
    )
    weighed = {(c.data.params["family"], c.data.params.get("class_weight")) for c in children}
    assert {w for _, w in weighed} == {"none", "balanced"}, weighed  # searched, not fixed
    run_dir = Path(str(workspace.artifact_root)) / "churn_rare" / "rare-1"
    session = onnx_session((run_dir / "train" / "model.onnx").read_bytes())
    threshold = session_threshold(session)
    assert threshold is not None and threshold == trained["threshold"]
    assert client.get_run(trained["mlflow_run_id"]).data.metrics["decision_threshold"] == threshold
    val = pd.read_parquet(run_dir / "features" / "validation.parquet")
    y_val, p_val = val["churned"].to_numpy(), predict_onnx(session, val)
    best = max(f1_at(float(t))(y_val, p_val) for t in np.unique(p_val))
    # the validation rows' best (tuned on the model's own float64 scores, here ONNX's float32 ones)
    assert f1_at(threshold)(y_val, p_val) == pytest.approx(best, abs=0.01)
    report = json.loads((run_dir / "evaluate" / "report.json").read_text())
    assert report["verdict"]["primary_metric"] == "pr_auc", report["verdict"]
    # global importances on the exported graph: every served feature, the largest PR AUC drop first
    ranked = report["challenger"]["importances"]["features"]
    assert {f["feature"] for f in ranked} == {*model["numeric_features"], *model["categorical_features"]}
    assert ranked[0]["drop"] > 0 and [f["drop"] for f in ranked] == sorted((f["drop"] for f in ranked), reverse=True)
    assert "Challenger's global importances" in (run_dir / "evaluate" / "report.html").read_text()
    # no bound by default: a ROC AUC's 0.6 means nothing on PR AUC, the baseline gate judges chance
    assert any("(no evaluation.min_primary set)" in r for r in report["verdict"]["reasons"]), report["verdict"]
    assert trained["metric"] == "val_pr_auc", trained
    assert report["challenger"]["threshold"] == threshold
    test = pd.read_parquet(run_dir / "features" / "test.parquet")
    f1 = f1_at(threshold)(test["churned"].to_numpy(), predict_onnx(session, test))
    assert report["challenger"]["metrics"]["f1"] == pytest.approx(f1)  # judged at its own threshold
