"""`PromotionApproval`: the approval gate between `evaluate` and `promote`, on Airflow's own
human-in-the-loop operator (the standard provider's `ApprovalOperator`).

It reads evaluate's result (XCom) and the spec's `promotion`: where no person needs to decide (an
`auto` spec whose `manual_when` conditions do not hold, or a challenger that failed its gates) it
goes on at once and says why; otherwise it waits in Airflow's "Required actions" with the
evaluation summary as its body. Approve: promote runs. Reject (by a person, or by
`promotion.approval_timeout_h` passing): promote and everything after it skip. Every answer is
written to the audit trail with the Airflow user who gave it and their reason.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param

from operators.hook import task_settings
from pipelines.core import approval
from pipelines.core.settings import spec_for
from pipelines.core.steps import report_url
from pipelines.io import audit

if TYPE_CHECKING:
    from airflow.sdk import Context

    from pipelines.core.audit import AuditEvent

REASON = "reason"


class PromotionApproval(ApprovalOperator):
    """Approve or reject the run's challenger before `promote` (see the module's docstring).

    Args:
        pipeline: the pipeline (a spec in the settings' pipelines directory).
        timeout_h: hours to wait for a person; then the challenger is rejected.
        evaluate_task_id: the task whose result (XCom) is the evaluation.
    """

    ui_color = "#fff4d6"

    def __init__(self, *, pipeline: str, timeout_h: float, evaluate_task_id: str = "evaluate", **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's run form: the HITL form asks only for the reason
        super().__init__(
            subject=f"Promote {pipeline}'s challenger?",
            defaults=approval.REJECT,  # what the timeout answers
            response_timeout=timedelta(hours=timeout_h),
            ignore_downstream_trigger_rules=True,  # a reject skips promote and everything after it
            params={
                REASON: Param(
                    "", type="string", title="Reason", description="why (recorded in the audit; a reject needs one)"
                )
            },
            **kwargs,
        )
        self.pipeline = pipeline
        self.timeout_h = timeout_h
        self.evaluate_task_id = evaluate_task_id

    def execute(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        evaluation = context["ti"].xcom_pull(task_ids=self.evaluate_task_id)
        if not isinstance(evaluation, dict) or "verdict" not in evaluation:
            raise AirflowFailException(f"task {self.evaluate_task_id!r} left no evaluation (XCom): {evaluation!r}")
        promotion = spec_for(task_settings(), self.pipeline).promotion
        decided = approval.plan(promotion, evaluation)
        run_id = str(context["run_id"])
        if not decided.ask:
            self.log.info("no person needs to decide: %s", "; ".join(decided.why))
            if evaluation["verdict"].get("passed"):
                self._audit(approval.auto_event(self.pipeline, run_id, decided))
            return {"decision": "auto", "why": decided.why}
        self.subject = approval.subject(self.pipeline, run_id)
        self.log.info("waiting for a person (%s): %s", "; ".join(decided.why), self.subject)
        self.body = approval.body(
            evaluation, decided.why, report_url(context["ti"].dag_id, run_id, "evaluate"), self.timeout_h
        )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        run_id = str(context["run_id"])
        if "error" not in event:
            recorded = approval.decision_event(self.pipeline, run_id, event, self.timeout_h)
            self._audit(recorded)
            self.log.info("%s by %s: %s", recorded.action, recorded.actor, recorded.reason)
        return super().execute_complete(context, event)

    def _audit(self, event: AuditEvent) -> None:
        audit.record(task_settings(), event)
