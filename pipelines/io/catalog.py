"""What the platform API (`/api/ml/*`, served by the mlcycle Airflow plugin) answers: pipelines,
their model versions with lineage, drift history, the canary's walk, and the trace of one served
prediction; and what the mlcycle page draws (drift per feature over time, the live metric).

Every answer comes from the platform's own records (the database, MLflow's registry): a
prediction's request id leads to the model version that answered, its MLflow run, the lifecycle
run that trained it, the data hash of its snapshot and the validation report of that data.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.core.errors import SpecError
from pipelines.core.resources import page_of
from pipelines.core.settings import Settings, spec_for
from pipelines.core.steps import BY_NAME, dag_of_run, report_url
from pipelines.io import audit
from pipelines.io.db import connect, fetch_dicts
from pipelines.io.registry import model_name
from pipelines.io.status import pipeline_status
from pipelines.io.storage import open_storage, read_json, run_key
from pipelines.io.tracking import setup_mlflow
from pipelines.ml.labels import decode_label

MIN_LIVE_LABELS = 30
"""Labelled predictions a live figure needs (of both classes for a binary label), as the drift check."""
AUDIT_ON_PAGE = 20
"""The audit events the mlcycle page shows (newest first; `mlcycle audit` and the API have them all)."""


def page(items: list[Any], limit: int, offset: int) -> dict[str, Any]:
    """One page of a list, with the total and the next offset (None on the last page). Pure."""
    return page_of(items[offset : offset + limit], len(items), limit, offset)


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


def pipeline_detail(settings: Settings, pipeline: str, live: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Champion, challenger, the last runs, the last drift verdict and the live metric (the last
    of `live`, the live metric's history, read here unless the caller has it)."""
    out = pipeline_status(settings, pipeline)
    checks = drift_history(settings, pipeline)
    out["last_drift_check"] = checks[0] if checks else None
    live = live_metric_history(settings, pipeline) if live is None else live
    out["live_metric"] = last_of_version(live, out["champion"]["version"] if out["champion"] else None)
    out["canary"] = last_canary(settings, pipeline)
    return out


def overview(settings: Settings, pipeline: str) -> dict[str, Any]:
    """What the mlcycle page shows of a pipeline: its detail, versions, live metric over time,
    drift per feature, and its last runs' steps and links."""
    live = live_metric_history(settings, pipeline)
    detail = pipeline_detail(settings, pipeline, live)
    champion = detail["champion"]["version"] if detail["champion"] else None
    figure = detail["champion"].get("metric") if detail["champion"] else None
    return {
        "detail": detail,
        "versions": model_versions(settings, pipeline),
        "live": live,
        "champion_live": champion_live(settings, pipeline, champion, figure=figure) if champion is not None else None,
        "drift": drift_by_feature(settings, pipeline),
        "runs": run_steps_overview(settings, pipeline, [r["run_id"] for r in detail["runs"]]),
        "audit": audit.events(settings, pipeline, limit=AUDIT_ON_PAGE),
    }


def last_of_version(live: list[dict[str, Any]], version: int | None) -> dict[str, Any] | None:
    """The latest point of `live` (oldest first) that scored `version`: the pipeline's live metric
    is its champion's, never a retired version's. Pure."""
    mine = [p for p in live if version is not None and int(p["version"]) == version]
    return mine[-1] if mine else None


def live_figure(
    rows: list[tuple[int, Any, float]],
    metric: str,
    kind: str,
    score: Any,
    need: int = MIN_LIVE_LABELS,
    where: str = "",
) -> dict[str, Any]:
    """A version's live metric on its labelled predictions `rows` (version, score, label): the
    value (`score(y, p)`, the spec's primary metric), or None with why (`where` says which
    predictions: " in the last 24 h"), where there are fewer than `need` (or one class only, for a
    binary label). Pure."""
    import numpy as np

    y = np.array([r[2] for r in rows], dtype=float)
    out: dict[str, Any] = {"metric": metric, "rows": len(rows), "need": need, "value": None, "short": None}
    if len(rows) < need:
        out["short"] = f"{len(rows)} labelled predictions{where}, a figure needs {need}"
    elif kind == "binary" and len(np.unique(y)) < 2:
        out["short"] = f"{len(rows)} labelled predictions{where}, all of one class: a figure needs both"
    else:
        out["value"] = float(score(y, np.array([r[1] for r in rows], dtype=float)))
    return out


