"""Evaluation as small pure functions, composed into one result; the promotion gate is a pure
comparison. Nothing here does I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.spec import TASK_METRICS
from pipelines.ml.imbalance import best_f1, fixed_threshold

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.core.spec import Evaluation

Metric = Callable[[np.ndarray, np.ndarray], float]
HIGHER_IS_BETTER = {
    "roc_auc": True,
    "pr_auc": True,
    "f1": True,
    "log_loss": False,
    "calibration_error": False,
    "macro_f1": True,
    "accuracy": True,
    "multi_log_loss": False,
    "rmse": False,
    "mae": False,
    "r2": True,
}


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def f1_at(threshold: float) -> Metric:
    def f1(y: np.ndarray, p: np.ndarray) -> float:
        pred = p >= threshold
        tp = float(np.sum(pred & (y == 1)))
        denom = 2 * tp + float(np.sum(pred & (y == 0))) + float(np.sum(~pred & (y == 1)))
        return 2 * tp / denom if denom else 0.0

    return f1


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.mean() * abs(float(p[mask].mean()) - float(y[mask].mean()))
    return total


def confusion(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Counts of (true class, predicted class): rows the labels (class indices), columns the most
    likely class of each row of probabilities `p` (`[n, K]`). Pure."""
    k = p.shape[1]
    out = np.zeros((k, k), dtype=np.int64)
    np.add.at(out, (np.asarray(y, dtype=np.int64), np.argmax(p, axis=1)), 1)
    return out


def class_f1(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's F1 from a confusion matrix, and whether the class occurs among the labels or
    the predictions (an absent class's F1 is 0 and means nothing). Pure."""
    tp = np.diag(counts).astype(float)
    denom = counts.sum(axis=0) + counts.sum(axis=1)  # 2 tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0), denom > 0


def macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    """The mean F1 over the classes that occur among the labels or the predictions (the most
    likely class of each row of probabilities `p`, `[n, K]`; `y` holds class indices)."""
    f1, present = class_f1(confusion(y, p))
    return float(np.mean(f1[present])) if present.any() else float("nan")


def class_shares(values: Iterable[Any]) -> dict[str, float]:
    """Each class's share of `values` (names, sorted), e.g. the classes a model predicted. Pure."""
    counts = Counter(str(v) for v in values)
    total = sum(counts.values())
    return {c: counts[c] / total for c in sorted(counts)}


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.argmax(p, axis=1) == np.asarray(y, dtype=np.int64)))


def multi_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """The mean negative log probability of each row's true class."""
    rows = np.arange(len(y))
    return float(-np.mean(np.log(np.clip(p[rows, np.asarray(y, dtype=np.int64)], 1e-7, 1.0))))


def encode_label(values: Any, classes: list[str]) -> np.ndarray:
    """A label column as the models read it: class indices (int64, in the order of `classes`) for a
    multiclass label, numbers (float64) otherwise. A value that is no class is an error naming it
    (validation keeps such rows out of training). Pure."""
    if not classes:
        return np.asarray(values, dtype=np.float64)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in values if str(v) not in index})
    if unknown:
        raise ValueError(f"label values {unknown[:5]} are not among the classes {classes}")
    return np.array([index[str(v)] for v in values], dtype=np.int64)


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, float) - p) ** 2)))


def mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, float) - p)))


def r2(y: np.ndarray, p: np.ndarray) -> float:
    """The coefficient of determination (NaN where the labels do not vary)."""
    y = np.asarray(y, float)
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - p) ** 2)) / total if total > 0 else float("nan")


def metric_functions(threshold: float | str, kind: str = "binary") -> dict[str, Metric]:
    """The metrics of a label kind (`TASK_METRICS`); `threshold` is the binary decision's (`tuned`:
    F1 at the best threshold of the rows scored, as the search judges a trial)."""
    every: dict[str, Metric] = {
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "log_loss": log_loss,
        "f1": best_f1 if threshold == "tuned" else f1_at(float(threshold)),
        "calibration_error": calibration_error,
        "macro_f1": macro_f1,
        "accuracy": accuracy,
        "multi_log_loss": multi_log_loss,
        "rmse": rmse,
        "mae": mae,
        "r2": r2,
    }
    return {name: every[name] for name in TASK_METRICS[kind]}


def primary_metric(cfg: Evaluation, kind: str) -> Metric:
    """The function of `evaluation.primary_metric` for the label's kind."""
    return metric_functions(cfg.threshold, kind)[cfg.primary_metric]


def live_metric(cfg: Evaluation, kind: str, threshold: float | None = None) -> Metric:
    """The primary metric of served answers: a binary F1 at the threshold the version decided at
    (`threshold`: its recorded one; none recorded: the spec's fixed one), never the hindsight-best
    F1 the search judges a trial by (`primary_metric`)."""
    return metric_functions(fixed_threshold(cfg.threshold) if threshold is None else threshold, kind)[
        cfg.primary_metric
    ]


def overall(y: np.ndarray, p: np.ndarray, threshold: float | str, kind: str = "binary") -> dict[str, float]:
    return {name: fn(y, p) for name, fn in metric_functions(threshold, kind).items()}


