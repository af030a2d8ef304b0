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

Outputs: `model.bin` (the best trial's model, encoding and parameters: `pipelines.ml.families`),
`model.onnx` (raw columns in, probability out) and `manifest.json` (with per-family figures).

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
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipelines.core.errors import MlcycleError
from pipelines.core.k8s import cpu_threads
from pipelines.io.db import advisory_lock
from pipelines.io.registry import CHAMPION, alias_version, model_name
from pipelines.io.storage import read_parquet, write_json
from pipelines.io.tracking import airflow_tags, code_version, find_run, optuna_url, setup_mlflow
from pipelines.ml.families import (
    Fitting,
    TrialFailed,
    fit_lightgbm,
    fit_linear,
    greedy_ensemble,
    load_trained,
    mlp_artifact,
    pack_ensemble,
    require_finite,
    require_finite_scores,
    stack,
    target_scaling,
)
from pipelines.ml.metrics import HIGHER_IS_BETTER, encode_label, primary_metric
from pipelines.ml.model import (
    FeatureEncoding,
    architecture,
    build_module,
    encode,
    fit_encoding,
    select_device,
)
from pipelines.steps.context import StepContext

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    import torch

    from pipelines.core.spec import ModelSpec, Param, PipelineSpec

STEP = "train"
log = logging.getLogger(__name__)
FINISHED = ("COMPLETE", "PRUNED")


# ----------------------------------------------------------------------------------- pure core
def study_name(pipeline: str, run_id: str) -> str:
    return f"{pipeline}:{run_id}"


def suggest(trial: optuna.Trial, space: dict[str, Param], prefix: str = "") -> dict[str, Any]:
    """A trial's parameters from a space (named `prefix + name` in the study, returned by name)."""
    params: dict[str, Any] = {}
    for name, p in space.items():
        key = prefix + name
        if p.type == "float":
            params[name] = trial.suggest_float(key, p.low, p.high, log=p.log)
        elif p.type == "int":
            params[name] = trial.suggest_int(key, p.low, p.high, log=p.log)
        else:
            params[name] = trial.suggest_categorical(key, p.choices)
    return params


def choose(trial: optuna.Trial, model: ModelSpec) -> tuple[str, dict[str, Any]]:
    """The trial's family and that family's parameters (one family: no `family` parameter, and
    the parameters under their own names, as studies were before families)."""
    families = model.families
    if len(families) == 1:
        return families[0], suggest(trial, model.space_of(families[0]))
    family = str(trial.suggest_categorical("family", list(families)))
    return family, suggest(trial, model.space_of(family), prefix=f"{family}.")


def warm_start(best: dict[str, str], model: ModelSpec) -> dict[str, Any] | None:
    """The champion's best hyperparameters (as MLflow logged them: strings, with its `family`) as
    a trial of this search, or None where its family is not searched or a parameter is missing or
    outside the space (the spec changed). Pure."""
    family = best.get("family", "tabular_mlp")
    if family not in model.families:
        return None
    several = len(model.families) > 1
    params: dict[str, Any] = {"family": family} if several else {}
    for name, p in model.space_of(family).items():
        raw = best.get(name)
        if raw is None:
            return None
        try:
            if p.type == "categorical":
                value: Any = next(c for c in p.choices if str(c) == raw)
            else:
                value = int(float(raw)) if p.type == "int" else float(raw)
                if not p.low <= value <= p.high:
                    return None
        except (StopIteration, ValueError):
            return None
        params[f"{family}.{name}" if several else name] = value
    return params


def spent_seconds(elapsed: list[float | None]) -> float:
    """The seconds a study has spent in trials: each trial's last recorded `elapsed_s` (a killed
    trial's too, up to its last report). Pure."""
    return float(sum(e for e in elapsed if e is not None))


def budget_left(time_budget_s: int | None, spent: float) -> float | None:
    """What is left of the time budget (None: no budget). The search starts no trial once it is
    0; a trial stops when it runs out. Pure."""
    return None if time_budget_s is None else max(0.0, time_budget_s - spent)


def family_summary(trials: list[tuple[str, str, float | None, float | None, int]], higher: bool) -> dict[str, Any]:
    """Per family: trials by state, the best value and its trial, and the seconds spent, from
    `(family, state, value, elapsed_s, number)`. Pure."""
    out: dict[str, Any] = {}
    for family, state, value, elapsed, number in trials:
        f = out.setdefault(
            family,
            {"trials": 0, "complete": 0, "pruned": 0, "failed": 0, "best": None, "best_trial": None, "seconds": 0.0},
        )
        f["trials"] += 1
        key = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(state, "failed" if state == "FAIL" else None)
        if key:
            f[key] += 1
        f["seconds"] = round(f["seconds"] + (elapsed or 0.0), 1)
        done = state == "COMPLETE" and value is not None and not math.isnan(value)
        if done and (f["best"] is None or (value > f["best"] if higher else value < f["best"])):
            f["best"], f["best_trial"] = value, number
    return out


def failure_summary(reasons: list[str | None], pruned: int = 0) -> str:
    """Why no trial of a search completed, from its failed trials' reasons (None: a trial that
    failed without one, e.g. interrupted), the commonest first. Pure."""
    counts = Counter(r or "failed without a recorded reason" for r in reasons)
    parts = [f"{n} failed: {reason}" for reason, n in counts.most_common()]
    if pruned:
        parts.append(f"{pruned} pruned")
    return "; ".join(parts) or "no trial ran"


def remaining_budget(n_trials: int | None, finished: int) -> int | None:
    """How many more trials to run (None: no trial cap, the timeout decides). Pure."""
    return None if n_trials is None else max(0, n_trials - finished)


class EarlyStopping:
    """Stop after `patience` epochs without improvement of the validation metric."""

    def __init__(self, patience: int, higher_is_better: bool) -> None:
        self.patience = patience
        self.sign = 1.0 if higher_is_better else -1.0
        self.best = -math.inf
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Record an epoch's value; True when it is the best so far."""
        if not math.isnan(value) and self.sign * value > self.best:
            self.best = self.sign * value
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    @property
    def best_value(self) -> float:
        return self.sign * self.best


def make_pruner(kind: str, by_family: bool = False) -> Any:
    """The spec's pruner. `median`: a trial past its first 2 steps stops when its best value is
    worse than the median of earlier trials at the same step (after 3 trials).
    `successive_halving` (asynchronous, Optuna's): at 1, 3, 9, ... steps a trial goes on only if it
    is in the top third of the trials that reached that step; the cheapest, and the first trials
    decide more. `hyperband`: successive halving in brackets of different aggressiveness.
    `by_family`: median and successive halving compare a trial only with trials of its own family
    (Hyperband's brackets are the study's own and stay shared)."""
    import optuna

    pruner: Any
    if kind == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    elif kind == "successive_halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    elif kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2)
    else:
        return optuna.pruners.NopPruner()
    return FamilyPruner(pruner) if by_family else pruner


class _FamilyView:
    """A study as a pruner reads it, holding only one family's trials."""

    def __init__(self, study: optuna.Study, family: Any) -> None:
        self._study, self._family = study, family

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.params.get("family") == self._family]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class FamilyPruner:
    """Wraps a pruner so that it judges a trial against its own family's trials only."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return bool(self.inner.prune(_FamilyView(study, trial.params.get("family")), trial))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ training
class Trainer:
    """Trains one trial's model; checkpoints to the run's storage."""

    def __init__(
        self, ctx: StepContext, enc: FeatureEncoding, train: pd.DataFrame, val: pd.DataFrame, device: str
    ) -> None:
        import torch

        spec = ctx.spec
        self.ctx = ctx
        self.enc = enc
        self.device = device
        self.cfg = spec.training
        self.kind = spec.label.kind
        self.metric_name = spec.evaluation.primary_metric
        self.metric = primary_metric(spec.evaluation, self.kind)
        self.higher = HIGHER_IS_BETTER[self.metric_name]
        num, codes = encode(train, enc)
        self.x_num = torch.from_numpy(num).to(device)
        self.x_cat = torch.from_numpy(codes).to(device)
        self.classes = spec.classes  # a multiclass label's: y holds class indices
        y = encode_label(train[spec.label.column], self.classes)
        self.y = torch.from_numpy(y if self.classes else y.astype(np.float32)).to(device)
        # a regression MLP learns the standardised label (its head is rescaled in the graph)
        self.target = target_scaling(y) if self.kind == "regression" else None
        vnum, vcodes = encode(val, enc)
        self.v_num = torch.from_numpy(vnum).to(device)
        self.v_cat = torch.from_numpy(vcodes).to(device)
        self.v_y = encode_label(val[spec.label.column], self.classes)
        self.val = val  # the raw rows: the family bests score them natively to choose an ensemble
        self.threads = cpu_threads(spec.resources.for_step(ctx.step).cpu, os.cpu_count())
        self.epoch = 0  # the MLP's epoch being trained (1-based), for a failure's reason

    # the raw columns' matrices of LightGBM and the linear model, from the encoded tensors, made
    # only when such a trial runs (an MLP-only search holds no second copy of the data)
    @cached_property
    def train_xy(self) -> tuple[np.ndarray, np.ndarray]:
        return stack(self.x_num.cpu().numpy(), self.x_cat.cpu().numpy()), self.y.cpu().numpy()

    @cached_property
    def val_xy(self) -> tuple[np.ndarray, np.ndarray]:
        return stack(self.v_num.cpu().numpy(), self.v_cat.cpu().numpy()), self.v_y.astype(np.float32)

    def fit_family(
        self, trial: optuna.Trial, family: str, params: dict[str, Any], log_metrics: Any, clock: TrialClock
    ) -> tuple[float, bytes]:
        """Train one trial of any family; returns the best validation value and the artifact."""
        if family == "tabular_mlp":
            return self.fit(trial, params, log_metrics, clock)
        fitting = Fitting(
            metric=self.metric,
            higher=self.higher,
            seed=self.cfg.seed + trial.number,
            patience=self.cfg.early_stopping_patience,
            report=clock.report,
            log=lambda metrics, step: log_metrics({f"val_{self.metric_name}": metrics["val_metric"]}, step),
            deadline=clock.deadline,
            threads=self.threads,
            kind=self.kind,
            classes=self.classes,
        )
        fit = {"lightgbm": fit_lightgbm, "linear": fit_linear}[family]
        return fit(self.enc, params, self.train_xy, self.val_xy, fitting)

    def checkpoint_key(self, number: int) -> str:
        return self.ctx.key(f"checkpoints/trial-{number}.pt", STEP)  # the train step's, whichever worker

    def validate(self, module: torch.nn.Module) -> float:
        import torch

        module.eval()
        with torch.no_grad():
            p = module.output(module(self.v_num, self.v_cat)).cpu().numpy()  # type: ignore[operator]
        require_finite_scores(p, self.epoch, "epoch")
        return float(self.metric(self.v_y, p))

    def fit(
        self, trial: optuna.Trial, params: dict[str, Any], log_metrics: Any, clock: TrialClock | None = None
    ) -> tuple[float, bytes]:
        """Train the MLP to early stopping (or pruning, or the deadline); returns the best
        validation value and the artifact."""
        import torch

        clock = clock or TrialClock(trial, self.metric_name)
        torch.manual_seed(self.cfg.seed + trial.number)
        module = build_module(self.enc, **architecture(params), target=self.target, classes=len(self.classes))
        module = module.to(self.device)
        opt = torch.optim.AdamW(
            module.parameters(), lr=params.get("learning_rate", 1e-3), weight_decay=params.get("weight_decay", 0.0)
        )
        stopper = EarlyStopping(self.cfg.early_stopping_patience, self.higher)
        best_state: dict[str, Any] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        start_epoch = self._resume(trial, module, opt, stopper, best_state)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1000 + trial.number)
        loss_fn: torch.nn.Module = (
            torch.nn.CrossEntropyLoss()
            if self.classes
            else torch.nn.MSELoss()
            if self.target
            else torch.nn.BCEWithLogitsLoss()
        )
        y = self.y if self.target is None else (self.y - self.target[0]) / self.target[1]
        last_checkpoint = time.monotonic()
        n = len(self.y)
        for epoch in range(start_epoch, self.cfg.max_epochs):
            self.epoch = epoch + 1
            module.train()
            order = torch.randperm(n, generator=gen).to(self.device)
            total = 0.0
            for i in range(0, n, self.cfg.batch_size):
                idx = order[i : i + self.cfg.batch_size]
                opt.zero_grad()
                loss = loss_fn(module(self.x_num[idx], self.x_cat[idx]), y[idx])
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            require_finite({"train_loss": total / n}, epoch + 1)  # NaN weights would score nothing
            value = self.validate(module)
            if stopper.step(value):
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            log_metrics({"train_loss": total / n, f"val_{self.metric_name}": value}, epoch)
            if time.monotonic() - last_checkpoint >= self.cfg.checkpoint_minutes * 60:
                self._checkpoint(trial.number, module, opt, stopper, best_state, epoch + 1)
                last_checkpoint = time.monotonic()
            clock.report(value, epoch + 1)  # the step is the training done: epochs, as rounds and passes are
            if stopper.should_stop or clock.out_of_time():
                break
        module.load_state_dict(best_state)
        self._checkpoint(trial.number, module, opt, stopper, best_state, self.cfg.max_epochs)
        return stopper.best_value, mlp_artifact(module.cpu(), self.enc, params, self.classes)

    def _checkpoint(
        self, number: int, module: Any, opt: Any, stopper: EarlyStopping, best: dict[str, Any], next_epoch: int
    ) -> None:
        import io

        import torch

        buf = io.BytesIO()
        torch.save(
            {
                "module": module.state_dict(),
                "opt": opt.state_dict(),
                "best": best,
                "stopper": (stopper.best, stopper.bad_epochs),
                "next_epoch": next_epoch,
            },
            buf,
        )
        self.ctx.storage.write_bytes(self.checkpoint_key(number), buf.getvalue())

    def _resume(self, trial: optuna.Trial, module: Any, opt: Any, stopper: EarlyStopping, best: dict[str, Any]) -> int:
        import io

        import torch

        previous = trial.user_attrs.get("resume_from")
        if previous is None or not self.ctx.storage.exists(self.checkpoint_key(int(previous))):
            return 0
        blob = torch.load(
            io.BytesIO(self.ctx.storage.read_bytes(self.checkpoint_key(int(previous)))),
            map_location=self.device,
            weights_only=False,
        )
        module.load_state_dict(blob["module"])
        opt.load_state_dict(blob["opt"])
        best.update(blob["best"])
        stopper.best, stopper.bad_epochs = blob["stopper"]
        log.info("trial %s resumes trial %s from epoch %s", trial.number, previous, blob["next_epoch"])
        trial.set_user_attr("resumed_at_epoch", int(blob["next_epoch"]))
        return int(blob["next_epoch"])


ELAPSED_EVERY_S = 5.0
"""A trial records its elapsed seconds (what the time budget counts) at most this often, and at its end."""


class TrialClock:
    """A trial's reports to the pruner, its elapsed seconds recorded in the study as it goes (a
    killed trial's time still counts against the budget), and its deadline (the budget)."""

    def __init__(
        self, trial: optuna.Trial, metric_name: str, deadline: float | None = None, started: float | None = None
    ) -> None:
        self.trial, self.metric_name, self.deadline = trial, metric_name, deadline
        self.started = time.monotonic() if started is None else started
        self.recorded = -math.inf

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.recorded >= ELAPSED_EVERY_S:
            self.trial.set_user_attr("elapsed_s", round(now - self.started, 2))
            self.recorded = now

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def report(self, value: float, step: int) -> None:
        """An intermediate value; raises `optuna.TrialPruned` when the pruner says so."""
        import optuna

        self.trial.report(value, step)
        self.tick()
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: val_{self.metric_name}={value:.4f}")


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
        study.enqueue_trial(t.params, user_attrs={"resume_from": t.number}, skip_if_exists=False)
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
    warm = enqueue_champion(ctx, study)
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


