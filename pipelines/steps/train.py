"""`train`: an Optuna study over the spec's model families and their search spaces, every trial
an MLflow child run tagged with its family.

With several families (`model.kind: auto` or a list), the study samples `family` first and then
that family's own parameters (named `<family>.<param>` in Optuna, so each family's space is its
own); a new study tries the families once each, cheapest first, before the sampler moves the
trials to the families that win. The pruner compares a trial only with trials of its own family
(an epoch and ten boosting rounds are not the same step). `training.time_budget_s` bounds the
seconds spent in trials, summed over the study (each trial records its elapsed seconds as it
goes, so a killed run resumes with the budget it had left); a trial running when the budget is
spent stops with its best so far.

The study lives in the platform database (schema `optuna`), named from the pipeline and run id, so
a retried or killed task resumes it: finished trials (complete or pruned) are kept and count
against the budget; a trial that was running when the task died is marked failed and enqueued
again with its parameters, resuming from its last checkpoint (written every
`training.checkpoint_minutes` and at the end of every trial). The MLflow parent run is found again
by its tags, so a retry logs into the same run.

The step keeps the study's orchestration: each family's fit is its module's in
`pipelines.ml.families` (found by name in the registry), the search's pure pieces are
`pipelines.ml.search`.

Outputs: `model.bin` (the best trial's model, encoding and parameters: `pipelines.ml.families`),
`model.onnx` (raw columns in; `score` out: a probability, a value, or a multiclass model's
outputs) and `manifest.json` (with per-family figures).

A trial whose training loss, validation scores or best validation metric is not a finite number
(`TrialFailed`) ends FAIL, its reason in the trial's `fail_reason` attribute, its MLflow run FAILED
and tagged `mlcycle.fail_reason`; the search goes on and its best is among the complete trials only.
When no trial completes, the step fails naming the reasons.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pipelines.core.errors import ArtifactRefused, MlcycleError
from pipelines.core.families import TABULAR_MLP
from pipelines.core.integrity import sha256_hex
from pipelines.core.k8s import cpu_threads
from pipelines.io.artifacts import read_checked, write_artifact
from pipelines.io.db import advisory_lock
from pipelines.io.registry import CHAMPION, alias_version, model_name
from pipelines.io.storage import read_parquet, write_json
from pipelines.io.tracking import airflow_tags, code_version, find_run, optuna_url, setup_mlflow
from pipelines.ml.families import (
    ARTIFACT_SHA256,
    CHECKPOINT_SHA256,
    RESUME_SHA256,
    Fitting,
    TrainingData,
    TrialFailed,
    family,
    load_trained,
    trial_artifact,
    trial_checkpoint,
)
from pipelines.ml.imbalance import CLASS_WEIGHT, balanced_weights, binary_threshold, set_threshold, weightings
from pipelines.ml.metrics import HIGHER_IS_BETTER, primary_metric
from pipelines.ml.model import FeatureEncoding, fit_encoding, onnx_session, predict_onnx, select_device
from pipelines.ml.search import (
    FINISHED,
    TrialClock,
    budget_callbacks,
    budget_left,
    choose,
    failure_summary,
    make_pruner,
    remaining_budget,
    study_families,
    study_spent,
    trial_family,
    trial_states,
    warm_start,
)
from pipelines.steps.context import StepContext
from pipelines.steps.train_blend import blend, read_trial

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from pipelines.core.spec import PipelineSpec

STEP = "train"
log = logging.getLogger(__name__)


def study_name(pipeline: str, run_id: str) -> str:
    return f"{pipeline}:{run_id}"


# ------------------------------------------------------------------------------------ training
class Trainer:
    """The study's side of every trial: the run's training data on its device (encoded once), the
    primary metric, and one trial's fit of any family through the registry."""

    def __init__(
        self, ctx: StepContext, enc: FeatureEncoding, train: pd.DataFrame, val: pd.DataFrame, device: str
    ) -> None:
        spec = ctx.spec
        self.ctx, self.enc, self.device = ctx, enc, device
        self.cfg = spec.training
        self.kind = spec.label.kind
        self.metric_name = spec.evaluation.primary_metric
        self.metric = primary_metric(spec.evaluation, self.kind)
        self.higher = HIGHER_IS_BETTER[self.metric_name]
        self.classes = spec.classes  # a multiclass label's: y holds class indices
        self.data = TrainingData(enc, train, val, spec.label.column, self.classes, device)
        self.v_y, self.val = self.data.v_y, self.data.val
        n_classes = len(self.classes)
        self.weightings = weightings(self.cfg.class_weight, self.kind, self.data.y, n_classes, self.cfg.imbalance_rate)
        self.class_weights = balanced_weights(self.data.y, n_classes) if self.kind != "regression" else None
        self.threads = cpu_threads(spec.resources.for_step(ctx.step).cpu, os.cpu_count())

    def fitting(self, trial: optuna.Trial, log_metrics: Any, clock: TrialClock) -> Fitting:
        """What a trial's fit needs from the search: the metric, seeds, budget and checkpoints."""
        cfg = self.cfg
        val_metric = f"val_{self.metric_name}"
        return Fitting(
            metric=self.metric,
            higher=self.higher,
            seed=cfg.seed + trial.number,
            patience=cfg.early_stopping_patience,
            report=clock.report,
            log=lambda m, step: log_metrics({(val_metric if k == "val_metric" else k): v for k, v in m.items()}, step),
            deadline=clock.deadline,
            threads=self.threads,
            kind=self.kind,
            classes=self.classes,
            max_epochs=cfg.max_epochs,
            batch_size=cfg.batch_size,
            checkpoint_minutes=cfg.checkpoint_minutes,
            shuffle_seed=cfg.seed * 1000 + trial.number,
            checkpoints=TrialCheckpoints(self, trial),
        )

    def fit_family(
        self, trial: optuna.Trial, name: str, params: dict[str, Any], log_metrics: Any, clock: TrialClock
    ) -> tuple[float, bytes]:
        """Train one trial of any family; returns the best validation value and the artifact."""
        fitting = self.fitting(trial, log_metrics, clock)
        fitting.class_weights = self.class_weights if params.get(CLASS_WEIGHT) == "balanced" else None
        return family(name).fit(self.data, params, fitting)

    def fit(
        self, trial: optuna.Trial, params: dict[str, Any], log_metrics: Any, clock: TrialClock | None = None
    ) -> tuple[float, bytes]:
        """One MLP trial (a pinned search's default family)."""
        clock = clock or TrialClock(trial, self.metric_name)
        return self.fit_family(trial, TABULAR_MLP.name, params, log_metrics, clock)

    def checkpoint_key(self, number: int, sha256: str) -> str:
        return self.ctx.key(trial_checkpoint(number, sha256), STEP)  # the train step's, whichever worker