def slices(
    df: pd.DataFrame,
    y: np.ndarray,
    p: np.ndarray,
    columns: list[str],
    threshold: float | str,
    min_rows: int = 30,
    kind: str = "binary",
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics per value of each slice column (values with fewer than `min_rows` rows skipped)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for col in columns:
        out[col] = {}
        for value in sorted(df[col].astype(str).unique()):
            mask = (df[col].astype(str) == value).to_numpy()
            if mask.sum() >= min_rows:
                out[col][value] = {"rows": float(mask.sum()), **overall(y[mask], p[mask], threshold, kind)}
    return out


def bootstrap_difference(
    y: np.ndarray,
    p_new: np.ndarray,
    p_old: np.ndarray,
    metric: Metric,
    samples: int,
    confidence: float,
    seed: int = 0,
    metric_old: Metric | None = None,
) -> dict[str, float]:
    """Paired bootstrap of `metric(new) - metric(old)` over the same rows: estimate and interval
    (`metric_old`: the old model's own, where it decides at a threshold of its own)."""
    old_metric = metric_old or metric
    rng = np.random.default_rng(seed)
    n = len(y)
    diffs = []
    for _ in range(samples):
        i = rng.integers(0, n, n)
        d = metric(y[i], p_new[i]) - old_metric(y[i], p_old[i])
        if not np.isnan(d):
            diffs.append(d)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha]) if diffs else (float("nan"), float("nan"))
    return {
        "difference": metric(y, p_new) - old_metric(y, p_old),
        "lower": float(lo),
        "upper": float(hi),
        "confidence": confidence,
        "samples": float(len(diffs)),
    }


def ab_difference(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    metric: Metric,
    samples: int,
    confidence: float,
    seed: int = 0,
    metric_b: Metric | None = None,
) -> dict[str, float]:
    """`metric(b) - metric(a)` for two independent groups of (labels, scores): an A/B test, where
    each version served its own entities (`metric_b`: b's own, where it decides at a threshold of
    its own). Unpaired bootstrap (each group resampled on its own): the interval, and the
    two-sided p-value of "no difference" as twice the smaller tail of the bootstrap distribution
    around zero (floored at one over the samples drawn)."""
    of_b = metric_b or metric
    rng = np.random.default_rng(seed)
    (ya, pa), (yb, pb) = a, b
    diffs = []
    for _ in range(samples):
        i, j = rng.integers(0, len(ya), len(ya)), rng.integers(0, len(yb), len(yb))
        d = of_b(yb[j], pb[j]) - metric(ya[i], pa[i])
        if not np.isnan(d):
            diffs.append(d)
    if not diffs:
        nan = float("nan")
        return {"difference": nan, "lower": nan, "upper": nan, "p_value": nan, "confidence": confidence, "samples": 0}
    arr = np.asarray(diffs)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(arr, [alpha, 1 - alpha])
    tail = min(float(np.mean(arr <= 0)), float(np.mean(arr >= 0)))
    return {
        "difference": of_b(yb, pb) - metric(ya, pa),
        "lower": float(lo),
        "upper": float(hi),
        "p_value": min(1.0, max(2 * tail, 1 / len(arr))),
        "confidence": confidence,
        "samples": float(len(arr)),
    }


BASELINE_NAMES = {
    "binary": "class-prior baseline",
    "multiclass": "majority-class baseline",
    "regression": "training-mean baseline",
}
"""The trivial model of each label kind, as a verdict names it."""


def baseline_scores(y_train: np.ndarray, rows: int, kind: str = "binary", classes: int = 0) -> np.ndarray:
    """A trivial model's scores of `rows` rows, fitted on the training labels alone: the share of
    1s (the prior) for a binary label; each class's share (`[rows, classes]`, so its most likely
    class is the majority class) for a multiclass one; the mean for a regression one. Pure."""
    y = np.asarray(y_train)
    if kind == "multiclass":
        shares = np.bincount(y.astype(np.int64), minlength=classes)[:classes] / max(len(y), 1)
        return np.tile(shares.astype(np.float64), (rows, 1))
    return np.full(rows, float(np.mean(y)) if len(y) else 0.0, dtype=np.float64)


def baseline(
    y_train: np.ndarray, y_test: np.ndarray, threshold: float | str, kind: str = "binary", classes: int = 0
) -> dict[str, Any]:
    """The kind's trivial model (`baseline_scores`) scored on the test rows: its name and metrics. Pure."""
    scores = baseline_scores(y_train, len(y_test), kind, classes)
    return {"name": BASELINE_NAMES[kind], "metrics": overall(y_test, scores, threshold, kind)}


