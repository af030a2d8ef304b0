"""The `step_runs` table: every attempt of every step, with its outcome and outputs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pipelines.core.errors import ServiceUnavailable, redact
from pipelines.core.settings import Settings
from pipelines.core.spec import SPLITS
from pipelines.core.steps import STEP_NAMES
from pipelines.io.db import connect
from pipelines.io.storage import to_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """One attempt of one step of one run."""

    pipeline: str
    run_id: str
    step: str
    number: int
    worker: int | None = None


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: `succeeded`, `reused`, `skipped` or `failed`."""

    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class StepRow:
    """The latest attempt of a step, as `mlcycle runs show` prints it."""

    step: str
    status: str
    attempt: int
    took: timedelta | None
    outputs: dict[str, Any]
    error: str | None = None


LOST = "ended without recording its outcome (killed: SIGKILL, out of memory, a lost node)"


def start_attempt(settings: Settings, pipeline: str, run_id: str, step: str, worker: int | None = None) -> Attempt:
    """Record a new attempt (numbered after the earlier ones of the same step) as running; an
    earlier attempt of the same step (and trial worker) still `running` never recorded how it
    ended: it is marked `interrupted`, this attempt taking over."""
    with connect(settings) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{pipeline}/{run_id}/{step}",))
        row = conn.execute(
            "SELECT coalesce(max(attempt), 0) + 1 FROM step_runs WHERE pipeline=%s AND run_id=%s AND step=%s",
            (pipeline, run_id, step),
        ).fetchone()
        number = int(row[0]) if row else 1
        _interrupt(conn, pipeline, run_id, step, worker, f"{LOST}; attempt {number} took over")
        conn.execute(
            "INSERT INTO step_runs (pipeline, run_id, step, status, attempt, worker)"
            " VALUES (%s, %s, %s, 'running', %s, %s)",
            (pipeline, run_id, step, number, worker),
        )
    return Attempt(pipeline, run_id, step, number, worker)


def interrupt_running(
    settings: Settings, pipeline: str, run_id: str, step: str, worker: int | None, reason: str
) -> int:
    """Mark the attempts of a step (and trial worker) still `running` as `interrupted`: called by
    the operator once the step's process has ended, so a no-op when the step recorded its outcome.
    Returns how many it marked. Bounded: a database out of reach must not hold up the task's retry."""
    with connect(settings, timeout_s=10) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{pipeline}/{run_id}/{step}",))
        return _interrupt(conn, pipeline, run_id, step, worker, reason)


def _interrupt(conn: Any, pipeline: str, run_id: str, step: str, worker: int | None, reason: str) -> int:
    cur = conn.execute(
        "UPDATE step_runs SET status='interrupted', finished_at=now(), error=%s"
        " WHERE pipeline=%s AND run_id=%s AND step=%s AND worker IS NOT DISTINCT FROM %s AND status='running'",
        (reason, pipeline, run_id, step, worker),
    )
    return int(cur.rowcount)


RECORD_TRIES = 6
"""Tries to record an outcome, 1 s apart and doubling: a PostgreSQL restart (~10 s) is waited out."""


def finish_attempt(settings: Settings, attempt: Attempt, outcome: Outcome, *, required: bool = True) -> None:
    """Record how an attempt ended. A required record (a success: what later steps and `runs
    show` read) is retried while the database is unreachable, then raises `ServiceUnavailable`, so
    the task fails and is retried (steps reuse their finished work) rather than showing success
    over a row left `running`. A failure's record is tried once, and whatever goes wrong is only
    logged: it must never hide the step's own error."""
    import psycopg  # heavy: psycopg

    where = f"{attempt.pipeline}/{attempt.run_id}/{attempt.step}"
    if not required:
        try:
            _record(settings, attempt, outcome)
        except Exception:
            log.exception("could not record the outcome of %s", where)
        return
    for tried in range(1, RECORD_TRIES + 1):
        try:
            _record(settings, attempt, outcome)
            return
        except psycopg.OperationalError as err:
            if tried == RECORD_TRIES:
                raise ServiceUnavailable(
                    f"{where}: the step {outcome.status} but its outcome could not be recorded "
                    f"(the platform database: {redact(str(err).strip())}); retry the task"
                ) from err
            log.warning("recording the outcome of %s: %s; try %d of %d", where, err, tried, RECORD_TRIES)
            time.sleep(min(2 ** (tried - 1), 8))


