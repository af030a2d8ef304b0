"""The approval gate's pure parts: when a run waits for a person, what they read, what their answer records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pipelines.core import approval
from pipelines.core.spec import Promotion
from pipelines.ml.metrics import comparison, worse_slices
from pipelines.steps.evaluate import approval_facts

PASSED = {"passed": True, "primary_metric": "roc_auc", "reasons": ["roc_auc 0.8100 meets the minimum 0.6000"]}


def evaluation(gain: float | None = 0.02, worse: list[dict[str, Any]] | None = None, passed: bool = True) -> dict:
    comp = None
    if gain is not None:
        comp = {
            "metric": "roc_auc",
            "challenger": 0.80 + gain,
            "champion": 0.80,
            "gain": gain,
            "lower": gain - 0.01,
            "upper": gain + 0.01,
            "confidence": 0.95,
        }
    return {
        "verdict": {**PASSED, "passed": passed},
        "primary": 0.80 + (gain or 0),
        "champion_version": 3 if gain is not None else None,
        "comparison": comp,
        "worse_slices": worse or [],
    }


WORSE = [{"slice": "plan=basic", "challenger": 0.70, "champion": 0.74, "gain": -0.04}]


def test_manual_always_asks_a_person_unless_the_gates_already_refused() -> None:
    manual = Promotion(approval="manual")
    assert approval.plan(manual, evaluation()) == approval.Plan(True, ["promotion.approval is manual"])
    refused = approval.plan(manual, evaluation(passed=False))
    assert not refused.ask and "failed its gates" in refused.why[0]


def test_auto_asks_a_person_only_when_a_manual_when_condition_holds_and_says_why_it_went_on() -> None:
    gated = Promotion(manual_when={"primary_gain_below": 0.01, "slice_worse": True, "slice_margin": 0.02})
    small = approval.plan(gated, evaluation(gain=0.005))
    assert small.ask and small.why == ["roc_auc gained +0.0050, below +0.0100 (manual_when.primary_gain_below)"]
    sliced = approval.plan(gated, evaluation(gain=0.05, worse=WORSE))
    assert sliced.ask and sliced.why == ["worse than the champion on plan=basic (-0.0400) (manual_when.slice_worse)"]
    within = [{**WORSE[0], "gain": -0.01}]  # inside the margin
    went_on = approval.plan(gated, evaluation(gain=0.05, worse=within))
    assert not went_on.ask
    assert went_on.why == [
        "no promotion.manual_when condition holds: the primary metric gained at least +0.0100 (or no champion); "
        "no slice worse than the champion's by more than 0.0200"
    ]
    first = Promotion(manual_when={"first_model": True})
    assert approval.plan(first, evaluation(gain=None)).ask
    assert not approval.plan(first, evaluation(gain=0.0)).ask
    assert not approval.plan(Promotion(manual_when={"primary_gain_below": 0.01}), evaluation(gain=None)).ask


def test_asks_for_approval_decides_the_dag_shape() -> None:
    assert not Promotion().asks_for_approval()
    assert Promotion(approval="manual").asks_for_approval()
    assert Promotion(manual_when={"slice_worse": True}).asks_for_approval()


def test_the_body_has_the_primary_metric_with_its_interval_the_gates_the_worse_slices_and_the_report() -> None:
    text = approval.body(evaluation(gain=0.02, worse=WORSE), ["promotion.approval is manual"], "/r/x", 72)
    assert "| roc_auc | champion v3 | challenger |" in text
    assert "| test set | 0.8000 | 0.8200 |" in text
    assert "Gain +0.0200, 95% CI [+0.0100, +0.0300]" in text
    assert "- roc_auc 0.8100 meets the minimum 0.6000" in text
    assert "- plan=basic: 0.7400 -> 0.7000 (-0.0400)" in text
    assert "[Evaluation report](/r/x)" in text and "No answer within 72 h rejects." in text
    first = approval.body(evaluation(gain=None), ["promotion.approval is manual"], "/r/x", 1.5)
    assert "No champion yet: the challenger's roc_auc is 0.8000." in first
    assert "**Slices worse than the champion:** none" in first


def response(option: str, reason: str = "", user: dict[str, str] | None = None, timedout: bool = False) -> dict:
    return {
        "chosen_options": [option],
        "params_input": {"reason": reason},
        "responded_at": datetime.now(UTC),
        "responded_by_user": user,
        "timedout": timedout,
    }


def test_an_answer_is_audited_with_the_airflow_user_and_the_reason_and_a_timeout_as_a_reject() -> None:
    alice = {"id": "7", "name": "alice"}
    ok = approval.decision_event("churn", "r1", response("Approve", "looks right", alice), 72)
    assert (ok.action, ok.actor, ok.actor_kind, ok.reason, ok.run_id) == (
        "approve",
        "alice",
        "user",
        "looks right",
        "r1",
    )
    no = approval.decision_event("churn", "r1", response("Reject", "", alice), 72)
    assert (no.action, no.reason) == ("reject", approval.NO_REASON)
    late = approval.decision_event("churn", "r1", response("Reject", "", None, timedout=True), 72)
    assert (late.action, late.actor_kind) == ("reject", "lifecycle")
    assert late.reason == "no decision within 72 h (promotion.approval_timeout_h)"


def test_the_evaluation_names_the_comparison_and_the_slices_that_got_worse_with_positive_as_better() -> None:
    diff = {"difference": -0.5, "lower": -0.9, "upper": -0.1, "confidence": 0.9, "samples": 100.0}
    comp = comparison("rmse", {"rmse": 9.5}, {"rmse": 10.0}, diff)  # lower is better: a gain of 0.5
    assert comp == {
        "metric": "rmse",
        "challenger": 9.5,
        "champion": 10.0,
        "gain": 0.5,
        "lower": pytest.approx(0.1),
        "upper": pytest.approx(0.9),
        "confidence": 0.9,
    }
    new = {"plan": {"basic": {"roc_auc": 0.70, "rows": 40.0}, "pro": {"roc_auc": 0.90, "rows": 40.0}}}
    old = {"plan": {"basic": {"roc_auc": 0.74, "rows": 40.0}, "pro": {"roc_auc": 0.85, "rows": 40.0}}}
    assert worse_slices("roc_auc", new, old) == [
        {"slice": "plan=basic", "challenger": 0.70, "champion": 0.74, "gain": pytest.approx(-0.04)}
    ]
    report = {
        "challenger": {"metrics": {"roc_auc": 0.8}, "slices": new},
        "champion": {"metrics": {"roc_auc": 0.79}, "slices": old},
        "difference": {"difference": 0.01, "lower": -0.01, "upper": 0.03, "confidence": 0.95},
    }
    facts = approval_facts("roc_auc", report)
    assert facts["comparison"]["gain"] == pytest.approx(0.01) and len(facts["worse_slices"]) == 1
    assert approval_facts("roc_auc", {**report, "champion": None, "difference": None}) == {
        "comparison": None,
        "worse_slices": [],
    }


def test_an_approval_is_waiting_only_while_its_task_is_parked_for_an_answer() -> None:
    """An answer to a request whose task is not parked (starting, or between tries) would be reset
    when the task asks again: the API and the page offer only `waiting` ones."""
    from datetime import UTC, datetime, timedelta

    from mlcycle_approvals import SETTLE_S, state_of

    t = datetime(2026, 12, 7, 9, 29, 56, tzinfo=UTC)
    later = t + timedelta(seconds=SETTLE_S)
    asked = {
        "responded_at": None,
        "responded_by": None,
        "chosen_options": None,
        "created_at": t.isoformat(),
        "parked_at": t.isoformat(),
    }
    assert state_of({**asked, "task_state": "awaiting_input"}, later) == "waiting"
    assert state_of({**asked, "task_state": "up_for_retry"}, later) == "pending"
    # parked a second ago: not yet (the scheduler may not have read the parking process's exit, and
    # an answer now would be lost to a retry of the resumed task)
    assert state_of({**asked, "task_state": "awaiting_input"}, t + timedelta(seconds=1)) == "pending"
    # a second try parks under the first's request (Airflow keeps one per task instance): its own start counts
    retried = {**asked, "task_state": "awaiting_input", "parked_at": (t + timedelta(minutes=2)).isoformat()}
    assert state_of(retried, later + timedelta(minutes=2)) == "waiting"
    assert state_of(retried, t + timedelta(minutes=2, seconds=1)) == "pending"
    answered = {"responded_at": "t", "task_state": "success", "created_at": t.isoformat(), "parked_at": t.isoformat()}
    assert state_of({**answered, "responded_by": "admin", "chosen_options": ["Approve"]}, t) == "approved"
    assert state_of({**answered, "responded_by": "admin", "chosen_options": ["Reject"]}, t) == "rejected"
    assert state_of({**answered, "responded_by": None, "chosen_options": ["Reject"]}, t) == "timed_out"
