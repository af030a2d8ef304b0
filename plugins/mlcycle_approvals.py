"""The approvals of the platform API: `GET/POST /api/ml/pipelines/{pipeline}/approvals`.

A lifecycle run whose spec asks for approval (`promotion`) waits at its `approval` task, an
Airflow human-in-the-loop request. These routes list a pipeline's approval requests and answer
one, as the calling Airflow user: the answer goes through Airflow's own handler of
`PATCH /api/v2/.../hitlDetails` (the same locks, checks and resume of the waiting task), behind
the same permission, the DAG's `HITL_DETAIL` resource with `PUT` (a viewer has none: 403). The
`approval` task writes the audit event (who, what, why) when it resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from pipelines.core import approval
from pipelines.core.audit import MAX_REASON, AuditError, require_reason
from pipelines.io import catalog


class DecisionBody(BaseModel):
    """A person's answer to a run's approval."""

    run_id: str = Field(min_length=1, max_length=250, description="the lifecycle run (Airflow's run id)")
    decision: Literal["approve", "reject"]
    reason: str = Field(default="", max_length=MAX_REASON, description="why; a reject needs one")


def may(user: Any, method: Literal["GET", "PUT"], pipeline: str) -> bool:
    """Whether Airflow's auth manager lets `user` read (GET) or answer (PUT) the human-in-the-loop
    requests of the pipeline's lifecycle DAG."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    details = DagDetails(id=f"{pipeline}_lifecycle")
    manager = get_auth_manager()
    return bool(
        manager.is_authorized_dag(method=method, access_entity=DagAccessEntity.HITL_DETAIL, details=details, user=user)
    )


SETTLE_S = 5.0
"""Seconds after its task parked before an approval is `waiting`: Airflow resumes an answered task
under the same try number, and where the scheduler reads the executor's report of the parking
process only after that resume (it reads them once a loop), it takes the resumed task for one
killed externally and marks it for retry, which asks again and loses the answer (seen in CI with
an answer a second after the park). An answer in this window waits for its end."""


def state_of(detail: dict[str, Any], now: datetime) -> str:
    """`waiting` (parked for an answer, `SETTLE_S` ago at least), `pending` (asked, not parked
    or parked just now: starting, between tries, settling), `approved`, `rejected`, or
    `timed_out` (rejected by the timeout). Pure."""
    if detail["responded_at"] is None:
        parked = detail["task_state"] == "awaiting_input"
        return "waiting" if parked and settle_left(detail, now) <= 0 else "pending"
    if detail["responded_by"] is None:
        return "timed_out"
    return "approved" if detail["chosen_options"] == [approval.APPROVE] else "rejected"


def settle_left(detail: dict[str, Any], now: datetime) -> float:
    """Seconds until a request may be answered: `SETTLE_S` after its task's try asked (`parked_at`,
    which `requests` takes as the later of the request's `created_at` and the try's start, as
    Airflow keeps one request per task instance across tries). Pure."""
    return SETTLE_S - (now - datetime.fromisoformat(detail["parked_at"])).total_seconds()


def requests(pipeline: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """The pipeline's approval requests (newest first), from Airflow's database."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = (
        select(TaskInstance.run_id, TaskInstance.state, TaskInstance.start_date, HITLDetail)
        .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
        .where(TaskInstance.dag_id == f"{pipeline}_lifecycle", TaskInstance.task_id == approval.TASK_ID)
        .order_by(HITLDetail.created_at.desc())
    )
    if run_id is not None:
        query = query.where(TaskInstance.run_id == run_id)
    out = []
    with create_session() as session:
        for run, task_state, started, d in session.execute(query).all():
            item = {
                "run_id": run,
                "task_state": getattr(task_state, "value", task_state),
                "subject": d.subject,
                "body": d.body,
                "created_at": d.created_at.isoformat(),
                "parked_at": max(d.created_at, started or d.created_at).isoformat(),  # this try's ask
                "responded_at": d.responded_at.isoformat() if d.responded_at else None,
                "responded_by": (d.responded_by or {}).get("name"),
                "chosen_options": d.chosen_options,
                "reason": (d.params_input or {}).get("reason", ""),
            }
            out.append({**item, "state": state_of(item, datetime.now(UTC))})
    return out


def answer(pipeline: str, body: DecisionBody, user: Any) -> dict[str, Any]:
    """Answer the run's waiting approval as `user`, through Airflow's own handler."""
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.utils.session import create_session

    found = requests(pipeline, body.run_id)
    if found and found[0]["task_state"] == "awaiting_input" and found[0]["responded_at"] is None:
        time.sleep(min(SETTLE_S, max(0.0, settle_left(found[0], datetime.now(UTC)))))  # parked just now
        found = requests(pipeline, body.run_id)
    if not found:
        raise HTTPException(404, f"run {body.run_id!r} of {pipeline} has no approval that asked a person")
    if found[0]["state"] != "waiting":  # an answer to a task not parked would be lost when it asks again
        raise HTTPException(409, f"the approval of run {body.run_id!r} is {found[0]['state']}, not waiting")
    option = approval.APPROVE if body.decision == "approve" else approval.REJECT
    payload = UpdateHITLDetailPayload(chosen_options=[option], params_input={"reason": body.reason.strip()})
    with create_session() as session:
        done = update_hitl_detail(
            dag_id=f"{pipeline}_lifecycle",
            dag_run_id=body.run_id,
            task_id=approval.TASK_ID,
            update_hitl_detail_payload=payload,
            user=user,
            session=session,
        )
    return {
        "pipeline": pipeline,
        "run_id": body.run_id,
        "decision": body.decision,
        "reason": body.reason.strip(),
        "responded_by": done.responded_by.name,
    }


def add_approval_routes(app: FastAPI, readable: Callable[..., Any]) -> None:
    """The routes, behind `readable` (the plugin's: a known pipeline whose runs the user may read,
    whose spec loads) and the DAG's human-in-the-loop permission."""

    @app.get("/pipelines/{pipeline}/approvals")
    def approvals(
        user: GetUserDep,
        name: str = Depends(readable()),
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        """The pipeline's approval requests, newest first: waiting, approved, rejected, timed out."""
        if not may(user, "GET", name):
            raise HTTPException(403, f"no read access to {name}_lifecycle's required actions")
        return catalog.page(requests(name), limit, offset)

    @app.post("/pipelines/{pipeline}/approvals")
    def decide(body: DecisionBody, user: GetUserDep, name: str = Depends(readable())) -> dict[str, Any]:
        """Approve (promote runs) or reject (promote and the canary skip) a waiting run; a reject says why."""
        if not may(user, "PUT", name):
            raise HTTPException(403, f"no permission to answer {name}_lifecycle's required actions")
        if body.decision == "reject":
            try:
                require_reason(body.reason, "a reject")
            except AuditError as err:
                http = HTTPException(422, str(err))
                http.field = "reason"  # type: ignore[attr-defined]
                raise http from None
        return answer(name, body, user)