def enqueue_champion(ctx: StepContext, study: optuna.Study) -> dict[str, Any] | None:
    """A new study's first trial is the champion's best hyperparameters (a warm start that costs
    one trial of the budget): a retraining on new data starts from what won last time. With several
    families, each is then tried once, cheapest first."""

    if study.get_trials(deepcopy=False):
        return None  # a retry: the study already has its first trials
    warm = champion_params(ctx)
    if warm is not None:
        study.enqueue_trial(warm["params"], user_attrs={"warm_start": f"champion v{warm['champion']}"})
        log.info("warm start: trial 0 is champion v%s's hyperparameters %s", warm["champion"], warm["params"])
    families = ctx.spec.model.families
    if len(families) > 1:  # each family once, cheapest first; then the sampler follows the winners
        for family in families:
            study.enqueue_trial({"family": family}, user_attrs={"first_of_family": family})
    return warm


def champion_params(ctx: StepContext) -> dict[str, Any] | None:
    """The champion's best hyperparameters as a trial of this search, or None."""
    import mlflow  # heavy: mlflow

    setup_mlflow(ctx.settings, ctx.pipeline)
    client = mlflow.MlflowClient()
    champion = alias_version(client, model_name(ctx.pipeline), CHAMPION)
    training_run = champion.tags.get("mlcycle.training_run") if champion else None
    if not champion or not training_run:
        return None
    logged = client.get_run(training_run).data.params
    params = warm_start({k.removeprefix("best."): v for k, v in logged.items()}, ctx.spec.model)
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