@dataclass
class TrialCheckpoints:
    """A trial's checkpoints; a trial enqueued again by `recover_interrupted` resumes from them."""

    trainer: Trainer
    trial: optuna.Trial

    def save(self, blob: bytes) -> None:
        """Write it under a key of its own, record its sha256 (in the study's database), then delete
        the one recorded before: killed anywhere, the recorded digest names a file of those bytes."""
        storage, number = self.trainer.ctx.storage, self.trial.number
        before = self.trial.user_attrs.get(CHECKPOINT_SHA256)
        storage.write_bytes(self.trainer.checkpoint_key(number, digest := sha256_hex(blob)), blob)
        self.trial.set_user_attr(CHECKPOINT_SHA256, digest)
        if before is not None and before != digest:
            storage.delete([self.trainer.checkpoint_key(number, before)])

    def resume(self) -> bytes | None:
        """The checkpoint the interrupted trial recorded last, once its bytes match the sha256
        recorded for it (`ArtifactRefused` otherwise); None where it recorded none."""
        previous, digest = self.trial.user_attrs.get("resume_from"), self.trial.user_attrs.get(RESUME_SHA256)
        if previous is None or digest is None:
            return None
        storage, key = self.trainer.ctx.storage, self.trainer.checkpoint_key(int(previous), digest)
        if storage.exists(key):
            return read_checked(storage, key, digest)
        raise ArtifactRefused(f"{storage.uri(key)}: the checkpoint its trial recorded is gone: refused")

    def resumed(self, epoch: int) -> None:
        previous = self.trial.user_attrs["resume_from"]
        log.info("trial %s resumes trial %s from epoch %s", self.trial.number, previous, epoch)
        self.trial.set_user_attr("resumed_at_epoch", epoch)


def recover_interrupted(study: optuna.Study, worker: int | None = None) -> list[int]:
    """Trials left RUNNING by a killed task: mark them failed, end their MLflow runs KILLED (the
    killed process could not end them) and enqueue their parameters again (resuming from their
    checkpoint). A trial worker recovers its own trials only (the others' are running); the train
    step, after every worker, recovers all. Returns their numbers."""
    import mlflow  # heavy: mlflow
    from optuna.trial import TrialState

    recovered = []
    client = mlflow.MlflowClient()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker is not None and t.user_attrs.get("worker") != worker:
            continue
        study.tell(t.number, state=TrialState.FAIL)  # Optuna's public way to end a running trial
        if t.user_attrs.get("mlflow_run_id"):
            client.set_terminated(t.user_attrs["mlflow_run_id"], status="KILLED")
        resume = {"resume_from": t.number, RESUME_SHA256: t.user_attrs.get(CHECKPOINT_SHA256)}
        study.enqueue_trial(t.params, user_attrs=resume, skip_if_exists=False)
        recovered.append(t.number)
    return recovered


