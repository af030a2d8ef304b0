"""The charts of the mlcycle page, as inline SVG, and the colours of its drift heat table.

The canary's walk (the challenger's share of traffic over time), the live metric against each
version's evaluation figure, and the rule that colours a drift check's cell. Every function here is
pure and takes what `pipelines.io.catalog` answers; `mlcycle_page` assembles them into the page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

COLOURS = ("#2563eb", "#d97706", "#059669", "#7c3aed", "#dc2626", "#0891b2")
DECISION_COLOURS = {"advance": "#059669", "rollback": "#dc2626", "wait": "#6b7280"}


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def svg_frame(width: int, height: int, body: str, label: str) -> str:
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def canary_walk_svg(steps: list[dict[str, Any]], outcome: str, width: int = 520, height: int = 170) -> str:
    """The challenger's share of traffic over the canary's time, one segment per step, each ended
    by its decision (green advance, red rollback). Pure."""
    if not steps:
        return ""
    left, right, top, bottom = 40, 10, 10, 28
    total = sum(float(s.get("seconds") or 0) for s in steps) or 1.0

    def x_of(t: float) -> float:
        return left + (width - left - right) * t / total

    def y_of(p: float) -> float:
        return top + (height - top - bottom) * (1 - p / 100)

    parts = [
        f'<line x1="{left}" y1="{y_of(p):.1f}" x2="{width - right}" y2="{y_of(p):.1f}" stroke="#f3f4f6"/>'
        f'<text x="{left - 4}" y="{y_of(p) + 4:.1f}" text-anchor="end">{p}%</text>'
        for p in (0, 25, 50, 75, 100)
    ]
    t, path = 0.0, list[str]()
    for s in steps:
        x0, x1, y = x_of(t), x_of(t + float(s.get("seconds") or 0)), y_of(float(s["percent"]))
        path.append(f"{'L' if path else 'M'}{x0:.1f},{y:.1f} L{x1:.1f},{y:.1f}")
        colour = DECISION_COLOURS.get(str(s.get("decision")), "#6b7280")
        parts.append(
            f'<circle cx="{x1:.1f}" cy="{y:.1f}" r="4" fill="{colour}"><title>{escape(str(s["percent"]))}%: '
            f"{escape(str(s.get('decision')))} after {escape(str(s.get('seconds')))} s</title></circle>"
        )
        t += float(s.get("seconds") or 0)
    parts.insert(0, f'<path d="{" ".join(path)}" stroke="#d97706" stroke-width="2.5" fill="none"/>')
    parts.append(
        f'<text x="{left}" y="{height - 8}">0 s</text><text x="{width - right}" y="{height - 8}" '
        f'text-anchor="end">{total:.0f} s · {escape(outcome)}</text>'
    )
    return svg_frame(width, height, "".join(parts), "the canary's walk: challenger traffic share over time")


def version_roles(versions: list[dict[str, Any]], champion: int | None) -> dict[int, str]:
    """Each registered version's role as the page names it: champion, challenger (while a canary
    may still promote it), retired (a former champion or a version never promoted). Pure."""
    roles = {}
    for v in versions:
        aliases = set(v.get("aliases") or [])
        number = int(v["version"])
        if number == champion or "champion" in aliases:
            roles[number] = "champion"
        elif "challenger" in aliases:
            roles[number] = "challenger"
        else:
            roles[number] = "retired"
    if champion is not None:
        roles[champion] = "champion"
    return roles


def instant(iso: str) -> datetime:
    """An ISO 8601 time as an aware instant (naive: UTC), to compare times written in any offset. Pure."""
    at = datetime.fromisoformat(iso)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def live_series(
    live: list[dict[str, Any]], champion: int | None, current: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The points the live chart draws, oldest first: every drift check's figure of the version it
    scored, then the champion's figure now (from its labels since the window start) where it has
    one and no check has scored it at a later instant. Pure."""
    points = [{**p, "now": False} for p in live if p["value"] is not None]
    if (
        champion is not None
        and current is not None
        and current.get("value") is not None
        and int(current["version"]) == champion
    ):
        scored = [p for p in points if int(p["version"]) == champion]
        if not scored or instant(scored[-1]["at"]) < instant(current["at"]):
            points.append(
                {
                    "version": champion,
                    "metric": current["metric"],
                    "value": current["value"],
                    "rows": current["rows"],
                    "at": current["at"],
                    "now": True,
                }
            )
    return points


