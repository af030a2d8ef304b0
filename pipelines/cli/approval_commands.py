"""`mlcycle model approve|reject <pipeline> --run <id>`: a person's answer to a run waiting at
its approval, given as an Airflow user through the api-server (the platform API's
`POST /api/ml/pipelines/<p>/approvals`, which answers Airflow's human-in-the-loop request behind
the user's own permissions: a viewer is refused)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pipelines.core.audit import AuditError, require_reason
from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import load_settings, pipeline_names
from pipelines.local.local_airflow import AirflowClient, api_detail, passwords_file, read_password


def credentials(user: str | None, settings: Any) -> tuple[str, str]:
    """The Airflow user and password: `--user` or MLCYCLE_AIRFLOW_USER (default admin), and
    MLCYCLE_AIRFLOW_PASSWORD, else the embedded platform's password of that user."""
    name = user or os.environ.get("MLCYCLE_AIRFLOW_USER") or "admin"
    password = os.environ.get("MLCYCLE_AIRFLOW_PASSWORD")
    if password:
        return name, password
    try:
        return name, read_password(passwords_file(settings), name)
    except (OSError, KeyError):
        raise InvalidArgument(
            f"no password of Airflow user {name!r}: set MLCYCLE_AIRFLOW_PASSWORD (or `mlcycle up` first)"
        ) from None


def cmd_model_decide(args: argparse.Namespace) -> int:
    import httpx

    settings = load_settings()
    if args.pipeline not in pipeline_names(settings):
        raise InvalidArgument(f"no pipeline {args.pipeline!r} (known: {pipeline_names(settings)})")
    try:
        reason = require_reason(args.reason, "reject") if args.action == "reject" else (args.reason or "").strip()
    except AuditError as err:
        raise InvalidArgument(str(err)) from None
    url = (args.airflow_url or f"http://127.0.0.1:{settings.airflow_port}").rstrip("/")
    user, password = credentials(args.user, settings)
    client = AirflowClient(url, password, user)
    answer = httpx.post(
        f"{url}/api/ml/pipelines/{args.pipeline}/approvals",
        json={"run_id": args.run, "decision": args.action, "reason": reason},
        headers=client.auth_headers(),
        timeout=60,
    )
    if answer.status_code >= 400:
        try:
            why = answer.json().get("reason") or answer.text
        except ValueError:
            why = api_detail(answer.text)
        print(f"{args.action} refused ({answer.status_code}): {why}")
        return 1
    done = answer.json()
    print(
        f"{args.pipeline} run {args.run}: {done['decision']}d by {done['responded_by']}"
        + (f": {reason}" if reason else "")
    )
    return 0


def add_decisions(model: Any) -> None:
    """`model approve | reject` (beside steering's actions under `model`)."""
    for action, what in (("approve", "let the run's challenger be promoted"), ("reject", "skip its promotion")):
        p = model.add_parser(action, help=f"answer a run waiting at its approval: {what}")
        p.add_argument("pipeline")
        p.add_argument("--run", required=True, help="the lifecycle run's id (Airflow's run id)")
        p.add_argument("--reason", default="", help="why (recorded in the audit; a reject needs one)")
        p.add_argument("--user", default=None, help="the Airflow user (default MLCYCLE_AIRFLOW_USER, else admin)")
        p.add_argument("--airflow-url", default=None, help="the api-server (default the embedded platform's)")
        p.set_defaults(func=cmd_model_decide)
