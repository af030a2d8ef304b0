"""What the platform API (`/api/ml/*`, served by the mlcycle Airflow plugin) answers: pipelines,
their model versions with lineage, drift history, and the trace of one served prediction.

Every answer comes from the platform's own records (the database, MLflow's registry): a
prediction's request id leads to the model version that answered, its MLflow run, the lifecycle
run that trained it, the data hash of its snapshot and the validation report of that data.
"""

from __future__ import annotations

import uuid
from typing import Any

from pipelines.core.settings import Settings
from pipelines.core.steps import report_url
from pipelines.io.db import connect, fetch_dicts
from pipelines.io.registry import model_name
from pipelines.io.status import pipeline_status
from pipelines.io.tracking import setup_mlflow


def page(items: list[Any], limit: int, offset: int) -> dict[str, Any]:
    """One page of a list, with the total and the next offset (None on the last page). Pure."""
    chunk = items[offset : offset + limit]
    following = offset + limit if offset + limit < len(items) else None
    return {"items": chunk, "total": len(items), "limit": limit, "offset": offset, "next_offset": following}


def version_record(pipeline: str, mv: Any, aliases: dict[str, Any]) -> dict[str, Any]:
    """A registered version as the API shows it: metrics, lineage, and the aliases (of the
    registered model's `alias -> version`) that point to it. Pure (on its fields)."""
    tags = dict(mv.tags or {})
    run_id = tags.get("mlcycle.run_id")
    return {
        "version": int(mv.version),
        "aliases": sorted(a for a, v in aliases.items() if int(v) == int(mv.version)),
        "created": int(mv.creation_timestamp or 0),
        "metric": tags.get("mlcycle.primary_metric"),
        "lineage": {
            "lifecycle_run": run_id,
            "mlflow_run": mv.run_id,
            "data_hash": tags.get("mlcycle.data_hash"),
            "data_window": tags.get("mlcycle.data_window"),
            "trigger": tags.get("mlcycle.trigger"),
            "drift_check": tags.get("mlcycle.drift_check"),
            "validation_report": report_url(f"{pipeline}_lifecycle", run_id, "validate") if run_id else None,
        },
    }


def model_versions(settings: Settings, pipeline: str) -> list[dict[str, Any]]:
    """Every registered version of the pipeline's model, newest first."""
    import mlflow

    setup_mlflow(settings, pipeline)
    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"name = '{model_name(pipeline)}'")
    if not found:
        return []
    aliases = dict(client.get_registered_model(model_name(pipeline)).aliases or {})  # search leaves them out
    return sorted((version_record(pipeline, mv, aliases) for mv in found), key=lambda v: -v["version"])


def pipeline_summary(settings: Settings, pipeline: str) -> dict[str, Any]:
    """A pipeline in the list: its champion and challenger versions and its last run."""
    status = pipeline_status(settings, pipeline, runs=1)
    return {
        "pipeline": pipeline,
        "model": status["model"],
        "champion": status["champion"]["version"] if status["champion"] else None,
        "challenger": status["challenger"]["version"] if status["challenger"] else None,
        "last_run": status["runs"][0] if status["runs"] else None,
    }


def pipeline_detail(settings: Settings, pipeline: str) -> dict[str, Any]:
    """Champion, challenger, the last runs, the last drift verdict and the live metric."""
    out = pipeline_status(settings, pipeline)
    checks = drift_history(settings, pipeline)
    out["last_drift_check"] = checks[0] if checks else None
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT metric, value, rows, computed_at FROM model_performance_metrics"
            " WHERE pipeline = %s AND feature IS NULL AND metric LIKE 'live_%%'"
            " ORDER BY computed_at DESC LIMIT 1",
            (pipeline,),
        ).fetchone()
    out["live_metric"] = {"metric": row[0], "value": row[1], "rows": row[2], "at": row[3].isoformat()} if row else None
    return out


def drift_history(settings: Settings, pipeline: str) -> list[dict[str, Any]]:
    """The pipeline's drift checks, newest first."""
    with connect(settings) as conn:
        rows = fetch_dicts(
            conn,
            "SELECT run_id, model_version, window_start, window_end, requests, status, retrain, reasons"
            " FROM drift_checks WHERE pipeline = %s ORDER BY window_end DESC",
            (pipeline,),
        )
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()} for row in rows]


def trace(settings: Settings, request_id: str, allowed: set[str]) -> list[dict[str, Any]] | None:
    """The traceability chain of a served prediction: per answer (version, entity) of the request,
    the model version, its MLflow run, the lifecycle run that trained it, that run's data hash and
    validation report, and the label when it arrived. None for an unknown (or unreadable) id;
    only pipelines in `allowed` are shown."""
    try:
        key = uuid.UUID(request_id)
    except ValueError:
        return None
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT r.pipeline, r.model_version, r.entity_id, r.score, r.status, r.shadow, r.created_at,"
            " l.label FROM inference_requests r LEFT JOIN labels l"
            " ON l.pipeline = r.pipeline AND l.request_id = r.request_id AND l.entity_id = r.entity_id"
            " WHERE r.request_id = %s ORDER BY r.shadow, r.entity_id",
            (key,),
        ).fetchall()
    rows = [r for r in rows if r[0] in allowed]
    if not rows:
        return None
    registered: dict[str, dict[int, dict[str, Any]]] = {}  # per pipeline, read once
    out = []
    for pipeline, version, entity, score, status, shadow, at, label in rows:
        if pipeline not in registered:
            registered[pipeline] = {v["version"]: v for v in model_versions(settings, pipeline)}
        out.append(
            {
                "pipeline": pipeline,
                "entity_id": entity,
                "score": score,
                "status": status,
                "shadow": shadow,
                "served_at": at.isoformat(),
                "label": label,
                "model": registered[pipeline].get(version, {"version": version, "lineage": None}),
            }
        )
    return out
