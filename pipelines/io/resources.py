"""The reads behind the platform API's resources: registered models and one version's lineage
(MLflow's registry, the run records, the audit trail), Optuna's studies (their tables in the
platform database's `optuna` schema, read with SQL: the api-server never imports Optuna), Feast's
feature views (its registry, imported only here, when asked) and each service's health, each probe
bounded. The shapes are `pipelines.core.resources`'."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any

from pipelines.core import resources
from pipelines.core.settings import Settings, spec_for
from pipelines.io import audit, catalog
from pipelines.io.db import connect
from pipelines.io.featurestore import feature_store  # imports Feast only when a store is opened
from pipelines.io.registry import FILES_TAG, model_name
from pipelines.io.storage import open_storage
from pipelines.io.tracking import setup_mlflow

PROBE_BOUND_S = 5.0
"""The longest `/health` waits for any one service (they are asked at once)."""


def registered_model(settings: Settings, pipeline: str) -> dict[str, Any]:
    """The pipeline's registered model: how many versions, the newest, where each alias points."""
    return resources.model_summary(pipeline, model_name(pipeline), catalog.model_versions(settings, pipeline))


def version_detail(settings: Settings, pipeline: str, version: int) -> dict[str, Any] | None:
    """One registered version's lineage: the registry's record and tags, its training run's
    metrics, its lifecycle run's steps and the audit events naming it. None: no such version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    setup_mlflow(settings, pipeline)
    client = mlflow.MlflowClient()
    name = model_name(pipeline)
    try:
        mv = client.get_model_version(name, str(version))
        aliases = dict(client.get_registered_model(name).aliases or {})
    except MlflowException:
        return None
    tags = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    if mv.run_id:
        try:
            metrics = dict(client.get_run(mv.run_id).data.metrics)
        except MlflowException:  # the run was deleted: the version still stands
            metrics = {}
    run_id = tags.get("mlcycle.run_id")
    with connect(settings) as conn:
        steps = conn.execute(
            "SELECT DISTINCT ON (step) step, status FROM step_runs WHERE pipeline = %s AND run_id = %s"
            " ORDER BY step, attempt DESC",
            (pipeline, run_id),
        ).fetchall()
    events = audit.events(settings, pipeline, limit=catalog.AUDIT_ON_PAGE * 25, version=version)
    record = catalog.version_record(pipeline, mv, aliases)
    out = resources.version_lineage(record, tags, metrics, steps, events, resources.file_digests(tags.get(FILES_TAG)))
    return {"pipeline": pipeline, "model": name, **out}


STUDIES = (
    "SELECT s.study_id, s.study_name, d.direction::text FROM optuna.studies s"
    " JOIN optuna.study_directions d ON d.study_id = s.study_id AND d.objective = 0"
    " WHERE split_part(s.study_name, ':', 1) = ANY(%s) ORDER BY s.study_id DESC LIMIT %s OFFSET %s"
)
COUNT_STUDIES = "SELECT count(*) FROM optuna.studies WHERE split_part(study_name, ':', 1) = ANY(%s)"
TRIALS = (
    "SELECT t.study_id, t.number, t.state::text, v.value, v.value_type::text, t.datetime_start, t.datetime_complete,"
    " (SELECT json_object_agg(a.key, a.value_json) FROM optuna.trial_user_attributes a WHERE a.trial_id = t.trial_id),"
    " (SELECT json_object_agg(p.param_name, p.param_value) FROM optuna.trial_params p WHERE p.trial_id = t.trial_id)"
    " FROM optuna.trials t LEFT JOIN optuna.trial_values v ON v.trial_id = t.trial_id AND v.objective = 0"
    " WHERE t.study_id = ANY(%s)"
)
TRIAL_ATTRS = ("mlflow_run_id", "family", "worker", "fail_reason", "warm_start", "elapsed_s")


TRAINING_RUNS = (
    "SELECT DISTINCT ON (pipeline, run_id) pipeline || ':' || run_id, outputs->>'mlflow_run_id' FROM step_runs"
    " WHERE step = 'train' AND pipeline || ':' || run_id = ANY(%s) AND outputs ? 'mlflow_run_id'"
    " ORDER BY pipeline, run_id, attempt DESC"
)


def studies(settings: Settings, pipelines: list[str], limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """A page of the Optuna studies of `pipelines`, newest first, each with its trials and the
    training step's MLflow run (paged in the database: a study per lifecycle run adds up); none
    where Optuna has not created its tables yet (no run trained)."""
    with connect(settings) as conn:
        if conn.execute("SELECT to_regclass('optuna.studies')").fetchone() in (None, (None,)):
            return resources.page_of([], 0, limit, offset)
        counted = conn.execute(COUNT_STUDIES, (pipelines,)).fetchone()
        found = conn.execute(STUDIES, (pipelines, limit, offset)).fetchall()
        ids, names = [r[0] for r in found], [r[1] for r in found]
        rows = conn.execute(TRIALS, (ids,)).fetchall() if ids else []
        runs = dict(conn.execute(TRAINING_RUNS, (names,)).fetchall()) if names else {}
    trials: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in rows:
        trials[row[0]].append(trial_row(*row[1:]))
    items = [resources.study_record(name, d, trials[i], runs.get(name)) for i, name, d in found]
    return resources.page_of(items, int(counted[0]) if counted else 0, limit, offset)


def trial_row(
    number: int, state: str, value: float | None, kind: str | None, start: Any, end: Any, attrs: Any, params: Any
) -> dict[str, Any]:
    """One trial from its row: number, state, value, params, times and the attributes the
    training step records (its MLflow run, family, worker, why it failed)."""
    import json

    found = {k: json.loads(v) for k, v in (attrs or {}).items()}
    return {
        "number": number,
        "state": state,
        "value": resources.trial_value(value, kind),
        "params": params or {},
        "started": resources.iso(start),
        "completed": resources.iso(end),
        **{k: found.get(k) for k in TRIAL_ATTRS},
    }


def feature_views(settings: Settings, pipeline: str, now: datetime | None = None) -> dict[str, Any]:
    """A pipeline's Feast objects from the registry: its feature views (entities, features, TTL,
    last materialization and freshness), its feature services (the views each reads), and the
    feature service each registered version reads."""
    spec = spec_for(settings, pipeline)
    moment = now or datetime.now(UTC)
    with feature_store(spec, settings) as store:
        views = [
            resources.feature_view_record(
                fv.name,
                sorted(fv.entities),
                [(f.name, str(f.dtype)) for f in fv.features],
                fv.ttl.total_seconds() if fv.ttl else None,
                bool(fv.online),
                list(fv.materialization_intervals),
                moment,
            )
            for fv in store.list_feature_views(allow_cache=False)
        ]
        services = [
            {"name": s.name, "feature_views": [p.name for p in s.feature_view_projections]}
            for s in store.list_feature_services()
        ]
    versions = catalog.model_versions(settings, pipeline)
    tags = version_tags(settings, pipeline)
    return {
        "pipeline": pipeline,
        "project": spec.name,
        "feature_service": spec.features.feature_service,
        "feature_views": sorted(views, key=lambda v: v["name"]),
        "feature_services": sorted(services, key=lambda s: s["name"]),
        "versions": resources.services_per_version(versions, tags),
    }


def version_tags(settings: Settings, pipeline: str) -> dict[int, dict[str, str]]:
    """Each registered version's tags."""
    import mlflow

    setup_mlflow(settings, pipeline)
    found = mlflow.MlflowClient().search_model_versions(f"name = '{model_name(pipeline)}'")
    return {int(mv.version): dict(mv.tags or {}) for mv in found}


