"""The approval gate: whether a run waits for a person, what the person reads, and what their
answer records. Pure.

The lifecycle DAG has an `approval` task between `evaluate` and `promote` when the spec asks for
one (`promotion.approval: manual`, or `auto` with `manual_when` conditions). The task reads the
evaluation's result and either goes on by itself, saying why, or waits in Airflow's "Required
actions" (the standard provider's `ApprovalOperator`) with the summary below as its body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.core.audit import AuditEvent

if TYPE_CHECKING:
    from pipelines.core.spec import Promotion

TASK_ID = "approval"
APPROVE, REJECT = "Approve", "Reject"  # the options of Airflow's ApprovalOperator
NO_REASON = "(no reason given)"


@dataclass(frozen=True)
class Plan:
    """Whether a person decides, and why (or why not): the task's log and result say it."""

    ask: bool
    why: list[str]


def plan(promotion: Promotion, evaluation: dict[str, Any]) -> Plan:
    """Whether the run waits for a person, from the spec's `promotion` and evaluate's result."""
    if not (evaluation.get("verdict") or {}).get("passed"):
        return Plan(False, ["the challenger failed its gates: promote skips it, no one needs to decide"])
    if promotion.approval == "manual":
        return Plan(True, ["promotion.approval is manual"])
    held = conditions_held(promotion, evaluation)
    if held:
        return Plan(True, held)
    return Plan(False, ["no promotion.manual_when condition holds: " + "; ".join(conditions_checked(promotion))])


def conditions_held(promotion: Promotion, evaluation: dict[str, Any]) -> list[str]:
    """The `manual_when` conditions that hold for this evaluation, each as a sentence."""
    when = promotion.manual_when
    comparison = evaluation.get("comparison")
    held = []
    if when.first_model and evaluation.get("champion_version") is None:
        held.append("first model: there is no champion yet (manual_when.first_model)")
    if when.primary_gain_below is not None and comparison is not None and comparison["gain"] < when.primary_gain_below:
        held.append(
            f"{comparison['metric']} gained {comparison['gain']:+.4f}, below "
            f"{when.primary_gain_below:+.4f} (manual_when.primary_gain_below)"
        )
    if when.slice_worse:
        worse = [s for s in evaluation.get("worse_slices") or [] if -s["gain"] > when.slice_margin]
        if worse:
            names = ", ".join(f"{s['slice']} ({s['gain']:+.4f})" for s in worse)
            held.append(f"worse than the champion on {names} (manual_when.slice_worse)")
    return held


def conditions_checked(promotion: Promotion) -> list[str]:
    """The conditions an auto run was checked against, for the log of one that goes on."""
    when = promotion.manual_when
    checked = []
    if when.first_model:
        checked.append("a champion exists")
    if when.primary_gain_below is not None:
        checked.append(f"the primary metric gained at least {when.primary_gain_below:+.4f} (or no champion)")
    if when.slice_worse:
        checked.append(f"no slice worse than the champion's by more than {when.slice_margin:.4f}")
    return checked


def subject(pipeline: str, run_id: str) -> str:
    return f"Promote {pipeline}'s challenger of run {run_id}?"


def body(evaluation: dict[str, Any], why: list[str], report_link: str, timeout_h: float) -> str:
    """The approval's body (Markdown): the primary metric champion against challenger with its
    interval, the gates, the slices that got worse, the report link, and what each answer does."""
    lines = ["**Why a person decides:** " + "; ".join(why), ""]
    comparison = evaluation.get("comparison")
    metric = (evaluation.get("verdict") or {}).get("primary_metric", "primary metric")
    if comparison is not None:
        lines += [
            f"| {metric} | champion v{evaluation.get('champion_version')} | challenger |",
            "| --- | --- | --- |",
            f"| test set | {comparison['champion']:.4f} | {comparison['challenger']:.4f} |",
            "",
            f"Gain {comparison['gain']:+.4f}, {comparison['confidence']:.0%} CI "
            f"[{comparison['lower']:+.4f}, {comparison['upper']:+.4f}] (positive is better).",
        ]
    else:
        lines.append(f"No champion yet: the challenger's {metric} is {evaluation.get('primary', float('nan')):.4f}.")
    lines += ["", "**Gates:**", *[f"- {r}" for r in (evaluation.get("verdict") or {}).get("reasons", [])], ""]
    worse = evaluation.get("worse_slices") or []
    if worse:
        lines.append("**Slices worse than the champion:**")
        lines += [f"- {s['slice']}: {s['champion']:.4f} -> {s['challenger']:.4f} ({s['gain']:+.4f})" for s in worse]
    else:
        lines.append("**Slices worse than the champion:** none")
    lines += [
        "",
        f"[Evaluation report]({report_link})",
        "",
        f"**{APPROVE}**: promote runs (then the canary). **{REJECT}**: promote and the canary skip; write the "
        f"reason. No answer within {timeout_h:g} h rejects.",
    ]
    return "\n".join(lines)


def decision_event(pipeline: str, run_id: str, response: dict[str, Any], timeout_h: float) -> AuditEvent:
    """The audit event of a person's answer (`execute_complete`'s event), or of the timeout's reject."""
    chosen = list(response.get("chosen_options") or [])
    action = "approve" if chosen == [APPROVE] else "reject"
    reason = str((response.get("params_input") or {}).get("reason") or "").strip()
    user = response.get("responded_by_user")
    if response.get("timedout") or not user:
        return AuditEvent(
            actor="lifecycle",
            actor_kind="lifecycle",
            action="reject",
            pipeline=pipeline,
            run_id=run_id,
            reason=f"no decision within {timeout_h:g} h (promotion.approval_timeout_h)",
            detail={"timedout": True},
        )
    return AuditEvent(
        actor=str(user.get("name") or user.get("id")),
        actor_kind="user",
        action=action,
        pipeline=pipeline,
        run_id=run_id,
        reason=reason or NO_REASON,
        detail={"user_id": str(user.get("id", "")), "via": "airflow_hitl"},
    )


def auto_event(pipeline: str, run_id: str, decided: Plan) -> AuditEvent:
    """The audit event of an approval that went on by itself (no condition for a person held)."""
    return AuditEvent(
        actor="lifecycle",
        actor_kind="lifecycle",
        action="approve",
        pipeline=pipeline,
        run_id=run_id,
        reason="; ".join(decided.why),
        detail={"auto": True},
    )