def champion_live(
    settings: Settings, pipeline: str, version: int, now: datetime | None = None, figure: str | None = None
) -> dict[str, Any] | None:
    """The champion's live metric now, on the labels that arrived for its predictions of the drift
    window (served, or published by a batch run whose `as_of` is in the window; `drift.window_hours`,
    as its next drift check will compute it), so the page shows the
    current champion's figure before a drift check has scored it, on the metric of its `figure` (its
    `mlcycle.primary_metric` tag) where given. None where the spec is gone."""
    from pipelines.io.requestlog import decided_at, labelled  # numpy, through the A/B comparison
    from pipelines.ml.metrics import live_metric

    try:
        spec = spec_for(settings, pipeline)
    except SpecError:
        return None
    if figure:  # judged as it was promoted (pr_auc for a rare positive class, by default)
        spec = spec.model_copy(update={"evaluation": spec.evaluation.judged_by(figure)})
    end = now or datetime.now(UTC)
    start = end - timedelta(hours=spec.drift.window_hours)
    rows = labelled(settings, pipeline, [version], since=start, until=end, batch=True)
    score = live_metric(spec.evaluation, spec.label.kind, decided_at(settings, spec, [version]).get(version))
    where = f" in the last {spec.drift.window_hours:g} h"
    live = live_figure(rows, spec.evaluation.primary_metric, spec.label.kind, score, where=where)
    return {**live, "version": version, "at": end.isoformat(), "window_hours": spec.drift.window_hours}


def canary_state(status: str, report: dict[str, Any]) -> dict[str, Any]:
    """Where a canary stands from its step's status and report: the outcome and the traffic
    weights per version it left (or, while it runs, of its last recorded step). Pure."""
    champion, challenger = report.get("champion"), report.get("challenger")
    steps = report.get("steps", [])
    outcome = report.get("outcome") or ("running" if status == "running" else status)
    if outcome == "promoted":
        weights = {str(challenger): 100.0}
    elif outcome in ("deployed", "rolled_back") or not steps:
        weights = {str(champion): 100.0} if champion is not None else {}
    else:
        percent = float(steps[-1]["percent"])
        weights = {str(champion): 100.0 - percent, str(challenger): percent}
    return {"outcome": outcome, "reason": report.get("reason"), "weights": weights}


def last_canary(settings: Settings, pipeline: str) -> dict[str, Any] | None:
    """The pipeline's latest canary: its outcome, the weights it left, and its walk (each step's
    challenger share, decision, time and figures), from the step's record and report."""
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT run_id, status, started_at FROM step_runs WHERE pipeline = %s AND step = 'canary'"
            " AND status <> 'skipped' ORDER BY started_at DESC, attempt DESC LIMIT 1",
            (pipeline,),
        ).fetchone()
    if row is None:
        return None
    run_id, status, started = row
    storage = open_storage(settings)
    key = run_key(pipeline, run_id, "canary", "report.json")
    report = json.loads(storage.read_bytes(key)) if storage.exists(key) else {}
    return {
        "run_id": run_id,
        "status": status,
        "started": started.isoformat(),
        "champion": report.get("champion"),
        "challenger": report.get("challenger"),
        **canary_state(status, report),
        "steps": [
            {k: step.get(k) for k in ("percent", "decision", "reasons", "seconds", "figures")}
            for step in report.get("steps", [])
        ],
    }


def drift_matrix(
    rows: list[tuple[Any, ...]], judged: dict[str, dict[str, dict[str, Any]]] | None = None
) -> dict[str, Any]:
    """Per feature, its PSI at each drift check, oldest check first, and how the check judged it:
    `rows` are (check run id, window end, status, feature, psi), ordered by window end; `judged`
    is, per check, `judged_features` of its manifest (a check without one judged nothing we can
    read: None in its cells). Pure."""
    checks: dict[str, dict[str, Any]] = {}
    values: dict[str, dict[str, float | None]] = {}
    for run_id, at, status, feature, value in rows:
        checks.setdefault(run_id, {"run_id": run_id, "at": at.isoformat(), "status": status})
        values.setdefault(feature, {})[run_id] = value
    order = list(checks)
    judged = judged or {}
    return {
        "checks": list(checks.values()),
        "features": {f: [v.get(r) for r in order] for f, v in sorted(values.items())},
        "judged": {f: [judged.get(r, {}).get(f) for r in order] for f in sorted(values)},
    }


