"""The canary's gates, pure: the live figures of a version from the request log's rows, and the
judgement of a challenger's figures against the champion's under the spec's SLOs (`canary`). The
weighted canary judges each traffic step with them, a shadow run (`pipelines.ml.shadow`) its
window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipelines.ml.metrics import class_shares

if TYPE_CHECKING:
    from pipelines.core.spec import Canary

# A shift rolls back when it is over `canary.max_score_shift` at one-sided 95 % confidence: a step
# of `min_requests` answers moves a share or a mean by several hundredths on sampling noise alone.
SHIFT_Z = 1.645


def figures(rows: Sequence[tuple[Any, ...]], decide_at: float | None = None) -> dict[int, dict[str, Any]]:
    """Per version: requests, errors, error rate, p99 latency (ms), the scores' mean and standard
    deviation, and (a model that answers a class) each predicted class's share of the answers.
    `rows` are (version, status, score, latency_ms[, predicted class]) of served (not shadow)
    predictions. `decide_at` (a binary label's): an answer logged without a decision (a version
    from before thresholds) decides `score >= decide_at`, as it was served."""
    if decide_at is not None:
        rows = [(*r[:4], decision_of(r[4] if len(r) > 4 else None, r[2], decide_at)) for r in rows]
    out: dict[int, dict[str, Any]] = {}
    for version in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == version]
        errors = sum(1 for r in mine if r[1] == "error")
        scores = [r[2] for r in mine if r[2] is not None]
        out[version] = {
            "requests": float(len(mine)),
            "errors": float(errors),
            "error_rate": errors / len(mine),
            "p99_ms": float(np.percentile([r[3] for r in mine], 99)),
            "mean_score": float(np.mean(scores)) if scores else float("nan"),
            "std_score": float(np.std(scores)) if scores else float("nan"),
            "scored": float(len(scores)),
        }
        labels = [r[4] for r in mine if len(r) > 4 and r[4] is not None]
        if labels:
            out[version]["class_shares"] = class_shares(labels)
            out[version]["decided"] = float(len(labels))
    return out


def decision_of(logged: str | None, score: float | None, threshold: float) -> str | None:
    """A binary answer's decision: the one logged, else its score's side of `threshold` (None for
    an answer without a score: an error). Pure."""
    if logged is not None or score is None:
        return logged
    return "1" if score >= threshold else "0"


def class_shift(champion: dict[str, float], challenger: dict[str, float]) -> float:
    """How far two versions' shares of predicted classes are apart: the total variation distance
    (half the sum of the absolute differences; 0 the same, 1 disjoint). Pure."""
    classes = set(champion) | set(challenger)
    return 0.5 * sum(abs(champion.get(c, 0.0) - challenger.get(c, 0.0)) for c in classes)


def judge(
    cfg: Canary,
    champion: dict[str, Any] | None,
    challenger: dict[str, Any] | None,
    final: bool,
    kind: str = "binary",
) -> tuple[str, list[str]]:
    """`advance`, `wait` (not enough traffic yet) or `rollback`, with reasons. Errors and latency
    roll back as soon as they are seen; the other checks need `min_requests` first, and a step
    that ends (`final`) without them rolls back: an unverified canary is not promoted. The answers'
    shift (`score_shift`) rolls back when even its 95 % lower confidence bound is over
    `max_score_shift`."""
    if challenger is None or challenger["requests"] == 0:
        return ("rollback", ["the challenger received no traffic in this step"]) if final else ("wait", [])
    reasons = []
    if challenger["error_rate"] > cfg.max_error_rate:
        reasons.append(f"challenger error rate {challenger['error_rate']:.2%} over {cfg.max_error_rate:.2%}")
    if challenger["p99_ms"] > cfg.max_p99_latency_ms:
        reasons.append(f"challenger p99 {challenger['p99_ms']:.1f} ms over {cfg.max_p99_latency_ms:.1f} ms")
    enough = challenger["requests"] >= cfg.min_requests
    if reasons and (enough or challenger["errors"] >= 5 or final):
        return "rollback", reasons
    if not enough:
        if final:
            return "rollback", [
                f"only {int(challenger['requests'])} challenger requests, canary.min_requests is {cfg.min_requests}"
            ]
        return "wait", []
    if champion is not None and champion["requests"] > 0:
        moved = score_shift(champion, challenger, kind)
        if moved.floor > cfg.max_score_shift:
            return "rollback", [
                f"{moved.what} moved by {moved.value:.3f}{moved.unit} ({moved.detail}; at least {moved.floor:.3f} "
                f"at 95 % confidence), over canary.max_score_shift {cfg.max_score_shift:.3f}"
            ]
    checks = (
        f"{int(challenger['requests'])} requests, error rate {challenger['error_rate']:.2%}, "
        f"p99 {challenger['p99_ms']:.1f} ms"
    )
    return ("advance" if final else "wait"), [checks]


class Shift(NamedTuple):
    value: float  # the shift seen
    floor: float  # its one-sided 95 % lower confidence bound
    what: str  # what moved
    unit: str
    detail: str  # the figures behind it


def score_shift(champion: dict[str, Any], challenger: dict[str, Any], kind: str) -> Shift:
    """How far the challenger's answers moved from the champion's. Where both versions answer a
    class (a multiclass model; a binary model deciding at its own threshold) it is the total
    variation distance of the classes' shares (`class_shift`): a challenger trained with class weights scores a rare
    class far higher than an unweighted champion while deciding alike. Otherwise it is the mean
    score's: a probability's for a binary label, in the champion's standard deviations of its
    scores for a regression one (a value has the label's units). The bound takes each share's or
    mean's standard error off (`SHIFT_Z` of them): what a step's sample size cannot tell. Pure."""
    mine, theirs = champion.get("class_shares"), challenger.get("class_shares")
    if mine and (kind == "multiclass" or theirs):
        theirs = theirs or {}
        n_a, n_b = _count(champion, "decided"), _count(challenger, "decided")
        floor = 0.0
        for c in set(mine) | set(theirs):
            p, q = mine.get(c, 0.0), theirs.get(c, 0.0)
            se = math.sqrt(p * (1 - p) / n_a + q * (1 - q) / n_b)
            floor += max(0.0, abs(p - q) - SHIFT_Z * se)
        detail = f"total variation distance; champion {mine}, challenger {theirs}"
        return Shift(class_shift(mine, theirs), floor / 2, "the predicted classes' shares", "", detail)
    shift = abs(challenger["mean_score"] - champion["mean_score"])
    se = math.sqrt(
        _spread(champion) ** 2 / _count(champion, "scored") + _spread(challenger) ** 2 / _count(challenger, "scored")
    )
    floor = max(0.0, shift - SHIFT_Z * se)
    detail = f"champion {champion['mean_score']:.3f}, challenger {challenger['mean_score']:.3f}"
    spread = champion.get("std_score", float("nan"))
    if kind == "regression" and spread > 0:
        return Shift(shift / spread, floor / spread, "mean score", " standard deviations", detail)
    return Shift(shift, floor, "mean score", "", detail)


def _count(fig: dict[str, Any], key: str) -> float:
    """The answers a share or a mean was taken over (`requests` for figures made without it)."""
    return max(float(fig.get(key, fig["requests"])), 1.0)


def _spread(fig: dict[str, Any]) -> float:
    value = float(fig.get("std_score", 0.0))
    return 0.0 if math.isnan(value) else value  # NaN: no scores
