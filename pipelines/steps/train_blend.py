"""The artifact the train step exports: the best trial's model, or the weighted average of every
family's best where it beats the best alone on the validation rows (`training.ensemble`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pipelines.io.artifacts import read_checked
from pipelines.ml.families import ARTIFACT_SHA256, greedy_ensemble, load_trained, pack_ensemble, trial_artifact
from pipelines.ml.search import ensemble_pays

if TYPE_CHECKING:
    import optuna

    from pipelines.steps.context import StepContext
    from pipelines.steps.train import Trainer

STEP = "train"  # a trial's artifacts lie under the train step's output, whichever worker ran it
log = logging.getLogger(__name__)


def read_trial(ctx: StepContext, trial: optuna.trial.FrozenTrial) -> tuple[bytes, str]:
    """A complete trial's model artifact (once it matches the sha256 the trial recorded) and its URI."""
    key = ctx.key(trial_artifact(trial.number), STEP)
    return read_checked(ctx.storage, key, trial.user_attrs.get(ARTIFACT_SHA256)), ctx.storage.uri(key)


def blend(
    ctx: StepContext, trainer: Trainer, families: dict[str, Any], best: str, single: bytes, trials: dict[int, Any]
) -> tuple[bytes, dict[str, Any] | None]:
    """The artifact to export: the best trial's, or (`training.ensemble`, several families
    searched, no embeddings) the weighted average of every family's best (`study_families`) where
    it beats the best alone on the validation rows; with what was weighed (None where nothing was)."""
    spec = ctx.spec
    bests = {f: v["best_trial"] for f, v in families.items() if v["best_trial"] is not None}
    if not spec.training.ensemble or spec.embeddings is not None or len(bests) < 2:
        return single, None
    read = {f: read_trial(ctx, trials[n]) for f, n in bests.items()}
    blobs = {f: blob for f, (blob, _) in read.items()}
    scores = {f: load_trained(blob, source).predict(trainer.val) for f, (blob, source) in read.items()}
    weights, value = greedy_ensemble(scores, trainer.v_y, trainer.metric, trainer.higher)
    alone = trainer.metric(trainer.v_y, scores[best])
    chosen = len(weights) > 1 and ensemble_pays(value, alone, trainer.higher, spec.training.ensemble_min_gain)
    info = {"weights": weights, "value": value, "best_alone": alone, "chosen": chosen}
    log.info(
        "ensemble of the family bests %s: val %s %.4f against %.4f for %s alone: %s",
        weights,
        trainer.metric_name,
        value,
        alone,
        best,
        "exported" if chosen else "not better by training.ensemble_min_gain: the best model alone is exported",
    )
    if not chosen:
        return single, info
    members = [(blobs[f], w) for f, w in weights.items()]
    return pack_ensemble(trainer.enc, members, {"members": weights}, trainer.classes), info
