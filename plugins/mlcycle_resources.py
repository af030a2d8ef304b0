"""The platform API's resources beside the pipelines: `GET /api/ml/models`,
`/models/{pipeline}/versions/{version}`, `/deployments`, `/experiments`, `/features`, `/health`.

Each is a read behind Airflow's login (no token: 401) and, for what belongs to a pipeline, behind
read access to its lifecycle DAG's runs, as every `/api/ml` read: a list holds only the pipelines
the user may read; a pipeline named that they may not read is a 404 naming the ones they may.
Lists are pages (`limit`, `offset`, `total`, `next_offset`), as the API's other lists.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, FastAPI, Path, Query
from pydantic import BaseModel, Field

from pipelines.core import resources
from pipelines.core.errors import SpecError
from pipelines.core.settings import load_settings
from pipelines.io import catalog
from pipelines.io import resources as reads
from serving.steer import served_state

API = "/api/ml"
LINKS = (
    ("models", "registered models and their aliases"),
    ("deployments", "what Serve runs: versions, weights, canary"),
    ("experiments", "Optuna studies and their trials"),
    ("features", "feature views, services, freshness"),
    ("health", "each service of the platform"),
    ("docs", "the API's OpenAPI description"),
)


def api_section(pipeline: str) -> str:
    """The mlcycle page's list of the platform API's resources (JSON, behind the same login). Pure."""
    items = "".join(
        f'<li><a href="{API}/{path}{"?pipeline=" + escape(pipeline) if path in PER_PIPELINE else ""}">'
        f"{API}/{path}</a> <span class='muted'>{escape(what)}</span></li>"
        for path, what in LINKS
    )
    return f"<h2>API</h2><ul class='api'>{items}</ul>"


class ErrorBody(BaseModel):
    """Every error of the platform API."""

    error: str = Field(description="the HTTP status's code: unauthorized, forbidden, not_found, invalid_request, ...")
    reason: str = Field(description="what is wrong, in words")
    field: str | None = Field(description="the request's field at fault, or null")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no valid Airflow session or token"},
    403: {"model": ErrorBody, "description": "the named pipeline's lifecycle DAG runs are not readable by you"},
    404: {"model": ErrorBody, "description": "no such pipeline (or version) that you may read"},
    422: {"model": ErrorBody, "description": "a parameter out of range, named in `field`"},
}


class ModelSummary(BaseModel):
    pipeline: str
    model: str = Field(description="the registered model's name in MLflow")
    versions: int = Field(description="how many versions are registered")
    latest: int | None = Field(description="the newest version (null: none registered)")
    aliases: dict[str, int] = Field(description="alias -> version (champion, challenger)")


class ModelPage(BaseModel):
    items: list[ModelSummary]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="the offset of the next page; null on the last")


class ServiceHealth(BaseModel):
    service: str = Field(description="database, object_store, mlflow, serve or airflow_scheduler")
    up: bool
    why: str = Field(description="what the probe saw: its answer, its error, or that none came in time")
    seconds: float = Field(description="how long the probe took")


class Health(BaseModel):
    status: str = Field(description="`up` when every service is, else `degraded`")
    down: list[str] = Field(description="the services that are down")
    services: list[ServiceHealth]


PER_PIPELINE = frozenset({"models", "deployments", "experiments", "features"})
Limit = Query(50, ge=1, le=500, description="items per page")
Offset = Query(0, ge=0, description="items to skip")
OnePipeline = Query(None, description="only this pipeline (one you may read)", max_length=200)


def add_resource_routes(
    app: FastAPI, readable: Callable[..., Any], readable_pipelines: Callable[[Any], list[str]], api_error: Any
) -> None:
    """The resources' routes on the platform API; `readable()`: the plugin's dependency that checks
    a pipeline and the user's read access (404 unknown, 403 not readable, 409 its spec does not
    load); `readable_pipelines(user)`: the pipelines the user may read; `api_error`: the plugin's
    HTTP error naming the field at fault."""

    def chosen(user: Any, pipeline: str | None) -> list[str]:
        """The pipelines a list covers: every one the user may read, or the one named (checked)."""
        return readable_pipelines(user) if pipeline is None else [readable()(pipeline, user)]

    @app.get("/models", summary="Registered models", description=MODELS, response_model=ModelPage, responses=ERRORS)
    def models(
        user: GetUserDep, pipeline: str | None = OnePipeline, limit: int = Limit, offset: int = Offset
    ) -> dict[str, Any]:
        return per_pipeline(chosen(user, pipeline), limit, offset, reads.registered_model)

    @app.get(
        "/models/{pipeline}/versions/{version}",
        summary="One model version's lineage",
        description=VERSION,
        responses={**ERRORS, 409: {"model": ErrorBody, "description": "the pipeline's spec does not load"}},
    )
    def version(name: str = Depends(readable()), version: int = Path(ge=1, le=2**31 - 1)) -> dict[str, Any]:
        found = reads.version_detail(load_settings(), name, version)
        if found is None:
            raise api_error(404, f"no version {version} of {name}'s model in the registry", "version")
        return found

    @app.get("/deployments", summary="What Serve runs", description=DEPLOYMENTS, responses=ERRORS)
    def deployments(
        user: GetUserDep, pipeline: str | None = OnePipeline, limit: int = Limit, offset: int = Offset
    ) -> dict[str, Any]:
        return per_pipeline(chosen(user, pipeline), limit, offset, deployment_item)

    @app.get("/experiments", summary="Optuna studies", description=EXPERIMENTS, responses=ERRORS)
    def experiments(
        user: GetUserDep, pipeline: str | None = OnePipeline, limit: int = Limit, offset: int = Offset
    ) -> dict[str, Any]:
        return reads.studies(load_settings(), chosen(user, pipeline), limit, offset)

    @app.get("/features", summary="Feature views and services", description=FEATURES, responses=ERRORS)
    def features(
        user: GetUserDep, pipeline: str | None = OnePipeline, limit: int = Limit, offset: int = Offset
    ) -> dict[str, Any]:
        return per_pipeline(chosen(user, pipeline), limit, offset, feature_item)

    @app.get(
        "/health",
        summary="The platform's services",
        description=HEALTH,
        response_model=Health,
        responses={401: ERRORS[401]},
    )
    def health(user: GetUserDep) -> dict[str, Any]:
        probes = reads.platform_probes(load_settings())
        probes["airflow_scheduler"] = scheduler_up
        return reads.health(probes)


def per_pipeline(names: list[str], limit: int, offset: int, item: Callable[[Any, str], Any]) -> dict[str, Any]:
    """A page of `names`, each read as `item(settings, name)` (only the page's are read)."""
    settings = load_settings()
    listed = catalog.page(names, limit, offset)
    listed["items"] = [item(settings, name) for name in listed["items"]]
    return listed


def deployment_item(settings: Any, pipeline: str) -> dict[str, Any]:
    """What Serve runs for `pipeline` now, beside its latest canary."""
    served, why = served_state(settings, pipeline)
    return resources.deployment_record(pipeline, served, why, catalog.last_canary(settings, pipeline))


def feature_item(settings: Any, pipeline: str) -> dict[str, Any]:
    """A pipeline's Feast objects, or why they cannot be read (its spec does not load)."""
    try:
        return reads.feature_views(settings, pipeline)
    except SpecError:
        return {"pipeline": pipeline, "unavailable": "its spec does not load: `mlcycle spec validate` says why"}


def scheduler_up() -> tuple[bool, str]:
    """Airflow's scheduler, from Airflow's own health record (this api-server's database)."""
    from airflow.api.common.airflow_health import get_airflow_health

    return resources.scheduler_health(get_airflow_health())


MODELS = """The registered model of each pipeline you may read: how many versions, the newest, and
the version each alias (`champion`, `challenger`) points to. A page: `limit`, `offset`, `total`,
`next_offset`; `pipeline` narrows it to one."""
VERSION = """One registered version: its aliases, primary metric and verdict, its lineage (the
lifecycle run that trained it, the MLflow runs, the data window and the data hash of its snapshot,
the feature service, the code version, the run's steps), the training run's metrics, the sha256 of
its files sealed at registration, and the audit events that name it. 404: no such version."""
DEPLOYMENTS = """Per pipeline you may read, what Serve runs now (the versions with their weights,
the shadow, the canary's state), or why Serve gave nothing (`unavailable`), and its latest canary:
outcome, the weights it left, and its walk of steps (share, decision, figures)."""
EXPERIMENTS = """The Optuna studies of the pipelines you may read (one per lifecycle run, newest
first): direction, trials (number, state, value, params, MLflow run, family, worker), the count per
state, the best complete trial, and the training step's MLflow run."""
FEATURES = """Per pipeline you may read, its Feast objects from the registry: feature views
(entities, features and types, TTL, online, last materialization, age and whether it is within the
TTL), feature services (the views each reads) and the feature service each model version reads."""
HEALTH = """Each service of the platform, up or down with why: the database, the object store,
MLflow, Serve and Airflow's scheduler; all asked at once, each for at most a few seconds.
`status` is `up` or `degraded` (naming the services `down`)."""
