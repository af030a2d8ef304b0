"""Model families of one search, interchangeable downstream: the regularised linear model
(`linear`), LightGBM (`lightgbm`), the torch MLP (`mlp`), and the weighted `ensemble` of a
search's family bests. One protocol (`registry.ModelFamily`), one module a family, and the
registry lines below.

* Every family reads the same `FeatureEncoding` (`pipelines.ml.model`). LightGBM and the linear
  model fit on the raw columns' matrix (`fitting.matrix`: numeric values as they are, NaN kept;
  categorical codes, 0 for a category unseen in training); the linear model imputes (median),
  scales and one-hot encodes inside its scikit-learn pipeline.
* Missing values: LightGBM routes a NaN down each split's learnt default branch; the linear model
  imputes the training median; the MLP imputes the median and adds a missing indicator inside its
  module. A null category is the unknown code 0 in every family. Each family's ONNX graph does the
  same on the wire convention (NaN, `""`).
* A fit whose loss or scores are not finite raises `TrialFailed` with the reason: the search
  marks the trial failed and never takes it for the best.
* Every family reports intermediate values (epochs, boosting rounds, SGD passes) through
  `Fitting.report`, which the pruner acts on, stops by the one early-stopping rule
  (`Fitting.stopper`) and at `Fitting.deadline` (the search's time budget) with the best it has.
* Every family exports ONNX with the same raw-column inputs and `score` output (`converted` puts
  the shared string-to-code front before a converted model), so evaluate, promote, the parity
  check and serving take any family unchanged.
* A trained model travels as one artifact (`registry.pack` / `load_trained`): a JSON header
  (family, encoding, parameters, classes) and the family's payload.
"""

from __future__ import annotations

from pipelines.ml.families import ensemble, lightgbm, linear, mlp
from pipelines.ml.families.ensemble import greedy_ensemble, pack_ensemble
from pipelines.ml.families.fitting import (
    ARTIFACT_SHA256,
    CHECKPOINT_SHA256,
    RESUME_SHA256,
    EarlyStopping,
    Fitting,
    TrainingData,
    TrialFailed,
    matrix,
    require_finite,
    require_finite_scores,
    stack,
    trial_artifact,
    trial_checkpoint,
)
from pipelines.ml.families.registry import (
    ModelFamily,
    Trained,
    family,
    load_trained,
    pack,
    register,
    unregister,
)

register(linear.FAMILY)
register(lightgbm.FAMILY)
register(mlp.FAMILY)
register(ensemble.FAMILY, searched=False)

__all__ = [
    "ARTIFACT_SHA256",
    "CHECKPOINT_SHA256",
    "RESUME_SHA256",
    "EarlyStopping",
    "Fitting",
    "ModelFamily",
    "Trained",
    "TrainingData",
    "TrialFailed",
    "family",
    "greedy_ensemble",
    "load_trained",
    "matrix",
    "pack",
    "pack_ensemble",
    "register",
    "require_finite",
    "require_finite_scores",
    "stack",
    "trial_artifact",
    "trial_checkpoint",
    "unregister",
]
