"""The mlcycle page of the Airflow UI, as HTML: a pipeline's life at a glance.

Champion and challenger with their figures and lineage, where the canary stands and its walk
plotted, the live metric from labels against each version's evaluation figure, the PSI of every
feature over the last drift checks, the last runs with their reports and MLflow, and a lookup of
one served prediction's trace. Plain HTML and inline SVG: every function here is pure and takes
what `pipelines.io.catalog` answers. The plugin serves it at `/mlcycle/page`, and the Airflow UI
frames it under its own navigation (`/plugin/mlcycle`) in a sandboxed iframe that may run scripts
as its own origin but not navigate the window: `LEAVE_FRAME`, the page's one script, lets a link
to an Airflow page or a report replace the UI (and an MLflow link open a tab) from the UI's own
document.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from operators.links import mlflow_url
from pipelines.core.steps import report_url
from pipelines.io.registry import model_name

PAGE_PATH = "/mlcycle/page"
COLOURS = ("#2563eb", "#d97706", "#059669", "#7c3aed", "#dc2626", "#0891b2")
DECISION_COLOURS = {"advance": "#059669", "rollback": "#dc2626", "wait": "#6b7280"}
STATUS_COLOURS = {"ok": "#d1fae5", "drift": "#fde68a", "performance": "#fecaca", "insufficient_data": "#e5e7eb"}

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 1.2em 2em;color:#111827;font-size:14px}
h1{font-size:1.3em;margin:.8em 0 .2em} h2{font-size:1.05em;margin:1.4em 0 .4em;border-bottom:1px solid #e5e7eb}
nav a{margin-right:1em} nav a.on{font-weight:700;text-decoration:none;color:#111827}
.cards{display:flex;gap:1em;flex-wrap:wrap} .card{border:1px solid #e5e7eb;border-radius:6px;padding:.6em 1em;
min-width:18em} .card b.big{font-size:1.4em} .muted{color:#6b7280} table{border-collapse:collapse}
td,th{padding:.25em .6em;border-bottom:1px solid #f3f4f6;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums} .heat td.cell{text-align:center;min-width:3.2em}
svg text{font-size:11px;fill:#374151} td.when{white-space:nowrap} tr.ignored th{font-weight:400;font-style:italic}
.bad{color:#b91c1c} input[type=text]{width:26em}
"""


LEAVE_FRAME = """
document.addEventListener("click", (event) => {
  const a = event.target.closest("a[target]");
  if (!a || window.top === window) return;
  event.preventDefault();
  const out = window.top.document.createElement("a");
  out.href = a.href; out.target = a.target; out.rel = "noopener";
  window.top.document.body.appendChild(out); out.click(); out.remove();
});
"""


def page_url(pipeline: str, **params: str) -> str:
    """The page of one pipeline (with a trace lookup's request id, say), relative to the api-server. Pure."""
    return f"{PAGE_PATH}?{urlencode({'pipeline': pipeline, **params})}"


def run_page(dag_id: str, run_id: str) -> str:
    """The Airflow UI's page of a DAG run. Pure."""
    return f"/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


def mlflow_version(base: str, pipeline: str, version: int | None) -> str:
    """The MLflow UI page of a registered version of the pipeline's model. Pure."""
    return mlflow_url(base, "promote", {"model": model_name(pipeline), "version": version})


def link(href: str | None, text: str, *, top: bool = True) -> str:
    """An anchor that leaves the frame (`_top`: an Airflow page) or opens a new tab (elsewhere)."""
    if not href:
        return escape(text)
    return f'<a href="{escape(href)}" target="{"_top" if top else "_blank"}">{escape(text)}</a>'


def metric_value(figure: str | None) -> tuple[str, float] | None:
    """`roc_auc=0.839512` (the registry tag) as ("roc_auc", 0.8395...). Pure."""
    if not figure or "=" not in figure:
        return None
    name, _, value = figure.partition("=")
    try:
        return name, float(value)
    except ValueError:
        return None


