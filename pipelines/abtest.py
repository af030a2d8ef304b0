"""A/B results: served predictions joined to the labels that arrived for them, and the
champion/challenger difference in the primary metric with its significance.

A label belongs to a prediction by its request id, or, when it has none, to the latest prediction
served to its entity at or before the time the outcome was observed. Shadow answers and failed
requests never count: the A/B compares what clients were given.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.metrics import HIGHER_IS_BETTER, ab_difference, metric_functions

if TYPE_CHECKING:
    from pipelines.settings import Settings
    from pipelines.spec import Evaluation

MIN_LABELLED = 30  # per version, and both classes present

LABELLED_SQL = """
SELECT r.model_version, r.score, l.label, r.created_at
FROM labels l
JOIN LATERAL (
    SELECT model_version, score, created_at FROM inference_requests r
    WHERE r.pipeline = l.pipeline AND r.entity_id = l.entity_id AND NOT r.shadow AND r.status = 'ok'
      AND (l.request_id IS NULL OR r.request_id = l.request_id)
      AND (l.request_id IS NOT NULL OR r.created_at <= l.observed_at)
      AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s)
      AND (%(until)s::timestamptz IS NULL OR r.created_at < %(until)s)
    ORDER BY r.created_at DESC LIMIT 1
) r ON true
WHERE l.pipeline = %(pipeline)s AND (%(versions)s::int[] IS NULL OR r.model_version = ANY(%(versions)s))
"""


# ----------------------------------------------------------------------------------- pure core
def compare(
    cfg: Evaluation,
    rows: list[tuple[int, float, float]],
    champion: int,
    challenger: int,
    min_labelled: int = MIN_LABELLED,
) -> dict[str, Any]:
    """The A/B result of `challenger` against `champion` from (version, score, label) rows."""
    metric = metric_functions(cfg.threshold)[cfg.primary_metric]
    groups: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    counts: dict[int, dict[str, Any]] = {}
    for version in (champion, challenger):
        mine = [(s, y) for v, s, y in rows if v == version]
        y = np.array([m[1] for m in mine], dtype=float)
        p = np.array([m[0] for m in mine], dtype=float)
        groups[version] = (y, p)
        counts[version] = {"labelled": len(mine), "positives": int(y.sum()), "value": metric(y, p) if mine else None}
    out: dict[str, Any] = {
        "metric": cfg.primary_metric,
        "higher_is_better": HIGHER_IS_BETTER[cfg.primary_metric],
        "champion": {"version": champion, **counts[champion]},
        "challenger": {"version": challenger, **counts[challenger]},
    }
    short = [
        f"v{v}: {c['labelled']} labelled ({c['positives']} positive)"
        for v, c in counts.items()
        if c["labelled"] < min_labelled or c["positives"] in (0, c["labelled"])
    ]
    if short:
        return {
            **out,
            "status": "insufficient",
            "reason": f"need {min_labelled} labelled of both classes; " + ", ".join(short),
        }
    diff = ab_difference(
        groups[champion], groups[challenger], metric, cfg.bootstrap_samples, cfg.confidence, seed=challenger
    )
    alpha = 1 - cfg.confidence
    significant = bool(diff["p_value"] < alpha)
    better = diff["difference"] > 0 if out["higher_is_better"] else diff["difference"] < 0
    verdict = ("challenger better" if better else "challenger worse") if significant else "no significant difference"
    return {**out, "status": "ok", **diff, "significant": significant, "verdict": verdict}


# ------------------------------------------------------------------------------------- I/O
def labelled(
    settings: Settings,
    pipeline: str,
    versions: list[int] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[tuple[int, float, float]]:
    """(version, score, label) of the served predictions that have a label."""
    from pipelines.db import connect

    with connect(settings) as conn:
        rows = conn.execute(
            LABELLED_SQL, {"pipeline": pipeline, "versions": versions, "since": since, "until": until}
        ).fetchall()
    return [(int(v), float(s), float(y)) for v, s, y, _ in rows]


def ab_results(
    settings: Settings, pipeline: str, champion: int, challenger: int, since: datetime | None = None
) -> dict[str, Any]:
    from pipelines.runner import spec_for

    cfg = spec_for(settings, pipeline).evaluation
    return compare(cfg, labelled(settings, pipeline, [champion, challenger], since), champion, challenger)
