"""A/B comparison of champion and challenger from labelled served predictions: the difference in
the primary metric and its significance. Pure (the predictions come from
`pipelines.io.requestlog`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.ml.metrics import HIGHER_IS_BETTER, ab_difference, live_metric

if TYPE_CHECKING:
    from pipelines.core.spec import Evaluation

MIN_LABELLED = 30  # per version, and both classes present for a binary label


# ----------------------------------------------------------------------------------- pure core
def compare(
    cfg: Evaluation,
    rows: list[tuple[int, float, float]],
    champion: int,
    challenger: int,
    min_labelled: int = MIN_LABELLED,
    kind: str = "binary",
    roles: tuple[str, str] = ("champion", "challenger"),
    thresholds: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """The A/B result of `challenger` against `champion` from (version, score, label) rows.
    `roles` name the two in the result (after a promotion: the `retired` champion and the new
    `champion`); the difference is always the second's metric minus the first's. `thresholds`:
    the binary decision threshold each version recorded (F1 is each one's at its own)."""
    metrics = {v: live_metric(cfg, kind, (thresholds or {}).get(v)) for v in (champion, challenger)}
    groups: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    counts: dict[int, dict[str, Any]] = {}
    for version in (champion, challenger):
        mine = [(s, y) for v, s, y in rows if v == version]
        y = np.array([m[1] for m in mine], dtype=float)
        p = np.array([m[0] for m in mine], dtype=float)
        groups[version] = (y, p)
        counts[version] = {"labelled": len(mine), "value": metrics[version](y, p) if mine else None}
        if kind == "binary":
            counts[version]["positives"] = int(y.sum())
    out: dict[str, Any] = {
        "metric": cfg.primary_metric,
        "higher_is_better": HIGHER_IS_BETTER[cfg.primary_metric],
        roles[0]: {"version": champion, **counts[champion]},
        roles[1]: {"version": challenger, **counts[challenger]},
    }
    if kind == "binary":
        short = [
            f"v{v}: {c['labelled']} labelled ({c['positives']} positive)"
            for v, c in counts.items()
            if c["labelled"] < min_labelled or c["positives"] in (0, c["labelled"])
        ]
        need = f"need {min_labelled} labelled of both classes; "
    else:
        short = [f"v{v}: {c['labelled']} labelled" for v, c in counts.items() if c["labelled"] < min_labelled]
        need = f"need {min_labelled} labelled; "
    if short:
        return {**out, "status": "insufficient", "reason": need + ", ".join(short)}
    diff = ab_difference(
        groups[champion],
        groups[challenger],
        metrics[champion],
        cfg.bootstrap_samples,
        cfg.confidence,
        seed=challenger,
        metric_b=metrics[challenger],
    )
    alpha = 1 - cfg.confidence
    significant = bool(diff["p_value"] < alpha)
    better = diff["difference"] > 0 if out["higher_is_better"] else diff["difference"] < 0
    verdict = f"{roles[1]} {'better' if better else 'worse'}" if significant else "no significant difference"
    return {**out, "status": "ok", **diff, "significant": significant, "verdict": verdict}