def export_best(ctx: StepContext, study: optuna.Study, trainer: Trainer) -> dict[str, Any]:
    """The best trial's model as the run's `model.bin` and `model.onnx`, logged to the active
    (parent) MLflow run with the trial counts and the per-family figures; the manifest's fields
    about it."""
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
    single = ctx.storage.read_bytes(ctx.key(f"trials/trial-{best.number}.bin", STEP))
    alone = load_trained(single)  # the best trial's model; its parameters are a later run's warm start
    blob, ensemble = blend(ctx, trainer, families, trial_family(best, ctx.spec.model.families), single)
    trained = alone if blob is single else load_trained(blob)
    onnx_bytes = trained.to_onnx(embedding=ctx.spec.embeddings is not None).SerializeToString()
    model_uri = ctx.storage.write_bytes(ctx.key("model.bin"), blob)
    onnx_uri = ctx.storage.write_bytes(ctx.key("model.onnx"), onnx_bytes)
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
    }


def blend(
    ctx: StepContext, trainer: Trainer, families: dict[str, Any], best_family: str, single: bytes
) -> tuple[bytes, dict[str, Any] | None]:
    """The artifact to export: the best trial's, or (`training.ensemble`, several families
    searched, no embeddings) the weighted average of every family's best (`study_families`) where
    it beats the best alone on the validation rows; with what was weighed (None where nothing was)."""
    spec = ctx.spec
    bests = {f: v["best_trial"] for f, v in families.items() if v["best_trial"] is not None}
    if not spec.training.ensemble or spec.embeddings is not None or len(bests) < 2:
        return single, None
    blobs = {f: ctx.storage.read_bytes(ctx.key(f"trials/trial-{n}.bin", STEP)) for f, n in bests.items()}
    scores = {f: load_trained(b).predict(trainer.val) for f, b in blobs.items()}
    weights, value = greedy_ensemble(scores, trainer.v_y, trainer.metric, trainer.higher)
    alone = trainer.metric(trainer.v_y, scores[best_family])
    chosen = len(weights) > 1 and ensemble_pays(value, alone, trainer.higher, spec.training.ensemble_min_gain)
    info = {"weights": weights, "value": value, "best_alone": alone, "chosen": chosen}
    log.info(
        "ensemble of the family bests %s: val %s %.4f against %.4f for %s alone: %s",
        weights,
        trainer.metric_name,
        value,
        alone,
        best_family,
        "exported" if chosen else "not better by training.ensemble_min_gain: the best model alone is exported",
    )
    if not chosen:
        return single, info
    members = [(blobs[f], w) for f, w in weights.items()]
    return pack_ensemble(trainer.enc, members, {"members": weights}, trainer.classes), info


