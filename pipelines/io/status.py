"""`mlcycle status P`: the pipeline's champion and challenger and its last lifecycle runs."""

from __future__ import annotations

from typing import Any

from pipelines.core.settings import Settings
from pipelines.io.db import connect
from pipelines.io.registry import CHALLENGER, CHAMPION, alias_version, model_name
from pipelines.io.steering import current_pin
from pipelines.io.tracking import setup_mlflow


def pipeline_status(settings: Settings, pipeline: str, runs: int = 5) -> dict[str, Any]:
    import mlflow

    setup_mlflow(settings, pipeline)
    client = mlflow.MlflowClient()
    name = model_name(pipeline)
    models: dict[str, Any] = {}
    with connect(settings) as conn:
        for alias in (CHAMPION, CHALLENGER):
            mv = alias_version(client, name, alias)
            if mv is None:
                models[alias] = None
                continue
            row = conn.execute(
                "SELECT changed_at, actor FROM alias_audit WHERE model_name=%s AND alias=%s AND to_version=%s"
                " ORDER BY id DESC LIMIT 1",
                (name, alias, int(mv.version)),
            ).fetchone()
            models[alias] = {
                "version": int(mv.version),
                "metric": mv.tags.get("mlcycle.primary_metric"),
                "data_hash": mv.tags.get("mlcycle.data_hash"),
                "run_id": mv.tags.get("mlcycle.run_id"),
                "data_window": mv.tags.get("mlcycle.data_window"),
                "drift_check": mv.tags.get("mlcycle.drift_check"),
                "since": str(row[0]) if row else None,
                "by": row[1] if row else None,
            }
        recent = conn.execute(
            "SELECT run_id, min(started_at), string_agg(step || ':' || status, ' ' ORDER BY started_at, attempt),"
            " max(outputs->>'cause_line') FILTER (WHERE step = 'ingest'),"
            " max(outputs->>'reason') FILTER (WHERE step = 'promote' AND status = 'skipped'),"
            " max(outputs->>'reason') FILTER (WHERE step = 'canary' AND status = 'skipped')"
            " FROM step_runs WHERE pipeline=%s GROUP BY run_id ORDER BY min(started_at) DESC LIMIT %s",
            (pipeline, runs),
        ).fetchall()
    return {
        "pipeline": pipeline,
        "model": name,
        **models,
        "runs": [
            {"run_id": r, "started": str(t), "outcome": outcome(steps, skipped, held), "cause": cause}
            for r, t, steps, cause, skipped, held in recent
        ],
        "pin": _pin(settings, pipeline),
    }


def _pin(settings: Settings, pipeline: str) -> dict[str, Any] | None:
    pin = current_pin(settings, pipeline)
    if pin is None:
        return None
    return {"by": pin.by, "at": str(pin.at), "reason": pin.reason, "version": pin.version, "line": pin.line()}


def outcome(steps: str, promote_skipped: str | None = None, canary_skipped: str | None = None) -> str:
    """A run's outcome from its steps' latest statuses (`step:status ...`, oldest first) and, where
    promote was skipped, its reason (a dry run, or the gate); where the canary was (a pin, the
    champion moved by a person), its reason. Pure."""
    latest: dict[str, str] = {}
    for item in steps.split():
        step, _, status = item.partition(":")
        latest[step] = status
    if any(s == "failed" for s in latest.values()):
        failed = [k for k, v in latest.items() if v == "failed"]
        return f"failed at {failed[-1]}"
    if any(s == "running" for s in latest.values()):
        return "running"
    if latest.get("ingest") == "skipped":
        return "stopped: no new data"
    if latest.get("promote") == "skipped":
        dry = (promote_skipped or "").startswith("dry run")
        return "dry run: nothing registered" if dry else "rejected by the gate"
    if latest.get("canary") == "skipped" and canary_skipped:
        return f"champion kept: {canary_skipped}"
    last = list(latest)[-1] if latest else "-"
    return f"ok through {last}"


def render_status(status: dict[str, Any]) -> str:
    lines = [f"{status['pipeline']} ({status['model']})"]
    for alias in ("champion", "challenger"):
        m = status.get(alias)
        if m is None:
            lines.append(f"  {alias:<10} none")
        else:
            lines.append(
                f"  {alias:<10} v{m['version']}  {m['metric']}  data {str(m['data_hash'])[:19]}…  "
                f"since {m['since']}  (run {m['run_id']})"
            )
            if m.get("data_window"):
                lines.append(f"  {'':<10} data window {m['data_window']}")
            if m.get("drift_check"):
                lines.append(f"  {'':<10} retrained after drift check {m['drift_check']}")
    if status.get("pin"):
        lines.append(f"  {'pin':<10} {status['pin']['line']} (promotion frozen: runs train and evaluate)")
    lines.append("  last runs:")
    for r in status["runs"]:
        lines.append(f"    {r['started'][:19]}  {r['run_id']}  {r['outcome']}")
        if r.get("cause"):
            lines.append(f"      {r['cause']}")
    if not status["runs"]:
        lines.append("    none")
    return "\n".join(lines)