def window_dates(window: str | None) -> str:
    """`2026-06-19T09:58:53+00:00 .. 2026-11-26T09:58:53+00:00` as `2026-06-19 .. 2026-11-26`. Pure."""
    if not window:
        return "–"
    return " .. ".join(part.strip()[:10] for part in window.split(".."))


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------ charts
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


# ---------------------------------------------------------------------------------- sections
def models_section(detail: dict[str, Any], versions: list[dict[str, Any]], mlflow_base: str) -> str:
    by_version = {v["version"]: v for v in versions}
    cards = []
    for alias in ("champion", "challenger"):
        m = detail.get(alias)
        empty = empty_card(alias, detail.get("champion"), m)
        if empty is not None or m is None:
            cards.append(empty or "")
            continue
        figure = metric_value(m.get("metric"))
        lineage = by_version.get(m["version"], {}).get("lineage") or {}
        links = [link(mlflow_version(mlflow_base, detail["pipeline"], m["version"]), "MLflow", top=False)]
        if m.get("run_id"):
            links.insert(0, link(run_page(f"{detail['pipeline']}_lifecycle", m["run_id"]), "training run"))
        if lineage.get("validation_report"):
            links.insert(1, link(lineage["validation_report"], "validation report"))
        score = f"{escape(figure[0])} <b>{figure[1]:.4f}</b>" if figure else ""
        cards.append(
            f'<div class="card" data-alias="{alias}"><div class="muted">{alias}</div>'
            f'<b class="big">v{m["version"]}</b> {score}'
            f'<div class="muted">since {escape(str(m.get("since") or "–")[:19])} · '
            f"by {escape(str(m.get('by') or '–'))}</div>"
            f"<div>data {escape(window_dates(m.get('data_window')))} · "
            f"{escape(str(m.get('data_hash') or '')[:19])}</div>"
            f"<div>{' · '.join(links)}</div></div>"
        )
    return f'<h2>Models</h2><div class="cards">{"".join(cards)}</div>'


def empty_card(alias: str, champion: dict[str, Any] | None, model: dict[str, Any] | None) -> str | None:
    """The card of an alias with no model of its own, or None where it has one: no champion yet;
    no challenger, where none is set or the challenger is the champion itself (a pipeline's first
    model is both). Pure."""
    if alias == "champion" and model is None:
        what, why = "no champion yet", "nothing is served until a run passes its gate"
    elif alias == "challenger" and (
        model is None or (champion is not None and model["version"] == champion["version"])
    ):
        what = "no challenger"
        why = (
            f"v{champion['version']} is the champion; the next run that passes its gate becomes the challenger"
            if champion is not None
            else "no run has passed its gate"
        )
    else:
        return None
    return (
        f'<div class="card" data-alias="{alias}"><div class="muted">{alias}</div><b class="big">{what}</b>'
        f'<div class="muted">{escape(why)}</div></div>'
    )


