"""A rare class handled: the class weights a search may train with, and the decision threshold a
binary model is served with. Pure.

* `training.class_weight: auto` searches `class_weight` (`none` or `balanced`) as a parameter of
  every family where the training rows' rarest class, its share scaled to two classes
  (`imbalance`), is at most `training.imbalance_rate`;
  `balanced` always weighs, `none` never. Balanced weights are scikit-learn's: `n / (K * n_k)`,
  so every class carries the same total weight.
* A binary model decides `score >= threshold`. `evaluation.threshold: tuned` chooses it on the
  validation rows, where the model's F1 is highest; a number fixes it. The train step writes it
  into the ONNX graph's metadata (`THRESHOLD_KEY`), so the version serves its
  own decision and evaluate judges each version at its own threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import onnx

Weighting = Literal["none", "balanced"]
CLASS_WEIGHT = "class_weight"  # the parameter a trial's `params` carries
DEFAULT_THRESHOLD = 0.5  # a binary model's decision threshold where none was recorded (older versions)
MIN_TUNING_ROWS = 5  # validation rows of each class a tuned threshold needs


def class_counts(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows per class index (a binary label: 0 and 1). Pure."""
    return np.bincount(np.asarray(y).astype(np.int64), minlength=max(n_classes, 2))


def rarest_share(y: np.ndarray, n_classes: int) -> float:
    """The share of the rows in the rarest class (1.0 for no rows). Pure."""
    counts = class_counts(y, n_classes)
    return float(counts.min() / counts.sum()) if counts.sum() else 1.0


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """A weight per class index, `n / (K * n_k)` (1 for a class without rows). Pure."""
    counts = class_counts(y, n_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def imbalance(y: np.ndarray, n_classes: int) -> float:
    """The rarest class's share of the rows scaled to two classes (`share * K / 2`): a binary
    label's positive rate where positives are rarer, 0.5 for any label split evenly. Pure."""
    return rarest_share(y, n_classes) * max(n_classes, 2) / 2


def weightings(mode: str, kind: str, y: np.ndarray, n_classes: int, imbalance_rate: float) -> tuple[Weighting, ...]:
    """The class weightings a search may try: `auto` tries both where the label is imbalanced
    (`imbalance` at most `imbalance_rate`; a regression label: none ever). Pure."""
    if kind == "regression" or mode == "none":
        return ("none",)
    if mode == "balanced":
        return ("balanced",)
    return ("none", "balanced") if imbalance(y, n_classes) <= imbalance_rate else ("none",)


def row_weights(class_weights: np.ndarray | None, y: np.ndarray) -> np.ndarray | None:
    """Each training row's weight (its class's), None where the fit is unweighted. Pure."""
    return None if class_weights is None else class_weights[np.asarray(y).astype(np.int64)]


def f1_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct score as a threshold (`score >= t` decides 1) and the F1 at each. Pure."""
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")
    scores, hits = np.asarray(p, dtype=np.float64)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last row of each distinct score
    tp = np.cumsum(hits)[last].astype(np.float64)
    decided = (last + 1).astype(np.float64)
    f1 = 2 * tp / (decided + hits.sum())  # 2TP / (2TP + FP + FN); at least one row decided
    return scores[last], f1


def best_f1(y: np.ndarray, p: np.ndarray) -> float:
    """The highest F1 any threshold reaches (0 with no positive row). Pure."""
    if len(y) == 0:
        return 0.0
    return float(f1_curve(y, p)[1].max())


def tuned_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold with the highest F1 on these rows, halfway to the next lower score (so a
    score a hair below the best one decides as it does); `DEFAULT_THRESHOLD` where fewer than
    `MIN_TUNING_ROWS` rows are of either class (a threshold tuned on a handful of positives would
    decide by their noise). Pure."""
    y = np.asarray(y)
    positives = int(np.count_nonzero(y))
    if min(positives, len(y) - positives) < MIN_TUNING_ROWS:
        return DEFAULT_THRESHOLD
    thresholds, f1 = f1_curve(y, p)
    best = int(np.argmax(f1))
    lower = thresholds[best + 1] if best + 1 < len(thresholds) else max(thresholds[best] - 1e-6, 0.0)
    return float((thresholds[best] + lower) / 2)


def binary_threshold(configured: float | str, y: np.ndarray, p: np.ndarray) -> float:
    """A binary model's threshold: the spec's number, or (`tuned`) the validation rows' best. Pure."""
    return tuned_threshold(y, p) if configured == "tuned" else float(configured)


def fixed_threshold(configured: float | str) -> float:
    """The spec's threshold where a comparison needs one number and no version's own is at hand
    (`tuned`: `DEFAULT_THRESHOLD`). Pure."""
    return DEFAULT_THRESHOLD if configured == "tuned" else float(configured)


THRESHOLD_KEY = "mlcycle.threshold"
"""A binary model's decision threshold (`score >= threshold` decides 1), in its metadata as text
(`pipelines.ml.imbalance`)."""


def set_threshold(model: onnx.ModelProto, threshold: float) -> None:
    """Record a binary model's decision threshold in its metadata (replacing one recorded)."""
    kept = [p for p in model.metadata_props if p.key != THRESHOLD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = THRESHOLD_KEY, repr(float(threshold))


def recorded_threshold(metadata: dict[str, str]) -> float | None:
    """The decision threshold a model's metadata records (ONNX Runtime's `custom_metadata_map`),
    None where it records none (another label kind, or a version from before thresholds). Pure."""
    raw = metadata.get(THRESHOLD_KEY)
    return None if raw is None else float(raw)


def session_threshold(session: Any) -> float | None:
    """`recorded_threshold` of an ONNX Runtime session's model."""
    return recorded_threshold(session.get_modelmeta().custom_metadata_map)
