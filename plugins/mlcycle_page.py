"""The mlcycle page of the Airflow UI, as HTML: a pipeline's life at a glance.

Champion and challenger with their figures and lineage, where the canary stands and its walk
plotted, the live metric from labels against each version's evaluation figure, the PSI of every
feature over the last drift checks, the last runs with their reports and MLflow, and a lookup of
one served prediction's trace. Plain HTML and inline SVG (the charts, and the colours of the drift
heat table, are `mlcycle_charts`'s): every function here is pure and takes what
`pipelines.io.catalog` answers. The plugin serves it at `/mlcycle/page`, and the Airflow UI
frames it under its own navigation (`/plugin/mlcycle`) in a sandboxed iframe that may run scripts
as its own origin but not navigate the window: `LEAVE_FRAME` lets a link to an Airflow page or a
report replace the UI (and an MLflow link open a tab) from the UI's own document; `DECIDE`, there
only while a run waits for approval, posts a person's answer to the platform API.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from mlcycle_audit import audit_section  # beside this file
from mlcycle_charts import (  # beside this file: Airflow puts the folder on sys.path
    DECISION_COLOURS,
    NOT_COUNTED_COLOUR,
    canary_walk_svg,
    cell_title,
    drifted_cell,
    fmt,
    heat,
    live_metric_svg,
    live_series,
    version_roles,
)
from mlcycle_charts import DRIFTED_COLOUR as DRIFTED_COLOUR  # the page's names, as before the charts moved
from mlcycle_resources import api_section

from operators.links import mlflow_url
from pipelines.core.steps import report_url
from pipelines.io.registry import model_name

PAGE_PATH = "/mlcycle/page"
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


def moved_since(canary: dict[str, Any], champion: int | None, audit: list[dict[str, Any]]) -> str:
    """What serves now where the champion moved after the last canary ended (a rollback, an alias
    moved outside mlcycle): Serve follows the alias, so the canary's weights are history. Pure."""
    if champion is None or canary["outcome"] == "running" or canary["weights"] == {str(champion): 100.0}:
        return ""
    move = next((e for e in audit if e["action"] in ("rollback", "external_alias")), None)
    why = f" ({move['action']} by {move['actor']}: {move['reason']})" if move else ""
    return f"<p data-serving='moved'><b>Since then</b>: v{champion} is champion and serves all traffic{escape(why)}</p>"


