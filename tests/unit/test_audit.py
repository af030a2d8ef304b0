"""The audit trail's vocabulary: what the table would refuse is refused before it is written."""

from __future__ import annotations

import pytest

from pipelines.core.audit import ACTIONS, AuditError, AuditEvent, require_reason


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
