"""The scheduler's listener that audits a lifecycle or batch run started by a person, however it
was started: Airflow's Trigger form, its REST API, the platform API, `mlcycle run`,
`mlcycle batch run`.

The platform API and the CLI write the run's `trigger` event as they create it (with how it came);
this listener writes it when the scheduler starts the run, from Airflow's own record of who asked
(`DagRun.triggering_user_name`), so a run from Airflow's UI or REST API is on the trail too. Either
writer may be first: the table keeps one `trigger` per run (migration 0020). Scheduled, asset- and
backfill-made runs are the platform's, not a person's, and are not written here.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

from pipelines.core.audit import manual_trigger
from pipelines.core.settings import load_settings
from pipelines.io import audit

log = logging.getLogger(__name__)


class TriggerAudit:
    """Registered through `MlcyclePlugin.listeners`; Airflow calls it in the scheduler."""

    @hookimpl
    def on_dag_run_running(self, dag_run: Any, msg: str) -> None:
        try:
            event = manual_trigger(
                dag_run.dag_id,
                dag_run.run_id,
                dag_run.run_type,
                getattr(dag_run, "triggering_user_name", None),
                getattr(dag_run, "triggered_by", None),
                dag_run.conf,
            )
            if event is None:
                return
            audit.record(load_settings(), event)
        except Exception:  # the audit must not stop the scheduler: say so loudly instead
            log.exception("could not audit the trigger of %s %s", dag_run.dag_id, dag_run.run_id)


TRIGGER_AUDIT = TriggerAudit()
