"""The search's pure pieces, read by the train step and its trial workers: a trial's family and
parameters from the spec's spaces, the champion's parameters as a warm start, the time budget's
arithmetic and a trial's clock, the per-family figures and failure summary, the pruners (a trial
judged against its own family's trials only), and whether an ensemble pays. No database: a study
here is whatever Optuna storage the step opened."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipelines.ml.imbalance import CLASS_WEIGHT

if TYPE_CHECKING:
    import optuna

    from pipelines.core.spec import ModelSpec, Param

FINISHED = ("COMPLETE", "PRUNED")


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


def choose(trial: optuna.Trial, model: ModelSpec, weightings: Sequence[str] = ("none",)) -> tuple[str, dict[str, Any]]:
    """The trial's family and that family's parameters (one family: no `family` parameter, and
    the parameters under their own names, as studies were before families), with its
    `class_weight` where the search may weigh classes (`pipelines.ml.imbalance.weightings`:
    searched where there are two, fixed where one is `balanced`)."""
    families = model.families
    family = families[0] if len(families) == 1 else str(trial.suggest_categorical("family", list(families)))
    prefix = "" if len(families) == 1 else f"{family}."
    params = suggest(trial, model.space_of(family), prefix=prefix)
    if len(weightings) > 1:
        params[CLASS_WEIGHT] = trial.suggest_categorical(prefix + CLASS_WEIGHT, list(weightings))
    elif weightings[0] != "none":
        params[CLASS_WEIGHT] = weightings[0]
    return family, params


def warm_start(best: dict[str, str], model: ModelSpec, weightings: Sequence[str] = ("none",)) -> dict[str, Any] | None:
    """The champion's best hyperparameters (as MLflow logged them: strings, with its `family`) as
    a trial of this search, or None where its family is not searched or a parameter is missing or
    outside the space (the spec changed). Its class weighting where the search tries several
    (`none` for a champion that logged none: it was trained unweighted). Pure."""
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
    if len(weightings) > 1:
        weighed = best.get(CLASS_WEIGHT, "none")
        params[f"{family}.{CLASS_WEIGHT}" if several else CLASS_WEIGHT] = weighed if weighed in weightings else "none"
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