# ----------------------------------------------------------------------------------------- step
def prepare(ctx: StepContext) -> tuple[Trainer, optuna.Study]:
    """The run's training data on its device, and the run's one study (shared by trial workers)."""
    import torch

    spec = ctx.spec
    # as many threads as the pod's CPUs: two workers on one node do not fight over every core
    torch.set_num_threads(cpu_threads(spec.resources.for_step(ctx.step).cpu, os.cpu_count()))
    train = read_parquet(ctx.storage, ctx.require("features", "train.parquet"))
    val = read_parquet(ctx.storage, ctx.require("features", "validation.parquet"))
    nullable = [name for name, column in spec.contract.columns.items() if column.nullable]
    enc = fit_encoding(train, spec.model.numeric_features, spec.model.categorical_features, nullable)
    trainer = Trainer(ctx, enc, train, val, select_device(spec.training.device))
    return trainer, open_study(ctx, trainer.higher)


def run(ctx: StepContext) -> dict[str, Any]:
    import mlflow  # heavy: mlflow

    spec = ctx.spec
    features = ctx.manifest("features")
    trainer, study = prepare(ctx)
    enc, device = trainer.enc, trainer.device
    exp_id = setup_mlflow(ctx.settings, ctx.pipeline)
    recovered = recover_interrupted(study)
    warm = enqueue_champion(ctx, study, trainer.weightings)
    finished_before = len(study.get_trials(states=trial_states(FINISHED)))
    todo = remaining_budget(spec.training.n_trials, finished_before)
    spent_before = study_spent(study)
    left = budget_left(spec.training.time_budget_s, spent_before)

    tags = {"mlcycle.pipeline": ctx.pipeline, "mlcycle.run_id": ctx.run_id, "mlcycle.step": STEP}
    existing = find_run(exp_id, tags)
    lineage = {
        "mlcycle.data_hash": features["content_hash"],
        "mlcycle.feature_service": spec.features.feature_service,
        "mlcycle.code_version": code_version(ctx.settings),
        "mlcycle.device": device,
        "mlcycle.optuna_study": study.study_name,
        **airflow_tags(),
    }
    with mlflow.start_run(
        run_id=existing.info.run_id if existing else None,
        run_name=None if existing else f"train {ctx.run_id}",
        tags={**tags, **lineage},
    ) as parent:
        if todo != 0 and left != 0:
            study.optimize(
                objective_for(trainer, spec, parent.info.run_id),
                n_trials=todo,
                timeout=spec.training.timeout_s,
                callbacks=budget_callbacks(spec.training.time_budget_s),
                gc_after_trial=True,
                catch=(TrialFailed,),  # the trial ends FAIL with its reason; the search goes on
            )
        best = export_best(ctx, study, trainer)
    manifest = {
        "step": STEP,
        "study": study.study_name,
        "finished_before_this_attempt": finished_before,
        "budget_spent_before_this_attempt_s": round(spent_before, 1),
        "recovered_trials": recovered,
        "warm_start": warm,
        **best,
        "metric": f"val_{trainer.metric_name}",
        "device": device,
        "mlflow_run_id": parent.info.run_id,
        "mlflow_experiment_id": exp_id,
        "content_hash": features["content_hash"],
        "feature_service": spec.features.feature_service,
        "encoding": enc.to_dict(),
    }
    write_json(ctx.storage, ctx.key("manifest.json"), manifest)
    return {k: v for k, v in manifest.items() if k != "encoding"}


def enqueue_champion(
    ctx: StepContext, study: optuna.Study, weightings: Sequence[str] = ("none",)
) -> dict[str, Any] | None:
    """A new study's first trial is the champion's best hyperparameters (a warm start that costs
    one trial of the budget): a retraining on new data starts from what won last time. With several
    families, each is then tried once, cheapest first."""

    if study.get_trials(deepcopy=False):
        return None  # a retry: the study already has its first trials
    warm = champion_params(ctx, weightings)
    if warm is not None:
        study.enqueue_trial(warm["params"], user_attrs={"warm_start": f"champion v{warm['champion']}"})
        log.info("warm start: trial 0 is champion v%s's hyperparameters %s", warm["champion"], warm["params"])
    families = ctx.spec.model.families
    if len(families) > 1:  # each family once, cheapest first; then the sampler follows the winners
        for family in families:
            study.enqueue_trial({"family": family}, user_attrs={"first_of_family": family})
    return warm