def _record(settings: Settings, attempt: Attempt, outcome: Outcome) -> None:
    with connect(settings) as conn:
        conn.execute(
            "UPDATE step_runs SET status=%s, finished_at=now(), outputs=%s, error=%s"
            " WHERE pipeline=%s AND run_id=%s AND step=%s AND attempt=%s",
            (
                outcome.status,
                to_json(outcome.outputs),
                outcome.error,
                attempt.pipeline,
                attempt.run_id,
                attempt.step,
                attempt.number,
            ),
        )


def step_outputs(settings: Settings, pipeline: str, run_id: str, step: str, worker: int | None) -> Any:
    """What the latest attempt of a step (and trial worker) that succeeded or reused its work
    recorded: the result it also wrote to MLCYCLE_XCOM_PATH. None when no attempt did. The
    kubernetes runtime reads a step pod's result here, so Airflow needs no `pods/exec` (the
    provider's XCom sidecar is read through it)."""
    with connect(settings, timeout_s=10) as conn:
        row = conn.execute(
            "SELECT outputs FROM step_runs WHERE pipeline=%s AND run_id=%s AND step=%s"
            " AND worker IS NOT DISTINCT FROM %s AND status IN ('succeeded', 'reused')"
            " ORDER BY attempt DESC LIMIT 1",
            (pipeline, run_id, step, worker),
        ).fetchone()
    return row[0] if row else None


def latest_run_id(settings: Settings, pipeline: str) -> str | None:
    """The run of a pipeline whose step started last, or None when it has none."""
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT run_id FROM step_runs WHERE pipeline=%s ORDER BY started_at DESC LIMIT 1", (pipeline,)
        ).fetchone()
    return str(row[0]) if row else None


def run_steps(settings: Settings, pipeline: str, run_id: str) -> list[StepRow]:
    """The latest attempt of each step of a run."""
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (step) step, status, attempt, finished_at - started_at, outputs, error"
            " FROM step_runs WHERE pipeline=%s AND run_id=%s ORDER BY step, attempt DESC",
            (pipeline, run_id),
        ).fetchall()
    return [StepRow(r[0], r[1], int(r[2]), r[3], r[4] or {}, r[5]) for r in rows]


def render_run(pipeline: str, run_id: str | None, rows: list[StepRow]) -> str:
    """A run's steps in lifecycle order, each with its status, time and where its outputs are. Pure."""
    if run_id is None:
        return f"no runs of {pipeline} yet"
    lines = [f"{pipeline} run {run_id}"]
    order = {s: i for i, s in enumerate(STEP_NAMES)}
    for row in sorted(rows, key=lambda r: order.get(r.step, len(order))):
        secs = f"{row.took.total_seconds():.1f}s" if row.took else "-"
        lines.append(f"  {row.step:<9} {row.status:<9} attempt {row.attempt}  {secs}")
        lines += [f"      {label}: {value}" for label, value in outputs_summary(row.step, row.outputs)]
        if row.error and row.status in ("failed", "interrupted"):
            lines.append(f"      error: {row.error}")
    return "\n".join(lines)


