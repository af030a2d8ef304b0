"""The canary's gates, pure: the live figures of a version from the request log's rows, and the
judgement of a challenger's figures against the champion's under the spec's SLOs (`canary`). The
weighted canary judges each traffic step with them, a shadow run (`pipelines.ml.shadow`) its
window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.ml.metrics import class_shares

if TYPE_CHECKING:
    from pipelines.core.spec import Canary


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
        }
        labels = [r[4] for r in mine if len(r) > 4 and r[4] is not None]
        if labels:
            out[version]["class_shares"] = class_shares(labels)
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
    that ends (`final`) without them rolls back: an unverified canary is not promoted. Where both
    versions answer a class (a multiclass model; a binary model deciding at its own threshold),
    the shift is in the shares of the classes predicted (`class_shift`): a challenger trained with
    class weights scores a rare class far higher than an unweighted champion while deciding alike.
    Otherwise it is the mean score's: a probability's for a binary label, in the champion's
    standard deviations of its scores for a regression one (a value has the label's units)."""
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
    shares = champion is not None and bool(champion.get("class_shares"))  # it answers classes
    if champion is not None and shares and (kind == "multiclass" or bool(challenger.get("class_shares"))):
        shift = class_shift(champion["class_shares"], challenger.get("class_shares", {}))
        if shift > cfg.max_score_shift:
            return "rollback", [
                f"the predicted classes' shares moved by {shift:.3f} (total variation distance; champion "
                f"{champion['class_shares']}, challenger {challenger.get('class_shares', {})}), "
                f"over canary.max_score_shift {cfg.max_score_shift:.3f}"
            ]
    elif champion is not None and champion["requests"] > 0:
        shift = abs(challenger["mean_score"] - champion["mean_score"])
        unit = ""
        if kind == "regression":
            spread = champion.get("std_score", float("nan"))
            shift, unit = (shift / spread if spread > 0 else shift), " standard deviations"
        if shift > cfg.max_score_shift:
            return "rollback", [
                f"mean score moved by {shift:.3f}{unit} (champion {champion['mean_score']:.3f}), "
                f"over canary.max_score_shift {cfg.max_score_shift:.3f}"
            ]
    checks = (
        f"{int(challenger['requests'])} requests, error rate {challenger['error_rate']:.2%}, "
        f"p99 {challenger['p99_ms']:.1f} ms"
    )
    return ("advance" if final else "wait"), [checks]