def live_metric_svg(
    points: list[dict[str, Any]],
    references: dict[int, float],
    roles: dict[int, str] | None = None,
    width: int = 520,
    height: int = 170,
) -> str:
    """The live metric at each drift check (a dot per check, coloured by version; the champion's
    figure now a ringed dot) against each version's evaluation figure (a dashed line of the same
    colour); the legend names each version's role. Pure."""
    if not points and not references:
        return ""
    roles = roles or {}
    left, right, top, bottom = 46, 10, 10, 28
    values = [float(p["value"]) for p in points if p["value"] is not None] + list(references.values())
    low, high = min(values), max(values)
    pad = max((high - low) * 0.15, 0.01)
    low, high = low - pad, high + pad
    n = max(len(points), 1)

    def x_of(i: int) -> float:
        return left + (width - left - right) * ((i + 0.5) / n)

    def y_of(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - low) / (high - low))

    versions = sorted({int(p["version"]) for p in points} | set(references))
    colour = {v: COLOURS[i % len(COLOURS)] for i, v in enumerate(versions)}
    parts = [
        f'<text x="{left - 4}" y="{y_of(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>'
        f'<line x1="{left}" y1="{y_of(v):.1f}" x2="{width - right}" y2="{y_of(v):.1f}" stroke="#f3f4f6"/>'
        for v in (low + pad, high - pad)
    ]
    for version, figure in sorted(references.items()):
        parts.append(
            f'<line x1="{left}" y1="{y_of(figure):.1f}" x2="{width - right}" y2="{y_of(figure):.1f}" '
            f'stroke="{colour[version]}" stroke-dasharray="5,4" data-version="{version}"><title>v{version} '
            f"evaluation {figure:.4f}</title></line>"
        )
    for i, p in enumerate(points):
        if p["value"] is None:
            continue
        version = int(p["version"])
        ring = ' stroke="#111827" stroke-width="2" r="6"' if p.get("now") else ' r="4"'
        when_text = "now" if p.get("now") else "drift check"
        parts.append(
            f'<circle cx="{x_of(i):.1f}" cy="{y_of(float(p["value"])):.1f}"{ring} fill="{colour[version]}" '
            f'data-version="{version}"><title>v{version} ({escape(roles.get(version, "version"))}) live '
            f"{float(p['value']):.4f} on {p['rows']} labels, {when_text} {escape(str(p['at'])[:16])}"
            "</title></circle>"
        )
    legend = " ".join(  # one colour per version, with its role
        f'<tspan fill="{colour[v]}">■ v{v}{" " + escape(roles[v]) if v in roles else ""}</tspan>' for v in versions
    )
    parts.append(f'<text x="{left}" y="{height - 8}">{legend}</text>')
    return svg_frame(width, height, "".join(parts), "live metric from labels against the evaluation figure")


DRIFTED_COLOUR = "#fca5a5"
NOT_COUNTED_COLOUR = "#f9fafb"


def drifted_cell(psi: float | None, judged: dict[str, Any] | None, threshold: float) -> bool | None:
    """Whether a feature drifted at a check, by the rule the check's verdict counts: as the check
    judged it (Evidently's test for the feature failed, or its PSI passed `drift.psi_threshold`),
    else, for a check whose judgement cannot be read, its PSI past `threshold` (the spec's
    `drift.psi_threshold`). None without a figure. Pure."""
    if judged is not None:
        return bool(judged["drifted"])
    if psi is None:
        return None
    return psi > threshold


def heat(psi: float | None, threshold: float, drifted: bool | None = None) -> str:
    """A cell's background: red where the feature drifted (`drifted`, by `drifted_cell`; PSI past
    the threshold where no judgement is given), else white at PSI 0 deepening to amber towards the
    threshold. Pure."""
    if psi is None and drifted is None:
        return NOT_COUNTED_COLOUR
    if drifted is None:
        drifted = psi is not None and psi > threshold
    if drifted:
        return DRIFTED_COLOUR
    share = max(0.0, min(1.0, (psi or 0.0) / threshold))
    return f"rgba(245,158,11,{0.08 + 0.5 * share:.2f})"


def cell_title(feature: str, psi: float | None, judged: dict[str, Any] | None, drifted: bool | None) -> str:
    """A heat cell's tooltip: the figures the judgement rests on. Pure."""
    parts = [f"{feature}: PSI {fmt(psi, 3)}"]
    test = (judged or {}).get("evidently") or {}
    if test.get("method"):
        verdict = "failed" if test.get("drifted") else "passed"
        parts.append(
            f"Evidently {test['method']} {fmt(test.get('score'), 3)} (threshold {test.get('threshold')}): {verdict}"
        )
    elif judged is None and psi is not None:
        parts.append("no judgement recorded: PSI rule only")
    parts.append("drifted" if drifted else "not drifted")
    return "; ".join(parts)