def ensemble_pays(value: float, alone: float, higher: bool, min_gain: float) -> bool:
    """Whether an ensemble's validation metric beats the best model alone by more than the
    relative `min_gain` (of the best model's magnitude): what its extra latency buys. Pure."""
    gain = value - alone if higher else alone - value
    return gain > 0 and gain > min_gain * abs(alone)


def study_families(study: optuna.Study, families: Sequence[str], higher: bool) -> dict[str, Any]:
    """The per-family figures of a study (a one-family study's trials have no `family` parameter)."""
    rows = [
        (trial_family(t, families), t.state.name, t.value, t.user_attrs.get("elapsed_s"), t.number)
        for t in study.get_trials(deepcopy=False)
    ]
    return family_summary(rows, higher)


def trial_family(trial: optuna.trial.FrozenTrial, families: Sequence[str]) -> str:
    """A trial's family (a one-family study's trials have no `family` parameter)."""
    return str(trial.params.get("family", families[0]))


def study_spent(study: optuna.Study) -> float:
    return spent_seconds([t.user_attrs.get("elapsed_s") for t in study.get_trials(deepcopy=False)])


def budget_callbacks(time_budget_s: int | None) -> list[Any]:
    """Stop the study once its trials have spent the time budget (every worker's trials count)."""
    if time_budget_s is None:
        return []

    def stop_when_spent(study: optuna.Study, _trial: Any) -> None:
        if study_spent(study) >= time_budget_s:
            study.stop()

    return [stop_when_spent]


def trial_states(names: tuple[str, ...]) -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return tuple(TrialState[n] for n in names)


def objective_for(trainer: Trainer, spec: PipelineSpec, parent_run_id: str, worker: int | None = None) -> Any:
    import mlflow
    import optuna

    budget = spec.training.time_budget_s

    def objective(trial: optuna.Trial) -> float:
        if worker is not None:
            trial.set_user_attr("worker", worker)
        started = time.monotonic()
        family, params = choose(trial, spec.model)
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
                    trainer.ctx.storage.write_bytes(trainer.ctx.key(f"trials/trial-{trial.number}.bin", STEP), blob)
                    mlflow.set_tag("mlcycle.trial_state", "complete")
                    mlflow.log_metric(f"best_val_{trainer.metric_name}", value)
        finally:
            clock.tick(force=True)  # the whole trial, its MLflow run and artifact included, counts
        if pruned is not None:
            raise pruned
        return value

    return objective
