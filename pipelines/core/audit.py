"""Who did what: the audit trail's vocabulary and its checks. Pure.

Every human action on a pipeline (trigger, approve, reject, rollback, pin, unpin, labels loaded,
a serving key created or revoked) and every alias move (by the lifecycle, or found made outside
mlcycle) is one `AuditEvent`; `pipelines.io.audit` stores and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.core.params import enum_name

ActorKind = Literal["user", "key", "lifecycle", "external"]

# action -> what it records (the page and `mlcycle audit` print these words)
ACTIONS: dict[str, str] = {
    "trigger": "a lifecycle run started by hand",
    "approve": "a challenger approved for promotion",
    "reject": "a challenger rejected (by a reviewer, or by the approval's timeout)",
    "rollback": "the champion moved back to an earlier version",
    "pin": "promotion frozen: runs train and evaluate, the champion stays",
    "unpin": "promotion allowed again",
    "labels_loaded": "ground-truth labels loaded for served requests",
    "key_created": "a serving key created",
    "key_revoked": "a serving key revoked",
    "alias": "a registry alias moved by the lifecycle",
    "external_alias": "a registry alias moved outside mlcycle (found by serve-sync)",
    "shadow_decision": "a shadow run's comparison decided",
}

MAX_REASON = 2000


class AuditError(ValueError):
    """An audit event that cannot be recorded as given."""


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    actor_kind: ActorKind
    action: str
    pipeline: str
    version: int | None = None
    run_id: str | None = None
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self)


def check(event: AuditEvent) -> None:
    """Refuse an event the table would refuse, with a reason a person can act on."""
    if event.action not in ACTIONS:
        raise AuditError(f"unknown audit action {event.action!r} (known: {', '.join(sorted(ACTIONS))})")
    if event.actor_kind not in ("user", "key", "lifecycle", "external"):
        raise AuditError(f"unknown actor kind {event.actor_kind!r}")
    if not event.actor.strip() or len(event.actor) > 200:
        raise AuditError("an audit event needs an actor (1-200 characters)")
    if not event.pipeline:
        raise AuditError("an audit event needs a pipeline")
    if len(event.reason) > MAX_REASON:
        raise AuditError(f"reason longer than {MAX_REASON} characters")


def require_reason(reason: str | None, action: str) -> str:
    """A human action that changes what serves (reject, rollback, pin) says why."""
    text = (reason or "").strip()
    if not text:
        raise AuditError(f"{action} needs a reason (--reason)")
    if len(text) > MAX_REASON:
        raise AuditError(f"reason longer than {MAX_REASON} characters")
    return text


LIFECYCLE_SUFFIX = "_lifecycle"
BATCH_SUFFIX = "_batch"


def manual_trigger(
    dag_id: str, run_id: str, run_type: object, user: str | None, triggered_by: object, conf: dict[str, Any] | None
) -> AuditEvent | None:
    """The `trigger` event of a lifecycle or batch run a person started (Airflow's UI, its REST API,
    the platform API, `mlcycle run` / `mlcycle batch run`), as the scheduler sees it start: None
    for a scheduled, asset- or backfill-made run, a run of another DAG, or one with no user on
    record. A batch run's event names its DAG, as the CLI's does. Pure."""
    suffix = next((s for s in (LIFECYCLE_SUFFIX, BATCH_SUFFIX) if dag_id.endswith(s)), None)
    if suffix is None or enum_name(run_type) != "manual" or not user:
        return None
    via = enum_name(triggered_by or "unknown")
    detail = {"conf": conf or {}, "via": via} | ({} if suffix == LIFECYCLE_SUFFIX else {"dag": dag_id})
    return AuditEvent(user[:200], "user", "trigger", dag_id.removesuffix(suffix), run_id=run_id, detail=detail)