def outputs_summary(step: str, out: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) lines of where a step's outputs are and what it decided (none for an attempt
    that wrote none: running, failed, interrupted). Pure."""
    if not out:
        return []
    if list(out) == ["reason"]:  # a skipped step: why
        return [("reason", out["reason"])]
    if step == "ingest":
        return [("snapshot", out.get("snapshot")), ("rows", out.get("rows")), ("content hash", out.get("content_hash"))]
    if step == "validate":
        return [
            ("report", out.get("report_html")),
            ("quarantine", f"{out.get('quarantine')} ({out.get('bad_rows')} rows)"),
        ]
    if step == "features":
        splits = out.get("splits", {})
        return [(f"{n} set", f"{splits[n]['uri']} ({splits[n]['rows']} rows)") for n in SPLITS if n in splits]
    if step == "train":
        trials = out.get("trials", {})
        family = f" ({out['best_family']})" if out.get("best_family") else ""
        lines = [
            ("study", f"{out.get('study')} ({trials.get('complete', 0)} complete, {trials.get('pruned', 0)} pruned)"),
            ("best", f"trial {out.get('best_trial')}{family}: {out.get('metric')}={out.get('best_value', 0):.4f}"),
        ]
        families = out.get("families") or {}
        if len(families) > 1:
            lines.append(("families", family_line(families)))
        if out.get("ensemble"):
            lines.append(("ensemble", ensemble_line(out)))
        return [*lines, ("MLflow run", out.get("mlflow_run_id")), ("ONNX model", out.get("onnx"))]
    if step == "evaluate":
        verdict = out.get("verdict", {})
        return [
            ("verdict", "passed" if verdict.get("passed") else "failed"),
            *[("  reason", r) for r in verdict.get("reasons", [])],
            ("report", out.get("report")),
        ]
    if step == "promote":
        return [("model version", f"{out.get('model')} v{out.get('version')} aliases {out.get('aliases')}")]
    if step == "embed":
        space = f"v{out.get('version')}: {out.get('entities', out.get('rows'))} entities x {out.get('dimension')} dims"
        return [
            (
                "vector space",
                f"{space} ({out.get('distance')}), {out.get('state')}{', reused' if out.get('reused') else ''}",
            ),
            ("recall@10", f"{out.get('recall_at_10')} against exact search"),
        ]
    if step == "retention":
        return retention_lines(out)
    if "reason" in out:
        return [("reason", out["reason"])]
    return []


def retention_lines(out: dict[str, Any]) -> list[tuple[str, Any]]:
    """What a retention step removed, per kind. Pure."""
    log, labels, runs = out.get("request_log", {}), out.get("labels", {}), out.get("runs", {})
    return [
        (
            "request log",
            f"{len(log.get('partitions_dropped', []))} day partition(s) dropped, {log.get('rows', 0)} rows, "
            f"{log.get('bytes', 0)} bytes; {len(log.get('partitions_created', []))} made",
        ),
        (
            "labels",
            f"{labels.get('rows', 0)} rows, {labels.get('bytes', 0)} bytes (kept from {labels.get('kept_from')})",
        ),
        ("runs", f"{runs.get('folders', 0)} folder(s), {runs.get('objects', 0)} objects, {runs.get('bytes', 0)} bytes"),
    ]


def ensemble_line(out: dict[str, Any]) -> str:
    """`tabular_mlp x0.65, linear x0.30: roc_auc=0.8274 against 0.8264 alone (exported)`: the
    train step's ensemble of the family bests. Pure."""
    blend = out["ensemble"]
    weights = ", ".join(f"{f} x{w:.2f}" for f, w in blend["weights"].items())
    verdict = "exported" if blend["chosen"] else "not exported: the best alone is as good"
    return f"{weights}: {out.get('metric')}={blend['value']:.4f} against {blend['best_alone']:.4f} alone ({verdict})"


def family_line(families: dict[str, Any]) -> str:
    """`linear 8 trials best 0.8254 in 4s; lightgbm ...`: the train step's per-family figures. Pure."""
    parts = []
    for name, f in families.items():
        best = "-" if f.get("best") is None else f"{f['best']:.4f}"
        parts.append(f"{name} {f.get('trials', 0)} trials best {best} in {f.get('seconds', 0):.0f}s")
    return "; ".join(parts)


HEADLINE = {"ingest": "rows", "validate": "quarantine", "features": "train set", "train": "best", "evaluate": "verdict"}


def headline(step: str, out: dict[str, Any]) -> str:
    """A step's result in one line (the live view of `mlcycle run`). Pure."""
    if "outcome" in out:  # canary
        return f"{out['outcome']}: {out.get('reason', '')}".rstrip(": ")
    summary = dict(outputs_summary(step, out))
    if "reason" in summary:
        return f"skipped: {summary['reason']}"
    key = HEADLINE.get(step)
    if key in summary:
        return f"{key}: {summary[key]}"
    if summary:
        label, value = next(iter(summary.items()))
        return f"{label}: {value}"
    return ""
