"""`AlertNotifier`: a task of a lifecycle, drift or retention DAG failed for good (after its
retries), so Alertmanager gets `MlcycleRunFailed` (and `MlcycleStepRetriesExhausted` where it was
retried) with the task, the run and its log's URL. Airflow runs it as the task's
`on_failure_callback`, in the task's process; it never fails the task's end (no Alertmanager
configured: a log line)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.notifier import BaseNotifier

from pipelines.core.alerts import failure_alerts
from pipelines.core.settings import load_settings
from pipelines.io import alerts

if TYPE_CHECKING:
    from airflow.sdk import Context


def failure_fields(context: Any, pipeline: str) -> dict[str, Any]:
    """What `failure_alerts` needs, read from a failure callback's context. Pure."""
    ti = context["ti"]
    error = context.get("exception")
    return {
        "pipeline": pipeline,
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "tries": int(ti.try_number or 1),
        "log_url": getattr(ti, "log_url", None),
        "error": f"{type(error).__name__}: {error}" if error is not None else "failed",
    }


class AlertNotifier(BaseNotifier):
    """Tell Alertmanager that a task of `pipeline` failed."""

    def __init__(self, pipeline: str) -> None:
        super().__init__()
        self.pipeline = pipeline

    def notify(self, context: Context) -> None:
        try:
            fields = failure_fields(context, self.pipeline)
        except (KeyError, AttributeError) as err:  # a context without its task instance
            self.log.warning("no failure alert: %s", err)
            return
        alerts.send(load_settings(), failure_alerts(**fields, now=datetime.now(UTC)))
