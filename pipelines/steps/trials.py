"""`trials`: one of `training.parallelism` workers on the run's one Optuna study.

Each worker is a pod of its own (with the train step's resources, a GPU too) running trials of the
study in the platform's PostgreSQL until the run's trial budget is spent, whoever ran them; Optuna's
TPE sampler sees every worker's finished trials. A worker tags its trials with its number, so a
retried worker recovers its own interrupted trials (resumed from their checkpoints) and never a
running one of another worker. `train` runs after every worker: it recovers what a dead worker left,
runs what is left of the budget, and exports the best trial.
"""

from __future__ import annotations

from typing import Any

from pipelines.core.errors import InvalidArgument
from pipelines.io.tracking import find_run, setup_mlflow
from pipelines.ml.families import TrialFailed
from pipelines.ml.search import FINISHED, budget_callbacks, budget_left, remaining_budget, study_spent, trial_states
from pipelines.steps.context import StepContext
from pipelines.steps.train import enqueue_champion, objective_for, prepare, recover_interrupted

STEP = "trials"


def run(ctx: StepContext) -> dict[str, Any]:
    import mlflow  # heavy: mlflow
    from optuna.study import MaxTrialsCallback

    workers = ctx.spec.training.parallelism
    if ctx.worker is None or not 0 <= ctx.worker < workers:
        raise InvalidArgument(f"step trials needs --worker K with 0 <= K < training.parallelism ({workers})")
    trainer, study = prepare(ctx)
    exp_id = setup_mlflow(ctx.settings, ctx.pipeline)
    recovered = recover_interrupted(study, ctx.worker)
    warm = enqueue_champion(ctx, study, trainer.weightings) if ctx.worker == 0 else None
    budget = ctx.spec.training.n_trials
    before = len(study.get_trials(deepcopy=False, states=trial_states(FINISHED)))
    tags = {"mlcycle.pipeline": ctx.pipeline, "mlcycle.run_id": ctx.run_id, "mlcycle.step": STEP}
    tags["mlcycle.worker"] = str(ctx.worker)
    existing = find_run(exp_id, tags)
    with mlflow.start_run(
        run_id=existing.info.run_id if existing else None,
        run_name=None if existing else f"trials {ctx.run_id} worker {ctx.worker}",
        tags={**tags, "mlcycle.optuna_study": study.study_name},
    ) as parent:
        training = ctx.spec.training
        left = budget_left(training.time_budget_s, study_spent(study))
        if remaining_budget(budget, before) != 0 and left != 0:
            # the budgets are shared: stop once the study as a whole has finished that many
            # trials, or spent the time budget
            stop = [MaxTrialsCallback(budget, states=trial_states(FINISHED))] if budget is not None else []
            study.optimize(
                objective_for(trainer, ctx.spec, parent.info.run_id, ctx.worker),
                timeout=training.timeout_s,
                callbacks=stop + budget_callbacks(training.time_budget_s),
                gc_after_trial=True,
                catch=(TrialFailed,),  # the trial ends FAIL with its reason; the search goes on
            )
    finished = study.get_trials(deepcopy=False, states=trial_states(FINISHED))
    return {
        "step": STEP,
        "worker": ctx.worker,
        "workers": workers,
        "study": study.study_name,
        "trials_by_this_worker": sum(t.user_attrs.get("worker") == ctx.worker for t in finished),
        "finished_in_study": len(finished),
        "recovered_trials": recovered,
        "warm_start": warm,
        "device": trainer.device,
        "mlflow_run_id": parent.info.run_id,
    }
