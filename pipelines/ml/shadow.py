"""A shadow run's comparison, pure: the challenger answered a copy of every request the champion
answered (logged with `shadow`, never returned); over the same requests this measures how often
the two agree, how far the shadow's scores are from the champion's (PSI, KS), both latencies
(p50, p99), the shadow's error/refusal rate and, where labels arrived, the primary metric of both
(`pipelines.ml.abtest`). The decision is the weighted canary's gates (`pipelines.ml.gates.judge`)
plus `canary.min_agreement`; the rows come from `pipelines.io.requestlog.shadow_rows`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipelines.ml.abtest import compare as ab_compare
from pipelines.ml.gates import class_shift, decision_of, figures, judge

if TYPE_CHECKING:
    from pipelines.core.spec import Canary, Evaluation

PSI_BINS = 10
PSI_FLOOR = 1e-4  # an empty bin's share, so the logarithm stays finite


class LogRow(NamedTuple):
    """One row of the request log: a version's answer (or failure) for one instance of a request."""

    request_id: str
    entity_id: str
    version: int
    shadow: bool
    status: str
    score: float | None
    latency_ms: float
    predicted_class: str | None = None
    probabilities: list[float] | None = None


# ------------------------------------------------------------------------------------ measures
def psi(expected: Sequence[float], actual: Sequence[float], bins: int = PSI_BINS) -> float | None:
    """The population stability index of `actual` against `expected` on `expected`'s quantile bins
    (0: the same; above 0.25 is read as a large shift). None when either side is empty."""
    e, a = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    if e.size == 0 or a.size == 0:
        return None
    edges = np.unique(np.quantile(e, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:  # the champion answered one value: one bin, and whatever is outside it
        edges = np.array([e[0] - 1e-9, e[0] + 1e-9])
    edges[0], edges[-1] = -np.inf, np.inf
    pe = np.maximum(np.histogram(e, edges)[0] / e.size, PSI_FLOOR)
    pa = np.maximum(np.histogram(a, edges)[0] / a.size, PSI_FLOOR)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def ks(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical
    distribution functions (0 the same, 1 disjoint). None when either side is empty."""
    x, y = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if x.size == 0 or y.size == 0:
        return None
    grid = np.concatenate([x, y])
    fx = np.searchsorted(x, grid, side="right") / x.size
    fy = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(fx - fy)))


def latency(values: Sequence[float]) -> dict[str, float | None]:
    """p50 and p99 of latencies in ms (None without any)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def pairs(rows: Sequence[LogRow], champion: int, shadow: int) -> list[tuple[LogRow, LogRow]]:
    """(champion's answer, shadow's answer) of the same instance of the same request, both scored."""
    served = {(r.request_id, r.entity_id): r for r in rows if r.version == champion and not r.shadow}
    out = []
    for r in rows:
        if r.version == shadow and r.shadow and r.status == "ok":
            mine = served.get((r.request_id, r.entity_id))
            if mine is not None and mine.status == "ok":
                out.append((mine, r))
    return out


def agrees(c: LogRow, s: LogRow, kind: str, threshold: float, tolerance: float) -> bool:
    """Whether two answers agree: the same class (binary: each version's decision, logged at its
    own threshold, or its score's side of `threshold` where it logged none), or for a regression
    label a difference within `tolerance` (in the label's units)."""
    if kind == "multiclass":
        return c.predicted_class == s.predicted_class
    cs, ss = c.score or 0.0, s.score or 0.0  # a scored answer of these kinds has a score
    if kind == "regression":
        return abs(cs - ss) <= tolerance
    return decision_of(c.predicted_class, cs, threshold) == decision_of(s.predicted_class, ss, threshold)


def agreement(matched: Sequence[tuple[LogRow, LogRow]], kind: str, threshold: float, tolerance: float) -> float | None:
    """The share of paired answers that agree (None without pairs). A regression tolerance is in
    the champion's standard deviations of its scores on these requests."""
    if not matched:
        return None
    if kind == "regression":
        spread = float(np.std([c.score or 0.0 for c, _ in matched]))
        tolerance = tolerance * spread if spread > 0 else tolerance
    return sum(agrees(c, s, kind, threshold, tolerance) for c, s in matched) / len(matched)


def labelled_metric(
    cfg: Evaluation,
    matched: Sequence[tuple[LogRow, LogRow]],
    labels: dict[tuple[str, str], float],
    champion: int,
    shadow: int,
    kind: str,
    thresholds: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """The primary metric of both on the paired requests whose label arrived (`labels`: by
    (request id, entity id)); the A/B comparison's result, `insufficient` without enough labels.
    `thresholds`: the binary decision threshold each version recorded."""
    rows: list[tuple[int, Any, float]] = []
    for c, s in matched:
        label = labels.get((c.request_id, c.entity_id))
        if label is not None:
            rows.append((champion, c.probabilities if kind == "multiclass" else c.score, label))
            rows.append((shadow, s.probabilities if kind == "multiclass" else s.score, label))
    return ab_compare(cfg, rows, champion, shadow, kind=kind, roles=("champion", "shadow"), thresholds=thresholds)


# ---------------------------------------------------------------------------------- comparison
def compare(
    rows: Sequence[LogRow],
    champion: int,
    shadow: int,
    kind: str,
    threshold: float = 0.5,
    tolerance: float = 0.1,
) -> dict[str, Any]:
    """The comparison of a shadow window: each version's figures (the canary's), the agreement on
    the paired requests, the score shift (PSI and KS of the shadow's scores against the champion's
    on the same requests; for a multiclass model the predicted classes' total variation), both
    latencies and the shadow's error/refusal rate."""
    gate_rows = [
        (r.version, r.status, r.score, r.latency_ms, r.predicted_class)
        for r in rows
        if (r.version == champion and not r.shadow) or (r.version == shadow and r.shadow)
    ]
    seen = figures(gate_rows, threshold if kind == "binary" else None)
    matched = pairs(rows, champion, shadow)
    mine = [r for r in rows if r.version == shadow and r.shadow]
    out: dict[str, Any] = {
        "champion": {**seen.get(champion, {}), **latency([r[3] for r in gate_rows if r[0] == champion])},
        "shadow": {**seen.get(shadow, {}), **latency([r.latency_ms for r in mine])},
        "shadow_requests": len(mine),
        "shadow_errors": sum(1 for r in mine if r.status != "ok"),
        "shadow_error_rate": (sum(1 for r in mine if r.status != "ok") / len(mine)) if mine else None,
        "paired": len(matched),
        "agreement": agreement(matched, kind, threshold, tolerance),
    }
    if kind == "multiclass":
        out["class_shift"] = (
            class_shift(seen[champion].get("class_shares", {}), seen[shadow].get("class_shares", {}))
            if matched
            else None
        )
    else:
        champ_scores = [c.score for c, _ in matched if c.score is not None]
        shadow_scores = [s.score for _, s in matched if s.score is not None]
        out["psi"], out["ks"] = psi(champ_scores, shadow_scores), ks(champ_scores, shadow_scores)
    return out


def decide(cfg: Canary, comparison: dict[str, Any], kind: str, manual_approval: bool = False) -> tuple[str, list[str]]:
    """`promote`, `reject` or `approval` (the comparison passed, and the spec asks a person to
    sign off) with reasons: the weighted canary's gates on the whole window (errors and refusals,
    p99 latency, `min_requests`, the score shift), then the agreement with the champion."""
    champion = comparison["champion"] if comparison["champion"].get("requests") else None
    shadow = comparison["shadow"] if comparison["shadow"].get("requests") else None
    decision, reasons = judge(cfg, champion, shadow, final=True, kind=kind)
    reasons = [r.replace("challenger", "shadow") for r in reasons]
    if decision == "rollback":
        return "reject", reasons
    rate = comparison.get("agreement")
    if rate is None or rate < cfg.min_agreement:
        shown = "none paired" if rate is None else f"{rate:.2%}"
        return "reject", [f"agreement with the champion {shown}, under canary.min_agreement {cfg.min_agreement:.2%}"]
    reasons = [*reasons, f"agreement {rate:.2%}"]
    if manual_approval:
        return "approval", [*reasons, "promotion.approval is manual: a person decides"]
    return "promote", reasons


# -------------------------------------------------------------------------------------- page
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page of a shadow run's report: the decision, the comparison, the A/B."""
    esc, comp = html.escape, report.get("comparison", {})
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{_cell(comp.get('champion', {}).get(name))}</td>"
        f"<td>{_cell(comp.get('shadow', {}).get(name))}</td></tr>"
        for name in ("requests", "error_rate", "p50_ms", "p99_ms", "mean_score")
    )
    shift = "".join(
        f"<tr><td>{esc(name)}</td><td>{_cell(comp.get(name))}</td></tr>"
        for name in ("paired", "agreement", "psi", "ks", "class_shift", "shadow_error_rate")
        if name in comp
    )
    reasons = "".join(f"<li>{esc(r)}</li>" for r in report.get("reasons", []))
    ab = esc(json.dumps(report.get("ab", {}), indent=1, default=str))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{esc(report["pipeline"])} shadow run</title>
<style>body{{font-family:system-ui,sans-serif;margin:1em}}
td,th{{padding:.2em .8em;border-bottom:1px solid #ddd}}</style>
</head><body><h1>{esc(report["pipeline"])}: v{report["challenger"]} in the shadow of v{report["champion"]}</h1>
<p><b>decision: {esc(str(report.get("decision")))}</b> ({esc(str(report.get("outcome")))})</p><ul>{reasons}</ul>
<table><tr><th></th><th>champion</th><th>shadow</th></tr>{rows}</table>
<h2>the same requests</h2><table>{shift}</table>
<h2>primary metric on labelled requests</h2><pre>{ab}</pre></body></html>"""