def champion_params(ctx: StepContext, weightings: Sequence[str] = ("none",)) -> dict[str, Any] | None:
    """The champion's best hyperparameters as a trial of this search, or None."""
    import mlflow  # heavy: mlflow

    setup_mlflow(ctx.settings, ctx.pipeline)
    client = mlflow.MlflowClient()
    champion = alias_version(client, model_name(ctx.pipeline), CHAMPION)
    training_run = champion.tags.get("mlcycle.training_run") if champion else None
    if not champion or not training_run:
        return None
    logged = client.get_run(training_run).data.params
    params = warm_start({k.removeprefix("best."): v for k, v in logged.items()}, ctx.spec.model, weightings)
    if params is None:
        log.info("the champion's hyperparameters do not fit this search: no warm start")
        return None
    return {"champion": int(champion.version), "params": params}


def open_study(ctx: StepContext, higher_is_better: bool) -> optuna.Study:
    """The run's study in the platform database: created, or loaded as a retry left it."""
    import optuna  # heavy: optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction: Literal["maximize", "minimize"] = "maximize" if higher_is_better else "minimize"
    seed = ctx.spec.training.seed + 1000 * (ctx.worker or 0)  # trial workers sample apart
    with advisory_lock(ctx.settings, "optuna"):  # Optuna creates its tables on first use
        return optuna.create_study(
            study_name=study_name(ctx.pipeline, ctx.run_id),
            # pre-ping: a connection the database dropped (a restart) is replaced, not failed on
            storage=optuna.storages.RDBStorage(optuna_url(ctx.settings), engine_kwargs={"pool_pre_ping": True}),
            direction=direction,
            pruner=make_pruner(ctx.spec.training.pruner, by_family=len(ctx.spec.model.families) > 1),
            sampler=optuna.samplers.TPESampler(seed=seed),
            load_if_exists=True,
        )


def export_graph(ctx: StepContext, trainer: Trainer, trained: Any) -> tuple[bytes, float | None]:
    """The exported model's ONNX graph, with a binary model's decision threshold (the spec's, or
    tuned on the validation rows as ONNX Runtime scores them) in its metadata and logged to the
    active MLflow run."""
    import mlflow  # heavy: mlflow

    graph = trained.to_onnx(embedding=ctx.spec.embeddings is not None)
    if trainer.kind != "binary":
        return graph.SerializeToString(), None
    scores = predict_onnx(onnx_session(graph.SerializeToString()), trainer.val)  # as the version will score
    threshold = binary_threshold(ctx.spec.evaluation.threshold, trainer.v_y, scores)
    set_threshold(graph, threshold)  # the version serves its decisions with it
    mlflow.log_metric("decision_threshold", threshold)
    return graph.SerializeToString(), threshold