def beats_baseline(name: str, value: float, trivial: dict[str, Any]) -> tuple[bool, str]:
    """Whether the challenger's primary metric `value` is strictly better than the trivial
    model's, and the verdict's reason. A baseline that is not defined on these rows (NaN, e.g. a
    ROC AUC of one class) gates nothing. Pure."""
    higher = HIGHER_IS_BETTER[name]
    other = float(trivial["metrics"][name])
    label = trivial["name"]
    if not np.isfinite(value):
        return False, f"{name} is {value}: the model is not comparable with the {label}"
    if not np.isfinite(other):
        return True, f"the {label}'s {name} is not defined on these test rows ({other}): not compared"
    ok = bool(value > other if higher else value < other)  # NaN is never better
    word = "above" if higher else "below"
    if ok:
        return True, f"{name} {value:.4f} beats the {label} {other:.4f}"
    return False, f"{name} {value:.4f} is not {word} the {label} {other:.4f}"


def gate(
    cfg: Evaluation,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    difference: dict[str, float] | None,
    latency_ms_per_row: float | None,
    trivial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The promotion verdict with its reasons. A metric where lower is better is compared
    the other way round. `trivial` (`baseline`) is the kind's trivial model on the same test rows:
    with `evaluation.beat_baseline`, the challenger must beat it."""
    name = cfg.primary_metric
    higher = HIGHER_IS_BETTER[name]
    value = challenger[name]
    reasons: list[str] = []
    passed = True
    if cfg.min_primary is not None:
        ok = value >= cfg.min_primary if higher else value <= cfg.min_primary
        word = "minimum" if higher else "maximum"
        reasons.append(f"{name} {value:.4f} {'meets' if ok else 'misses'} the {word} {cfg.min_primary:.4f}")
        passed &= ok
    else:
        reasons.append(f"{name} {value:.4f} (no evaluation.min_primary set)")
    if cfg.beat_baseline and trivial is not None:
        ok, reason = beats_baseline(name, value, trivial)
        reasons.append(reason)
        passed &= ok
    if champion is not None and difference is not None:
        gain = difference["difference"] if higher else -difference["difference"]
        lower = difference["lower"] if higher else -difference["upper"]
        # Superiority (min_improvement >= 0): the interval must clear zero. Non-inferiority
        # (min_improvement < 0, "no worse than the champion by more than the margin"): it must
        # clear the margin.
        bound = min(0.0, cfg.min_improvement)
        beats = gain >= cfg.min_improvement and lower > bound
        reasons.append(
            f"{'beats' if beats else 'does not beat'} the champion: {name} {champion[name]:.4f} -> {value:.4f}, "
            f"improvement {gain:+.4f} (needed {cfg.min_improvement:+.4f}), {difference['confidence']:.0%} CI lower "
            f"bound {lower:+.4f} (needed > {bound:+.4f})"
        )
        passed &= beats
    else:
        reasons.append("no champion yet: the first model that passes the gates becomes champion")
    if cfg.max_latency_ms_per_row is not None and latency_ms_per_row is not None:
        fast = latency_ms_per_row <= cfg.max_latency_ms_per_row
        reasons.append(
            f"ONNX latency {latency_ms_per_row:.3f} ms/row {'within' if fast else 'above'} "
            f"{cfg.max_latency_ms_per_row:.3f}"
        )
        passed &= fast
    verdict: dict[str, Any] = {"passed": bool(passed), "primary_metric": name, "reasons": reasons}
    if trivial is not None:
        verdict["baseline"] = {"name": trivial["name"], name: trivial["metrics"][name]}
    return verdict


def comparison(
    name: str, challenger: dict[str, float], champion: dict[str, float], difference: dict[str, float]
) -> dict[str, Any]:
    """The primary metric, champion against challenger, with the gain and its interval turned so
    that positive is better (a metric where lower is better is negated)."""
    sign = 1.0 if HIGHER_IS_BETTER[name] else -1.0
    lower, upper = sorted((sign * difference["lower"], sign * difference["upper"]))
    return {
        "metric": name,
        "challenger": challenger[name],
        "champion": champion[name],
        "gain": sign * difference["difference"],
        "lower": lower,
        "upper": upper,
        "confidence": difference["confidence"],
    }


def worse_slices(
    name: str, challenger: dict[str, dict[str, dict[str, float]]], champion: dict[str, dict[str, dict[str, float]]]
) -> list[dict[str, Any]]:
    """The slices where the challenger's metric `name` is worse than the champion's on the same
    rows, worst first, each with its gain (negative: worse)."""
    sign = 1.0 if HIGHER_IS_BETTER[name] else -1.0
    worse = []
    for column, values in challenger.items():
        for value, metrics in values.items():
            old = champion.get(column, {}).get(value)
            if old is None or not np.isfinite(metrics[name]) or not np.isfinite(old[name]):
                continue
            gain = sign * (metrics[name] - old[name])
            if gain < 0:
                worse.append(
                    {"slice": f"{column}={value}", "challenger": metrics[name], "champion": old[name], "gain": gain}
                )
    return sorted(worse, key=lambda s: s["gain"])


def tagged_figure(tag: str) -> tuple[str | None, float | None]:
    """The metric and its value from a version's `mlcycle.primary_metric` tag (`pr_auc=0.412300`). Pure."""
    name, sep, value = tag.partition("=")
    try:
        return (name or None), (float(value) if sep else None)
    except ValueError:
        return (name or None), None
