"""The retraining Asset of a pipeline, and the operator that emits its events.

`<name>_drift` ends with `RetrainingTrigger`: it reads the drift step's result (XCom) and, when the
check asks for retraining, succeeds with the reasons in the Asset event's `extra`; otherwise it
skips, and a skipped task emits no event. `<name>_lifecycle` is scheduled on the Asset (and on its
cron, if the spec has one), so Airflow starts the retraining run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def retraining_asset(pipeline: str) -> Asset:
    return Asset(name=f"{pipeline}_retraining", uri=f"mlcycle://pipelines/{pipeline}/retraining", group="mlcycle")


def predictions_asset(pipeline: str) -> Asset:
    """The Asset `<name>_batch`'s publish task updates when a batch run's predictions land."""
    return Asset(name=f"{pipeline}_predictions", uri=f"mlcycle://{pipeline}/predictions", group="mlcycle")


def event_extra(result: dict[str, Any], run_id: str) -> dict[str, Any]:
    """What the Asset event carries: the finding and why. Pure."""
    performance = result.get("performance")
    return {
        "pipeline": result["pipeline"],
        "status": result["status"],
        "reasons": result["reasons"],
        "drifted": result.get("drifted", []),
        "champion": result["champion"],
        "requests": result["requests"],
        "window_start": result.get("window_start"),
        "window_end": result.get("window_end"),
        "live_metric": {k: performance.get(k) for k in ("metric", "value", "reference", "labelled")}
        if performance
        else None,
        "drift_run_id": run_id,
        "report": result.get("report"),
    }


class RetrainingTrigger(BaseOperator):
    """Emit `<pipeline>_retraining` when the drift check says retrain; skip otherwise."""

    ui_color = "#f6d7a7"

    def __init__(self, *, pipeline: str, check_task_id: str = "drift", **kwargs: Any) -> None:
        self.asset = retraining_asset(pipeline)
        super().__init__(outlets=[self.asset], **kwargs)
        self.pipeline = pipeline
        self.check_task_id = check_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        result = context["ti"].xcom_pull(task_ids=self.check_task_id)
        if not isinstance(result, dict) or "retrain" not in result:
            raise AirflowFailException(f"task {self.check_task_id!r} left no drift result (XCom): {result!r}")
        if not result["retrain"]:
            raise AirflowSkipException(f"no retraining ({result['status']}): {'; '.join(result['reasons'])}")
        extra = event_extra(result, context["run_id"])
        context["outlet_events"][self.asset].extra = extra
        self.log.info("retraining %s asked: %s", self.pipeline, "; ".join(result["reasons"]))
        return extra