def canary_section(pipeline: str, canary: dict[str, Any] | None) -> str:
    if canary is None:
        return "<h2>Serving</h2><p class='muted'>No canary has run: nothing is served yet.</p>"
    weights = ", ".join(f"v{v} {w:g}%" for v, w in canary["weights"].items()) or "–"
    run = link(run_page(f"{pipeline}_lifecycle", canary["run_id"]), canary["run_id"])
    head = (
        f"<h2>Serving</h2><p>Last canary ({run}): "
        f"<b>{escape(str(canary['outcome']))}</b>, traffic now {escape(weights)}"
        + (f" — <span class='muted'>{escape(str(canary['reason']))}</span>" if canary.get("reason") else "")
        + "</p>"
    )
    if not canary["steps"]:
        return head
    rows = "".join(
        f"<tr><td class='num'>{s['percent']:g}%</td><td style='color:{DECISION_COLOURS.get(str(s['decision']), '')}'>"
        f"{escape(str(s['decision']))}</td><td class='num'>{s.get('seconds')}</td>"
        + "".join(
            f"<td class='num'>{int((s.get('figures') or {}).get(role, {}).get('requests', 0))}</td>"
            f"<td class='num'>{fmt((s.get('figures') or {}).get(role, {}).get('error_rate'), 3)}</td>"
            f"<td class='num'>{fmt((s.get('figures') or {}).get(role, {}).get('p99_ms'), 1)}</td>"
            for role in ("champion", "challenger")
        )
        + f"<td class='muted'>{escape('; '.join(s.get('reasons') or []))}</td></tr>"
        for s in canary["steps"]
    )
    table = (
        "<table><tr><th>challenger</th><th>decision</th><th>s</th><th colspan=3>champion: requests, errors, p99 ms"
        "</th><th colspan=3>challenger: requests, errors, p99 ms</th><th>why</th></tr>" + rows + "</table>"
    )
    walk = canary_walk_svg(canary["steps"], str(canary["outcome"]))
    return f"{head}<p>v{canary['champion']} → v{canary['challenger']}</p>{walk}{table}"


def live_summary(
    champion: int | None, current: dict[str, Any] | None, live: list[dict[str, Any]], reference: float | None
) -> str:
    """What the live section says of the champion: its live metric now (or why there is none yet),
    against its evaluation figure; else the latest drift check's figure of it. Pure (HTML)."""
    if champion is None:
        return "<p class='muted'>No champion: nothing is served, so nothing is scored live.</p>"
    against = f" against its evaluation {reference:.4f}" if reference is not None else ""
    checked = [p for p in live if int(p["version"]) == champion and p["value"] is not None]
    if current is not None and current.get("value") is not None:
        return (
            f"<p id='live-champion'>v{champion} (champion): live {escape(current['metric'])} "
            f"<b>{fmt(current['value'])}</b> on {current['rows']} labels of the last "
            f"{current['window_hours']:g} h{against} <span class='muted'>(now)</span></p>"
        )
    if checked:
        last = checked[-1]
        return (
            f"<p id='live-champion'>v{champion} (champion): live {escape(last['metric'])} "
            f"<b>{fmt(last['value'])}</b> on {last['rows']} labels{against} "
            f"<span class='muted'>(drift check of {escape(when(last['at']))})</span></p>"
        )
    why = current["short"] if current is not None and current.get("short") else "no labelled predictions yet"
    return (
        f"<p id='live-champion'>v{champion} (champion): no live figure yet: {escape(why)}."
        + (f" Its evaluation: {reference:.4f}." if reference is not None else "")
        + "</p>"
    )


def live_section(
    detail: dict[str, Any],
    live: list[dict[str, Any]],
    versions: list[dict[str, Any]],
    current: dict[str, Any] | None = None,
) -> str:
    """The champion's live metric (now, from its labels, or its latest drift check), and the chart
    of every version's live figures at each check, each version labelled with its role. Pure."""
    champion = int(detail["champion"]["version"]) if detail.get("champion") else None
    points = live_series(live, champion, current)
    if not points and champion is None:
        return "<h2>Live metric</h2><p class='muted'>No drift check has scored labelled predictions yet.</p>"
    shown = {int(p["version"]) for p in points} | ({champion} if champion is not None else set())
    evaluation = {int(v["version"]): metric_value(v.get("metric")) for v in versions}
    references = {v: figure[1] for v, figure in evaluation.items() if v in shown and figure is not None}
    roles = version_roles(versions, champion)
    summary = live_summary(champion, current, live, references.get(champion) if champion is not None else None)
    latest = {int(p["version"]): p for p in points if int(p["version"]) != champion}  # oldest first: the last wins
    history = "".join(
        f"<p class='muted'>v{v} ({escape(roles.get(v, 'retired'))}): last live "
        f"{fmt(last['value'])} on {last['rows']} labels (drift check of {escape(when(last['at']))})</p>"
        for v, last in sorted(latest.items())
    )
    chart = live_metric_svg(points, references, roles) if points else ""
    caption = (
        "<p class='muted'>Dots: the live metric at each drift check (ringed: the champion's now); dashes: each "
        "version's evaluation figure.</p>"
        if chart
        else ""
    )
    return f"<h2>Live metric</h2>{summary}{history}{chart}{caption}"