# ------------------------------------------------------------------------------------ health
def database_up(settings: Settings) -> tuple[bool, str]:
    with connect(settings, timeout_s=int(PROBE_BOUND_S)) as conn:
        conn.execute("SELECT 1")
    return True, "answers queries"


def object_store_up(settings: Settings) -> tuple[bool, str]:
    storage = open_storage(settings)
    storage.exists("health-probe")  # a missing key is an answer; a store that is down raises
    return True, "answers reads" + (" (s3)" if settings.artifact_uri.startswith("s3://") else " (local directory)")


def http_up(url: str, any_status: bool = False) -> tuple[bool, str]:
    """Whether `url` answers (below 500, or any status where an answer is what counts)."""
    import httpx

    answer = httpx.get(url, timeout=PROBE_BOUND_S)
    return any_status or answer.status_code < 500, f"HTTP {answer.status_code}"


def platform_probes(settings: Settings) -> dict[str, Callable[[], tuple[bool, str]]]:
    """The services the platform needs, each with its probe (the scheduler's comes from Airflow)."""
    # Serve's ingress: it answers (503 while it serves no application yet: up, with nothing to serve)
    serve = f"http://{settings.serve_host}:{settings.serve_port}/-/healthz"
    return {
        "database": lambda: database_up(settings),
        "object_store": lambda: object_store_up(settings),
        "mlflow": lambda: http_up(settings.mlflow_ui_url.rstrip("/") + "/health"),
        "serve": lambda: http_up(serve, any_status=True),
    }


def probe(name: str, check: Callable[[], tuple[bool, str]]) -> tuple[tuple[bool, str], float]:
    """A probe's outcome and seconds; what it raised is the why (its class: no server detail)."""
    started = time.monotonic()
    try:
        outcome = check()
    except Exception as err:
        outcome = (False, f"{type(err).__name__}: {resources.first_line(str(err))}")
    return outcome, time.monotonic() - started


def health(probes: dict[str, Callable[[], tuple[bool, str]]], bound_s: float = PROBE_BOUND_S) -> dict[str, Any]:
    """Every probe at once, each given at most `bound_s` (one that does not answer is down)."""
    pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="mlcycle-health")
    started = time.monotonic()
    futures = {name: pool.submit(probe, name, check) for name, check in probes.items()}
    rows = []
    for name, future in futures.items():
        try:
            outcome, seconds = future.result(timeout=max(0.0, bound_s - (time.monotonic() - started)))
        except FutureTimeout:
            outcome, seconds = None, time.monotonic() - started
        rows.append(resources.service_health(name, outcome, seconds, bound_s))
    pool.shutdown(wait=False, cancel_futures=True)  # a hung probe ends on its own timeout
    return resources.health_summary(rows)
