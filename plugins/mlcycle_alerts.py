"""The mlcycle page's Alerts section: what Alertmanager says fires now for the pipeline (the rules
of its spec, the steps' events), read from `MLCYCLE_ALERTMANAGER_URL` when the page is drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from pipelines.core.alerts import by_pipeline
from pipelines.core.settings import Settings
from pipelines.io.alerts import firing

PAGE_TIMEOUT_S = 2.0  # the page is drawn without them rather than waiting on Alertmanager


def firing_for(settings: Settings, pipeline: str) -> tuple[list[dict[str, str]] | None, str]:
    """The pipeline's firing alerts (`core.alerts.by_pipeline` rows), or None and why there are none
    to show (no Alertmanager configured, or it did not answer)."""
    url = settings.alertmanager_url
    if not url:
        return None, "No Alertmanager is configured (MLCYCLE_ALERTMANAGER_URL): nobody is told."
    try:
        grouped = by_pipeline(firing(url, PAGE_TIMEOUT_S))
    except Exception as err:  # an Alertmanager away, or an answer of another shape: the page is drawn
        return None, f"Alertmanager did not answer ({type(err).__name__}): firing alerts unknown."
    return grouped.get(pipeline, []) + grouped.get("-", []), ""  # the platform's own (storage) too


def alerts_section(rows: Sequence[Mapping[str, str]] | None, reason: str = "") -> str:
    """The section's HTML: a table of what fires, `none fires`, or why it cannot tell. Pure."""
    if rows is None:
        return f'<h2>Alerts</h2><p class="muted">{escape(reason)}</p>'
    if not rows:
        return '<h2>Alerts</h2><p class="muted">None fires.</p>'
    body = "".join(
        f"<tr><td>{escape(r['alertname'])}</td><td>{escape(r['severity'])}</td>"
        f"<td>{escape(r['since'])}</td><td>{escape(r['summary'])}</td></tr>"
        for r in rows
    )
    head = "<tr><th>alert</th><th>severity</th><th>since (UTC)</th><th>summary</th></tr>"
    return f'<h2>Alerts <span class="muted">({len(rows)} firing)</span></h2><table>{head}{body}</table>'
