"""What every family's fit shares: the search's side of a fit (`Fitting`), the training and
validation rows encoded once (`TrainingData`), the one early-stopping rule, the finite-figure
checks, and where a trial's artifacts live. Pure."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipelines.core.errors import MlcycleError
from pipelines.ml.metrics import encode_label
from pipelines.ml.model import FeatureEncoding, encode

if TYPE_CHECKING:
    import pandas as pd
    import torch


class TrialFailed(MlcycleError):
    """A trial's loss, scores or metric is not a finite number (e.g. NaN from a missing value):
    the trial fails with this reason and is never the search's best."""


def non_finite_reason(figures: dict[str, float], step: int, unit: str = "epoch") -> str | None:
    """Why a trial fails where one of its figures is not finite (NaN, infinity), else None. Pure."""
    bad = [f"{name} is {value}" for name, value in figures.items() if not math.isfinite(value)]
    return f"{', '.join(bad)} at {unit} {step}" if bad else None


def require_finite(figures: dict[str, float], step: int, unit: str = "epoch") -> None:
    """Raise `TrialFailed` with the reason where a figure is not finite."""
    reason = non_finite_reason(figures, step, unit)
    if reason is not None:
        raise TrialFailed(reason)


def require_finite_scores(scores: np.ndarray, step: int, unit: str) -> None:
    """Raise `TrialFailed` where a model scores a validation row NaN or infinite."""
    bad = int(np.size(scores) - np.count_nonzero(np.isfinite(scores)))
    if bad:
        raise TrialFailed(f"{bad} validation scores are not finite at {unit} {step}")


def trial_artifact(number: int) -> str:
    """Where (under the train step's output) a complete trial's model artifact is written."""
    return f"trials/trial-{number}.bin"


def trial_checkpoint(number: int, sha256: str) -> str:
    """Where (under the train step's output) a trial's training checkpoint with these bytes is
    written: named by its digest, so a checkpoint never overwrites the one its trial last recorded
    (a task killed between the write and the record resumes from the recorded one)."""
    return f"checkpoints/trial-{number}-{sha256[:16]}.pt"


# a trial's attributes (in the study's database, out of a bucket writer's reach): the sha256 of
ARTIFACT_SHA256 = "artifact_sha256"  # its model artifact, recorded as it is written
CHECKPOINT_SHA256 = "checkpoint_sha256"  # its last checkpoint, recorded as it is written
RESUME_SHA256 = "resume_sha256"  # the checkpoint of the interrupted trial it resumes


class EarlyStopping:
    """The one early-stopping rule of every family's loop (epochs, boosting reports, SGD passes):
    stop after `patience` reports without improvement of the validation metric (NaN never
    improves). `best` is held sign-adjusted (higher is better), as checkpoints store it."""

    def __init__(self, patience: int, higher_is_better: bool) -> None:
        self.patience = patience
        self.sign = 1.0 if higher_is_better else -1.0
        self.best = -math.inf
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Record a report's value; True when it is the best so far."""
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

    @property
    def best_or_nan(self) -> float:
        """The best value, NaN where no report improved on nothing (every value NaN)."""
        return self.best_value if self.best != -math.inf else math.nan


class Checkpoints(Protocol):
    """Where a trial's fit saves its progress and finds the progress of the trial it resumes
    (the train step keeps them in the run's storage)."""

    def save(self, blob: bytes) -> None: ...

    def resume(self) -> bytes | None:
        """The checkpoint of the interrupted trial this one resumes, or None."""

    def resumed(self, epoch: int) -> None:
        """Told the epoch a resumed fit starts from."""


@dataclass
class Fitting:
    """What a trial's fit needs from the search."""

    metric: Callable[[np.ndarray, np.ndarray], float]
    higher: bool
    seed: int
    patience: int  # reports without improvement before a fit stops
    report: Callable[[float, int], None]  # an intermediate value at a step; raises optuna.TrialPruned when pruned
    log: Callable[[dict[str, float], int], None]  # figures at a step; the validation metric as `val_metric`
    deadline: float | None = None  # time.monotonic() past which a fit stops with its best so far
    threads: int = 1
    kind: str = "binary"  # the label's: binary (score: probability of 1) or regression (score: the value)
    classes: list[str] = field(default_factory=list)  # a multiclass label's (scores: [n, K] probabilities)
    # epochs of the MLP (the spec's training section)
    max_epochs: int = 30
    batch_size: int = 256
    checkpoint_minutes: float = 10.0
    shuffle_seed: int = 0
    checkpoints: Checkpoints | None = None
    class_weights: np.ndarray | None = None  # a weight per class index (`class_weight: balanced`), else None

    def stopper(self) -> EarlyStopping:
        return EarlyStopping(self.patience, self.higher)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def matrix(df: pd.DataFrame, enc: FeatureEncoding) -> np.ndarray:
    """The raw columns as one float32 matrix: numeric values (NaN kept), then category codes. Pure."""
    return stack(*encode(df, enc))


def stack(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Encoded numeric values and category codes as one float32 matrix. Pure."""
    return np.hstack([numeric, codes.astype(np.float32)])


def target_scaling(y: np.ndarray) -> tuple[float, float]:
    """A regression label's mean and standard deviation (1 where it does not vary). Pure."""
    std = float(np.std(y))
    return float(np.mean(y)), std if std > 0 else 1.0


@dataclass(frozen=True)
class Tensors:
    """The rows as torch tensors on the training device."""

    x_num: torch.Tensor
    x_cat: torch.Tensor
    y: torch.Tensor
    v_num: torch.Tensor
    v_cat: torch.Tensor


class TrainingData:
    """A search's training and validation rows, encoded once: the MLP's tensors on its device,
    and the raw columns' matrices of the other families, made only when such a trial runs (an
    MLP-only search holds no second copy of the data)."""

    def __init__(
        self,
        enc: FeatureEncoding,
        train: pd.DataFrame,
        val: pd.DataFrame,
        label: str,
        classes: list[str],
        device: str = "cpu",
    ) -> None:
        import torch

        self.enc, self.classes, self.device = enc, classes, device
        num, codes = encode(train, enc)
        y = encode_label(train[label], classes)  # a multiclass label's: class indices
        vnum, vcodes = encode(val, enc)
        self.tensors = Tensors(
            torch.from_numpy(num).to(device),
            torch.from_numpy(codes).to(device),
            torch.from_numpy(y if classes else y.astype(np.float32)).to(device),
            torch.from_numpy(vnum).to(device),
            torch.from_numpy(vcodes).to(device),
        )
        self.y = y
        self.v_y = encode_label(val[label], classes)
        self.val = val  # the raw rows: the family bests score them natively to choose an ensemble

    @cached_property
    def train_xy(self) -> tuple[np.ndarray, np.ndarray]:
        t = self.tensors
        return stack(t.x_num.cpu().numpy(), t.x_cat.cpu().numpy()), t.y.cpu().numpy()

    @cached_property
    def val_xy(self) -> tuple[np.ndarray, np.ndarray]:
        t = self.tensors
        return stack(t.v_num.cpu().numpy(), t.v_cat.cpu().numpy()), self.v_y.astype(np.float32)