def judged_features(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per feature, what a drift check decided (its manifest's `features`): `drifted` (Evidently's
    test failed, or the PSI passed the spec's `drift.psi_threshold`, as the check applied them),
    and Evidently's test (method, score, threshold, whether it failed). Pure."""
    out = {}
    for feature, fig in (manifest.get("features") or {}).items():
        if not isinstance(fig, dict) or "drifted" not in fig:
            continue
        evidently = fig.get("evidently") or {}
        out[feature] = {
            "drifted": bool(fig["drifted"]),
            "evidently": {k: evidently.get(k) for k in ("method", "score", "threshold", "drifted")},
        }
    return out


def drift_by_feature(settings: Settings, pipeline: str, checks: int = 12) -> dict[str, Any]:
    """The PSI of every feature over the pipeline's last `checks` drift checks, and each check's
    judgement of each feature (from the check's manifest)."""
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT d.run_id, d.window_end, d.status, m.feature, m.value FROM drift_checks d"
            " JOIN model_performance_metrics m ON m.pipeline = d.pipeline AND m.run_id = d.run_id"
            " WHERE d.pipeline = %s AND m.metric = 'psi' AND m.feature IS NOT NULL AND d.run_id IN"
            " (SELECT run_id FROM drift_checks WHERE pipeline = %s ORDER BY window_end DESC LIMIT %s)"
            " ORDER BY d.window_end, m.feature",
            (pipeline, pipeline, checks),
        ).fetchall()
    storage = open_storage(settings)
    judged = {}
    for run_id in dict.fromkeys(r[0] for r in rows):
        key = run_key(pipeline, run_id, "drift", "manifest.json")
        if storage.exists(key):
            judged[run_id] = judged_features(read_json(storage, key))
    return drift_matrix(rows, judged)


def records(settings: Settings, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The rows of a query as dicts, times in ISO 8601 (as the API answers them)."""
    with connect(settings) as conn:
        rows = fetch_dicts(conn, query, params)
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()} for row in rows]


def live_metric_history(settings: Settings, pipeline: str) -> list[dict[str, Any]]:
    """The served champion's primary metric on labelled predictions at each drift check, oldest first."""
    rows = records(
        settings,
        "SELECT model_version AS version, metric, value, rows, window_end AS at FROM model_performance_metrics"
        " WHERE pipeline = %s AND feature IS NULL AND metric LIKE 'live\\_%%' ORDER BY window_end",
        (pipeline,),
    )
    return [{**r, "metric": r["metric"].removeprefix("live_")} for r in rows]


def run_steps_overview(settings: Settings, pipeline: str, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per run, each step's latest status and the links its record allows: the report page of a
    step that ran, and the MLflow run of training."""
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (run_id, step) run_id, step, status, outputs->>'mlflow_run_id',"
            " outputs->>'mlflow_experiment_id' FROM step_runs WHERE pipeline = %s AND run_id = ANY(%s)"
            " ORDER BY run_id, step, attempt DESC",
            (pipeline, run_ids),
        ).fetchall()
    out: dict[str, dict[str, Any]] = {r: {"steps": {}, "reports": {}, "mlflow": None} for r in run_ids}
    for run_id, step, status, mlflow_run, experiment in rows:
        out[run_id]["steps"][step] = status
        if step == "train" and mlflow_run and experiment:
            out[run_id]["mlflow"] = {"mlflow_run_id": mlflow_run, "mlflow_experiment_id": experiment}
    for run_id, entry in out.items():
        entry["dag_id"] = dag_of_run(pipeline, set(entry["steps"]))
        entry["reports"] = {
            step: report_url(entry["dag_id"], run_id, step)
            for step, status in entry["steps"].items()
            if BY_NAME[step].report is not None and status in ("succeeded", "failed", "reused")
        }
    return out


def drift_history(settings: Settings, pipeline: str) -> list[dict[str, Any]]:
    """The pipeline's drift checks, newest first."""
    return records(
        settings,
        "SELECT run_id, model_version, window_start, window_end, requests, status, retrain, reasons"
        " FROM drift_checks WHERE pipeline = %s ORDER BY window_end DESC",
        (pipeline,),
    )


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
            " l.label, r.predicted_class FROM inference_requests r LEFT JOIN labels l"
            " ON l.pipeline = r.pipeline AND l.request_id = r.request_id AND l.entity_id = r.entity_id"
            " WHERE r.request_id = %s ORDER BY r.shadow, r.entity_id",
            (key,),
        ).fetchall()
    rows = [r for r in rows if r[0] in allowed]
    if not rows:
        return None
    registered: dict[str, dict[int, dict[str, Any]]] = {}  # per pipeline, read once
    classes: dict[str, list[str]] = {}
    out = []
    for pipeline, version, entity, score, status, shadow, at, label, predicted in rows:
        if pipeline not in registered:
            registered[pipeline] = {v["version"]: v for v in model_versions(settings, pipeline)}
            classes[pipeline] = spec_classes(settings, pipeline)
        answer = {
            "pipeline": pipeline,
            "entity_id": entity,
            "score": score,
            "status": status,
            "shadow": shadow,
            "served_at": at.isoformat(),
            "label": label if label is None else decode_label(label, classes[pipeline]),
            "model": registered[pipeline].get(version, {"version": version, "lineage": None}),
        }
        if predicted is not None:  # a multiclass model's class, a binary one's decision (1 or 0, as served)
            answer["class"] = predicted if classes[pipeline] else int(predicted)
        out.append(answer)
    return out


def spec_classes(settings: Settings, pipeline: str) -> list[str]:
    """A pipeline's classes (a multiclass label's), none where its spec is gone or has none."""
    try:
        return spec_for(settings, pipeline).classes
    except SpecError:
        return []