def drift_legend(threshold: float) -> str:
    """The rule the heat table's colours follow, in words (the rule of `drifted_cell`). Pure."""
    return (
        "A cell is red where the check counted the feature as drifted: Evidently's drift test for the "
        f"feature failed, or its PSI passed {threshold:g} (the spec's <code>drift.psi_threshold</code>); "
        "otherwise it deepens from white to amber as the PSI nears that threshold. "
        "A check with no readable per-feature judgement is coloured by the PSI rule alone."
    )


def drift_section(pipeline: str, drift: dict[str, Any], threshold: float, ignored: frozenset[str]) -> str:
    if not drift["checks"]:
        return "<h2>Drift per feature</h2><p class='muted'>No drift check yet.</p>"
    head = "".join(
        f"<th style='background:{STATUS_COLOURS.get(c['status'], '')}' title='{escape(c['run_id'])}: "
        f"{escape(c['status'])}'>{link(report_url(f'{pipeline}_drift', c['run_id'], 'drift'), when(c['at']))}</th>"
        for c in drift["checks"]
    )
    judged_all = drift.get("judged") or {}
    rows = []
    for feature, values in drift["features"].items():
        judged = judged_all.get(feature) or [None] * len(values)
        cells = []
        for v, j in zip(values, judged, strict=True):
            drifted = drifted_cell(v, j, threshold)
            colour = NOT_COUNTED_COLOUR if feature in ignored else heat(v, threshold, drifted)
            mark = " data-drifted" if drifted and feature not in ignored else ""
            cells.append(
                f"<td class='cell'{mark} style='background:{colour}' "
                f"title='{escape(cell_title(feature, v, j, drifted))}'>{fmt(v, 2)}</td>"
            )
        rows.append(
            f"<tr{' class=ignored' if feature in ignored else ''}><th>{escape(feature)}"
            f"{' (ignored)' if feature in ignored else ''}</th>{''.join(cells)}</tr>"
        )
    return (
        f"<h2>Drift per feature</h2><p class='muted'>PSI per feature at each check (window end, UTC; a column "
        f"opens the check's Evidently report, its colour is the verdict). {drift_legend(threshold)} Features the "
        f"spec's <code>drift.ignore</code> names are shown, never counted.</p>"
        f"<table class='heat'><tr><th></th>{head}</tr>{''.join(rows)}</table>"
    )


def when(iso: str) -> str:
    """`2026-11-26T09:58:53+00:00` as `11-26 09:58`. Pure."""
    return iso[5:16].replace("T", " ")


def runs_section(
    pipeline: str, runs: list[dict[str, Any]], overview: dict[str, dict[str, Any]], mlflow_base: str
) -> str:
    if not runs:
        return "<h2>Last runs</h2><p class='muted'>No run yet.</p>"
    rows = []
    for r in runs:
        more = overview.get(r["run_id"], {})
        reports = " · ".join(link(url, step) for step, url in more.get("reports", {}).items())
        mlflow = mlflow_url(mlflow_base, "train", more["mlflow"]) if more.get("mlflow") else ""
        run = link(run_page(more.get("dag_id", f"{pipeline}_lifecycle"), r["run_id"]), r["run_id"])
        rows.append(
            f"<tr><td class='when'>{escape(r['started'][:19])}</td><td>{run}</td>"
            f"<td>{escape(r['outcome'])}</td><td class='reports'>{reports or '–'}</td>"
            f"<td>{link(mlflow, 'MLflow', top=False) if mlflow else '–'}</td>"
            f"<td class='muted'>{escape(r.get('cause') or '')}</td></tr>"
        )
    return (
        "<h2>Last runs</h2><table><tr><th>started</th><th>run</th><th>outcome</th><th>reports</th>"
        f"<th>training</th><th>cause</th></tr>{''.join(rows)}</table>"
    )


