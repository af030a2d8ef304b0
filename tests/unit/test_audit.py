"""The audit trail's vocabulary: what the table would refuse is refused before it is written."""

from __future__ import annotations

import pytest

from pipelines.core.audit import ACTIONS, AuditError, AuditEvent, manual_trigger, require_reason


def test_an_event_names_a_known_action_an_actor_and_a_pipeline() -> None:
    event = AuditEvent("alice", "user", "rollback", "churn", version=3, reason="bad answers")
    assert event.action in ACTIONS
    with pytest.raises(AuditError, match="unknown audit action"):
        AuditEvent("alice", "user", "delete_everything", "churn")
    with pytest.raises(AuditError, match="needs an actor"):
        AuditEvent("  ", "user", "pin", "churn")
    with pytest.raises(AuditError, match="needs a pipeline"):
        AuditEvent("alice", "user", "pin", "")
    with pytest.raises(AuditError, match="unknown actor kind"):
        AuditEvent("alice", "root", "pin", "churn")  # type: ignore[arg-type]


def test_actions_that_change_what_serves_need_a_reason() -> None:
    assert require_reason("  incident 42 ", "pin") == "incident 42"
    with pytest.raises(AuditError, match=r"pin needs a reason \(--reason\)"):
        require_reason("", "pin")
    with pytest.raises(AuditError, match="longer than"):
        require_reason("x" * 2001, "rollback")


def test_the_scheduler_audits_lifecycle_and_batch_runs_a_person_started_and_no_other() -> None:
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    form = manual_trigger("churn_lifecycle", "manual__1", DagRunType.MANUAL, "alice", DagRunTriggeredByType.UI, None)
    assert form == AuditEvent("alice", "user", "trigger", "churn", run_id="manual__1", detail={"conf": {}, "via": "ui"})
    rest = manual_trigger("churn_lifecycle", "r", "manual", "bob", DagRunTriggeredByType.REST_API, {"n_trials": 2})
    assert rest is not None and rest.detail == {"conf": {"n_trials": 2}, "via": "rest_api"}
    # the lifecycle's own runs, other DAGs and runs with no user on record are not a person's trigger
    assert manual_trigger("churn_lifecycle", "s", DagRunType.SCHEDULED, "alice", None, {}) is None
    assert manual_trigger("churn_lifecycle", "a", DagRunType.ASSET_TRIGGERED, None, None, {}) is None
    assert manual_trigger("churn_drift", "m", DagRunType.MANUAL, "alice", DagRunTriggeredByType.UI, {}) is None
    assert manual_trigger("churn_lifecycle", "m", DagRunType.MANUAL, None, DagRunTriggeredByType.CLI, {}) is None
    # a batch run a person started names its DAG, as `mlcycle batch run` writes it; its schedule's are not
    batch = manual_trigger("churn_batch", "b", DagRunType.MANUAL, "carol", DagRunTriggeredByType.REST_API, None)
    assert batch == AuditEvent(
        "carol", "user", "trigger", "churn", run_id="b", detail={"conf": {}, "via": "rest_api", "dag": "churn_batch"}
    )
    assert manual_trigger("churn_batch", "s", DagRunType.SCHEDULED, "carol", None, {}) is None
    lifecycle = manual_trigger("nightly_batch_lifecycle", "n", "manual", "dan", None, {})
    assert lifecycle is not None and lifecycle.pipeline == "nightly_batch" and "dag" not in lifecycle.detail
