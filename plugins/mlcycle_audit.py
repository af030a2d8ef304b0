"""Who did what, in the platform API: `GET /api/ml/pipelines/{pipeline}/audit` (behind read access to
the pipeline's lifecycle DAG's runs, like every read), and `audited`, which the API's own writes
(labels, a run triggered) call to record the Airflow user who asked. The mlcycle page shows the
same trail (`audit_section`, here)."""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import Depends, FastAPI, Query

from pipelines.core.audit import ACTIONS, AuditEvent
from pipelines.core.settings import Settings, load_settings
from pipelines.io import audit, catalog

MAX_EVENTS = 10_000


def audited(settings: Settings, user: Any, action: str, pipeline: str, **fields: Any) -> int:
    """Record an action of an Airflow user on `pipeline` (fields: `version`, `run_id`, `reason`, `detail`)."""
    return audit.record(settings, AuditEvent(str(user.get_name()), "user", action, pipeline, **fields))


def add_audit_routes(app: FastAPI, readable: Any) -> None:
    """`/pipelines/{pipeline}/audit`: the pipeline's events, newest first, a page at a time
    (`readable`: the plugin's dependency that checks the pipeline and the user's read access)."""

    @app.get("/pipelines/{pipeline}/audit")
    def audit_trail(
        name: str = Depends(readable),
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0),
        action: str | None = Query(None, description=f"one of {sorted(ACTIONS)}"),
    ) -> dict[str, Any]:
        """Who did what on the pipeline: trigger, approve, reject, rollback, pin, labels loaded,
        keys created or revoked, alias moves; each with its actor, time, version, run and reason."""
        events = audit.events(load_settings(), name, limit=MAX_EVENTS, action=action)
        for e in events:
            e["at"] = e["at"].isoformat()
        listed = catalog.page(events, limit, offset)
        listed["pipeline"] = name
        return listed


def audit_section(events: list[dict[str, Any]]) -> str:
    """Who did what on the pipeline, newest first (`pipelines.io.audit.events`). Pure."""
    if not events:
        return "<h2>Audit</h2><p class='muted'>No action recorded yet.</p>"
    rows = "".join(
        f"<tr><td class='when'>{escape(str(e['at'])[:19])}</td><td>{escape(e['actor'])}"
        f" <span class='muted'>({escape(e['actor_kind'])})</span></td><td>{escape(e['action'])}</td>"
        f"<td>{'v' + str(e['version']) if e['version'] is not None else ''} {escape(e['run_id'] or '')}</td>"
        f"<td>{escape(e['reason'])}</td>"
        f"<td class='muted'>{escape(' '.join(f'{k}={v}' for k, v in sorted(e['detail'].items())))}</td></tr>"
        for e in events
    )
    return (
        "<h2>Audit</h2><table class='audit'><tr><th>when</th><th>who</th><th>action</th><th>version / run</th>"
        f"<th>reason</th><th>detail</th></tr>{rows}</table>"
    )