def export_best(ctx: StepContext, study: optuna.Study, trainer: Trainer) -> dict[str, Any]:
    """The best trial's model as the run's `model.bin` and `model.onnx`, logged to the active (parent)
    MLflow run with the trial counts and the per-family figures; the manifest's fields about it."""
    import mlflow  # heavy: mlflow

    if not study.get_trials(states=trial_states(("COMPLETE",))):
        failed = [t.user_attrs.get("fail_reason") for t in study.get_trials(states=trial_states(("FAIL",)))]
        pruned = len(study.get_trials(states=trial_states(("PRUNED",))))
        raise MlcycleError(
            f"{ctx.pipeline}/{ctx.run_id}: no trial completed ({failure_summary(failed, pruned)}); "
            "a loss or metric that is not finite usually means missing or non-numeric values the model cannot take"
        )
    best = study.best_trial
    families = study_families(study, ctx.spec.model.families, trainer.higher)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    single, source = read_trial(ctx, trials[best.number])
    alone = load_trained(single, source)  # the best trial's model; its parameters are a later run's warm start
    blob, ensemble = blend(ctx, trainer, families, trial_family(best, ctx.spec.model.families), single, trials)
    trained = alone if blob is single else load_trained(blob)
    onnx_bytes, threshold = export_graph(ctx, trainer, trained)
    model_uri = write_artifact(ctx.settings, ctx.storage, ctx.key("model.bin"), blob)
    onnx_uri = write_artifact(ctx.settings, ctx.storage, ctx.key("model.onnx"), onnx_bytes)
    counts = {s.lower(): len(study.get_trials(states=trial_states((s,)))) for s in ("COMPLETE", "PRUNED", "FAIL")}
    reasons = Counter(t.user_attrs.get("fail_reason") for t in study.get_trials(states=trial_states(("FAIL",))))
    params = {k: v for k, v in alone.params.items() if k != "rounds"}
    mlflow.log_params({f"best.{k}": v for k, v in {"family": alone.family, **params}.items()})
    if ensemble is not None:
        mlflow.log_param("ensemble", ", ".join(f"{f} x{w:.2f}" for f, w in ensemble["weights"].items()))
        mlflow.log_metric(f"ensemble_val_{trainer.metric_name}", ensemble["value"])
    mlflow.log_metrics(
        {
            f"best_val_{trainer.metric_name}": float(best.value or 0.0),
            **{f"trials_{k}": float(v) for k, v in counts.items()},
            **{f"{f}_seconds": float(v["seconds"]) for f, v in families.items()},
            **{f"{f}_best_val_{trainer.metric_name}": float(v["best"]) for f, v in families.items() if v["best"]},
        }
    )
    mlflow.set_tags(
        {
            "mlcycle.best_trial": str(best.number),
            "mlcycle.best_trial_run_id": str(best.user_attrs.get("mlflow_run_id", "")),
            "mlcycle.family": trained.family,
        }
    )
    mlflow.log_dict(trainer.enc.to_dict(), "encoding.json")
    return {
        "trials": counts,
        "best_trial": best.number,
        "best_value": best.value,
        "best_family": alone.family,
        "best_params": alone.params,
        "model_family": trained.family,  # the exported model's: the best trial's family, or `ensemble`
        "ensemble": ensemble,
        "families": families,
        "failures": {str(r or "no recorded reason"): n for r, n in reasons.items()},
        "budget_spent_s": round(study_spent(study), 1),
        "model": model_uri,
        "onnx": onnx_uri,
        "threshold": threshold,  # a binary model's decision threshold (None for the other kinds)
    }


def objective_for(trainer: Trainer, spec: PipelineSpec, parent_run_id: str, worker: int | None = None) -> Any:
    import mlflow
    import optuna

    budget = spec.training.time_budget_s

    def objective(trial: optuna.Trial) -> float:
        if worker is not None:
            trial.set_user_attr("worker", worker)
        started = time.monotonic()
        family, params = choose(trial, spec.model, trainer.weightings)
        left = budget_left(budget, study_spent(trial.study))
        clock = TrialClock(trial, trainer.metric_name, None if left is None else started + left, started)
        pruned: optuna.TrialPruned | None = None
        try:
            with mlflow.start_run(
                run_name=f"trial-{trial.number} {family}",
                nested=True,
                parent_run_id=parent_run_id,
                tags={"mlcycle.trial": str(trial.number), "mlcycle.family": family},
            ) as child:
                trial.set_user_attr("mlflow_run_id", child.info.run_id)
                mlflow.log_params({"family": family, **params})
                try:
                    value, blob = trainer.fit_family(
                        trial, family, params, lambda m, step: mlflow.log_metrics(m, step=step), clock
                    )
                    if not math.isfinite(value):
                        raise TrialFailed(f"its best val_{trainer.metric_name} is {value}: nothing to compare")
                except optuna.TrialPruned as err:
                    # stopped early by the pruner, as asked: the MLflow run ends FINISHED, tagged pruned
                    # (raised inside the block, MLflow would end it FAILED)
                    mlflow.set_tag("mlcycle.trial_state", "pruned")
                    pruned = err
                except TrialFailed as err:
                    # raised on through the block: the MLflow run ends FAILED, the Optuna trial FAIL
                    # (the study catches it and goes on), both with the reason
                    reason = f"{family}: {err}"
                    trial.set_user_attr("fail_reason", reason)
                    mlflow.set_tags({"mlcycle.trial_state": "failed", "mlcycle.fail_reason": reason[:5000]})
                    log.warning("trial %s failed: %s", trial.number, reason)
                    raise TrialFailed(reason) from err
                else:
                    trainer.ctx.storage.write_bytes(trainer.ctx.key(trial_artifact(trial.number), STEP), blob)
                    trial.set_user_attr(ARTIFACT_SHA256, sha256_hex(blob))
                    mlflow.set_tag("mlcycle.trial_state", "complete")
                    mlflow.log_metric(f"best_val_{trainer.metric_name}", value)
        finally:
            clock.tick(force=True)  # the whole trial, its MLflow run and artifact included, counts
        if pruned is not None:
            raise pruned
        return value

    return objective