def trace_section(
    pipeline: str, query: str, answers: list[dict[str, Any]] | None, error: str | None, mlflow_base: str
) -> str:
    form = (
        f"<h2>Trace a prediction</h2><form method='get' action='{PAGE_PATH}'>"
        f"<input type='hidden' name='pipeline' value='{escape(pipeline)}'>"
        f"<input type='text' name='request_id' value='{escape(query)}' placeholder='request id (UUID)' "
        "aria-label='request id'> <button type='submit'>Trace</button></form>"
    )
    if error:
        return f"{form}<p class='bad' id='trace-error'>{escape(error)}</p>"
    if not answers:
        return form
    rows = []
    for a in answers:
        model = a.get("model") or {}
        lineage = model.get("lineage") or {}
        run = lineage.get("lifecycle_run")
        mlflow = mlflow_version(mlflow_base, a["pipeline"], model.get("version"))
        label = "–" if a["label"] is None else str(a["label"])
        trained_by = link(run_page(f"{a['pipeline']}_lifecycle", run), run) if run else "–"
        rows.append(
            f"<tr><td>{escape(a['pipeline'])}</td><td>{escape(str(a['entity_id']))}</td>"
            f"<td class='num'>{fmt(a['score'])}</td><td>{escape(a['status'])}{' (shadow)' if a['shadow'] else ''}</td>"
            f"<td>{escape(a['served_at'][:23])}</td><td>{escape(label)}</td>"
            f"<td>v{model.get('version')} {escape(' '.join(model.get('aliases') or []))}</td>"
            f"<td>{trained_by}</td>"
            f"<td>{escape(str(lineage.get('data_hash') or '–')[:19])}</td>"
            f"<td>{link(lineage.get('validation_report'), 'validation') if lineage.get('validation_report') else '–'}"
            f" · {link(mlflow, 'MLflow', top=False)}</td></tr>"
        )
    return (
        f"{form}<table id='trace'><tr><th>pipeline</th><th>entity</th><th>score</th><th>status</th><th>served</th>"
        "<th>label</th><th>version</th><th>trained by</th><th>data</th><th>reports</th></tr>"
        f"{''.join(rows)}</table>"
    )


def page_html(
    *,
    pipelines: list[str],
    selected: str,
    data: dict[str, Any],
    mlflow_base: str,
    psi_threshold: float,
    drift_ignored: frozenset[str] = frozenset(),
    trace_query: str = "",
    trace: list[dict[str, Any]] | None = None,
    trace_error: str | None = None,
) -> str:
    """The page of one pipeline (`data`: `catalog.overview`), with tabs for the others. Pure."""
    detail = data["detail"]
    tabs = " ".join(
        f'<a href="{escape(page_url(p))}"{" class=on" if p == selected else ""}>{escape(p)}</a>' for p in pipelines
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mlcycle: {escape(selected)}</title><style>{STYLE}</style>
<script>{LEAVE_FRAME}</script></head>
<body><h1>mlcycle · {escape(selected)} <span class="muted">({escape(detail["model"])})</span></h1>
<nav>{tabs}</nav>
{trace_section(selected, trace_query, trace, trace_error, mlflow_base)}
{models_section(detail, data["versions"], mlflow_base)}
{canary_section(selected, detail.get("canary"))}
{live_section(detail, data["live"], data["versions"], data.get("champion_live"))}
{drift_section(selected, data["drift"], psi_threshold, drift_ignored)}
{runs_section(selected, detail["runs"], data["runs"], mlflow_base)}
</body></html>"""


def empty_page(reason: str) -> str:
    """What a user with no readable pipeline sees. Pure."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mlcycle</title><style>{STYLE}</style></head>"
        f"<body><h1>mlcycle</h1><p>{escape(reason)}</p></body></html>"
    )
