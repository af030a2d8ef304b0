"""Who did what, in the platform API: `GET /api/ml/pipelines/{pipeline}/audit` (behind read access to
the pipeline's lifecycle DAG's runs, like every read), and `audited`, which the API's own writes
(labels, a run triggered) call to record the Airflow user who asked. The mlcycle page shows the
same trail (`mlcycle_page.audit_section`)."""

from __future__ import annotations

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
