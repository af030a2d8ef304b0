"""The platform API's steering routes: roll a pipeline's champion back, pin it, unpin it.

Each is behind the same permission as the API's other writes (creating the lifecycle DAG's runs:
a viewer gets 403), takes a JSON body only (a cross-site form cannot send one without a CORS
preflight, which this server does not grant: Airflow's session cookie alone never moves a
champion), needs a reason, and records the Airflow user in the audit trail. A rollback moves the
alias and the vector spaces here, then starts one pass of `mlcycle serve sync`, which reconfigures
Serve to the restored version in place (the platform's serve-sync would follow within its
interval anyway), and where the restored version's vector space was dropped, its run's `embed`
step, which builds it again.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, FastAPI, HTTPException, Request  # FastAPI reads these names from the module
from pydantic import BaseModel, Field

from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import load_settings
from pipelines.core.steering import Pin
from pipelines.core.system import executable
from pipelines.io import steering


class SteerBody(BaseModel):
    """Why (recorded in the audit trail), and for a rollback the version to restore."""

    reason: str = Field(min_length=1, max_length=2000, description="why, for the audit trail")
    to: int | None = Field(None, ge=1, description="rollback only: the version to restore (default: the previous)")


def json_only(request: Request) -> None:
    """Refuse a body that is not JSON (415): what a cross-site form can send without a preflight."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, "send the body as application/json")


JsonBody = Annotated[None, Depends(json_only)]
"""Declared after the user and the pipeline: a request without a login is a 401 whatever its body."""


def in_background(*args: str) -> None:
    """`mlcycle <args>` detached from the request: `serve sync` (one pass: Serve moves to the
    champion alias), `step embed ...` (a restored version's dropped vector space built again)."""
    subprocess.Popen(
        [executable("mlcycle"), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def add_steering_routes(app: FastAPI, writable: Callable[..., Any]) -> None:
    """`POST /pipelines/{pipeline}/rollback | pin | unpin`, `GET /pipelines/{pipeline}/pin`;
    `writable(method="POST")` is the plugin's dependency that checks the user may write (or read)
    the pipeline's lifecycle DAG's runs."""
    may = Depends(writable())

    @app.post("/pipelines/{pipeline}/rollback")
    def rollback(body: SteerBody, user: GetUserDep, _: JsonBody, name: str = may) -> dict[str, Any]:
        """The champion back to the previous (or the named) version; Serve follows in seconds."""
        try:
            done = steering.rollback_champion(load_settings(), name, body.to, user.get_name(), "user", body.reason)
        except InvalidArgument as err:
            raise HTTPException(409, str(err)) from None
        in_background("serve", "sync")
        if done["vector_space"] == "dropped" and done.get("run_id"):
            steering.forget_dropped_space(load_settings(), name, done["to"])
            in_background("step", "embed", "--pipeline", name, "--run-id", done["run_id"], "--force")
            done["vector_space"] = "rebuilding"  # the embed step of the run that registered it
        return {**done, "by": user.get_name(), "serving": "serve-sync moves Serve to the restored version"}

    @app.post("/pipelines/{pipeline}/pin", status_code=201)
    def pin(body: SteerBody, user: GetUserDep, _: JsonBody, name: str = may) -> dict[str, Any]:
        """Freeze promotion: runs train and evaluate, the champion stays."""
        try:
            found = steering.pin(load_settings(), name, user.get_name(), "user", body.reason)
        except InvalidArgument as err:
            raise HTTPException(409, str(err)) from None
        return pin_json(found)

    @app.post("/pipelines/{pipeline}/unpin")
    def unpin(body: SteerBody, user: GetUserDep, _: JsonBody, name: str = may) -> dict[str, Any]:
        try:
            found = steering.unpin(load_settings(), name, user.get_name(), "user", body.reason)
        except InvalidArgument as err:
            raise HTTPException(409, str(err)) from None
        return {**pin_json(found), "unpinned_by": user.get_name()}

    @app.get("/pipelines/{pipeline}/pin")
    def current(name: str = Depends(writable("GET"))) -> dict[str, Any]:
        found = steering.current_pin(load_settings(), name)
        return {"pipeline": name, "pin": pin_json(found) if found else None}


def pin_json(pin: Pin) -> dict[str, Any]:
    return {"pipeline": pin.pipeline, "by": pin.by, "at": str(pin.at), "reason": pin.reason, "version": pin.version}