def canary_section(
    pipeline: str, canary: dict[str, Any] | None, champion: int | None = None, audit: list[dict[str, Any]] | None = None
) -> str:
    if canary is None:
        return "<h2>Serving</h2><p class='muted'>No canary has run: nothing is served yet.</p>"
    weights = ", ".join(f"v{v} {w:g}%" for v, w in canary["weights"].items()) or "–"
    run = link(run_page(f"{pipeline}_lifecycle", canary["run_id"]), canary["run_id"])
    since = moved_since(canary, champion, audit or [])
    head = (
        f"<h2>Serving</h2><p>Last canary ({run}): "
        f"<b>{escape(str(canary['outcome']))}</b>, traffic {'then' if since else 'now'} {escape(weights)}"
        + (f" — <span class='muted'>{escape(str(canary['reason']))}</span>" if canary.get("reason") else "")
        + f"</p>{since}"
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


STEER = """
document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-steer]");
  if (!form) return;
  event.preventDefault();
  const action = event.submitter.value, out = form.querySelector("output");
  const body = {reason: form.reason.value};
  if (action === "rollback" && form.to.value) body.to = Number(form.to.value.replace(/^v/i, ""));
  const answer = await fetch(form.dataset.steer + "/" + action, {method: "POST", credentials: "same-origin",
    headers: {"content-type": "application/json"}, body: JSON.stringify(body)});
  const data = await answer.json().catch(() => ({}));
  out.textContent = answer.ok ? action + ": done" : (data.reason || answer.status);
  if (answer.ok) setTimeout(() => window.location.reload(), 1500);
});
"""
"""The steering form's script: each button POSTs JSON to the platform API with the session's cookie
(the API takes JSON only, so no other site can post it), then the page reloads."""


def steering_section(pipeline: str, pin: dict[str, Any] | None, champion: dict[str, Any] | None) -> str:
    """The pin (who, when, why) and the steering actions: roll back, pin or unpin, with a reason. Pure."""
    state = (
        f"<p data-pin='pinned'><b>Pinned</b>: {escape(str(pin['line']))} — runs train and evaluate, "
        "the champion stays</p>"
        if pin
        else "<p class='muted' data-pin='none'>Not pinned: a run that passes its canary becomes champion.</p>"
    )
    if champion is None:
        return f"<h2>Steering</h2>{state}"
    toggle = "unpin" if pin else "pin"
    api = f"../api/ml/pipelines/{quote(pipeline, safe='')}"
    return (
        f"<h2>Steering</h2>{state}<form data-steer='{escape(api)}'>"
        "<input type='text' name='reason' required maxlength='2000' placeholder='reason (recorded in the audit)' "
        "aria-label='reason'> <input type='text' name='to' size='5' placeholder='vN' aria-label='version' "
        "style='width:4em'> <button type='submit' name='do' value='rollback'>Roll back</button> "
        f"<button type='submit' name='do' value='{toggle}'>{toggle.capitalize()}</button> <output></output>"
        f"</form><script>{STEER}</script>"
    )


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


DECIDE = """
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-decision]");
  if (!button) return;
  const form = button.closest("form.approval");
  const reason = form.querySelector("input[name=reason]").value;
  const body = {run_id: form.dataset.run, decision: button.dataset.decision, reason: reason};
  const r = await fetch(form.dataset.api, {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const out = await r.json().catch(() => ({}));
  form.querySelector("output").textContent = r.ok ? `${body.decision}d by ${out.responded_by}` : out.reason || r.status;
  if (r.ok) form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
});
"""


def approvals_section(pipeline: str, waiting: list[dict[str, Any]]) -> str:
    """The runs waiting for a person's approval, each with its summary, a reason and the two
    buttons (the platform API's `POST .../approvals`, as the logged-in user). Pure."""
    if not waiting:
        return ""
    api = f"/api/ml/pipelines/{quote(pipeline)}/approvals"
    forms = "".join(
        f'<form class="approval" data-run="{escape(a["run_id"])}" data-api="{escape(api)}" onsubmit="return false">'
        f"<p><b>{escape(a['subject'])}</b> {link(run_page(f'{pipeline}_lifecycle', a['run_id']), 'run')}</p>"
        f'<pre class="muted">{escape(a["body"] or "")}</pre>'
        '<input type="text" name="reason" placeholder="reason (a reject needs one)"> '
        '<button type="button" data-decision="approve">Approve</button> '
        '<button type="button" data-decision="reject">Reject</button> <output></output></form>'
        for a in waiting
    )
    return f"<h2>Waiting for approval</h2>{forms}<script>{DECIDE}</script>"


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
    approvals: list[dict[str, Any]] | None = None,
    alerts: str = "",
    batch: str = "",
) -> str:
    """One pipeline's page (`data`: `catalog.overview`; `alerts`, `batch`: those sections), tabs to others. Pure."""
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
{approvals_section(selected, approvals or [])}
{alerts}
{models_section(detail, data["versions"], mlflow_base)}
{steering_section(selected, detail.get("pin"), detail.get("champion"))}
{canary_section(selected, detail.get("canary"), (detail.get("champion") or {}).get("version"), data.get("audit"))}
{live_section(detail, data["live"], data["versions"], data.get("champion_live"))}
{drift_section(selected, data["drift"], psi_threshold, drift_ignored)}
{runs_section(selected, detail["runs"], data["runs"], mlflow_base)}
{batch}
{audit_section(data.get("audit", []))}
{api_section(selected)}
</body></html>"""


def empty_page(reason: str) -> str:
    """What a user with no readable pipeline sees. Pure."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mlcycle</title><style>{STYLE}</style></head>"
        f"<body><h1>mlcycle</h1><p>{escape(reason)}</p></body></html>"
    )
