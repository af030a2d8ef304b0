"""The mlcycle Airflow plugin: the operator's extra links, and the reports they open.

The reports (validation, evaluation, canary, Evidently) live in the artifact store, local or S3.
This plugin serves them read-only under the api-server at `/mlcycle/reports/...` (a page per
step's report, with a link back to the run: the canary's first deployment has only its decisions,
`report.json`) and `/mlcycle/artifacts/...` (the files), to users
allowed to read the DAG's runs (Airflow's own login and auth manager decide), and only the report
files of the steps that write one, of a DAG the factory makes, for a run of that DAG. A report file
is a sandboxed document of its own opaque origin (`REPORT_HEADERS`), framed `sandbox`ed: its
scripts never run on Airflow's origin.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from airflow.api_fastapi.core_api.security import GetUserDep, bearer_scheme, get_user
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request  # FastAPI reads these names from the module
from fastapi.security import HTTPAuthorizationCredentials
from mlcycle_alerts import alerts_section, firing_for  # beside this file (sys.path)
from mlcycle_approvals import add_approval_routes, may, requests  # beside this file (sys.path)
from mlcycle_audit import add_audit_routes, audited  # beside this file: Airflow puts the folder on sys.path
from mlcycle_batch import add_batch_routes, batch_for
from mlcycle_page import PAGE_PATH, empty_page, page_html
from mlcycle_resources import add_resource_routes
from mlcycle_steering import add_steering_routes
from mlcycle_triggers import TRIGGER_AUDIT
from pydantic import BaseModel

from operators.links import MlflowLink, ReportLink
from pipelines.core.errors import InvalidArgument, SpecError, error_body, field_path, status_code
from pipelines.core.params import FORM, RunParams
from pipelines.core.settings import Settings, load_settings, pipeline_names, spec_for
from pipelines.core.steps import BY_NAME, REPORT_FILES, artifact_url
from pipelines.core.uris import allowed_prefixes, uri_problem
from pipelines.io import catalog
from pipelines.io.storage import open_storage, run_key
from pipelines.steps.context import check_run_id

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".json": "application/json"}

REPORT_HEADERS = {"Content-Security-Policy": "sandbox allow-scripts", "X-Content-Type-Options": "nosniff"}
"""Every report file's answer: a document of its own opaque origin (its own scripts, such as
Evidently's charts, run; they reach no cookie, storage, DOM or credentialed API of Airflow's
origin, even when the file is opened directly), and no type sniffed from its bytes."""
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-src 'self'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
"""The report page's own policy: no script at all, the report framed from this server only."""
FRAME_SANDBOX = "allow-scripts"
"""The sandbox of the frame that shows a report: scripts without Airflow's origin."""
DAG_SUFFIXES = {"lifecycle": "_lifecycle", "drift": "_drift"}


def report_pipeline(dag_id: str, step: str, pipelines: Iterable[str]) -> str | None:
    """The pipeline whose step's report `dag_id` may show: a DAG the factory makes for a known
    pipeline (`<name>_lifecycle`, `<name>_drift`), and the step one of that DAG's (the drift check
    in the drift DAG, every other step in the lifecycle). None: no such report. Pure."""
    suffix = DAG_SUFFIXES["drift" if step == "drift" else "lifecycle"]
    if not dag_id.endswith(suffix):
        return None
    pipeline = dag_id[: -len(suffix)]
    return pipeline if pipeline in set(pipelines) else None


def run_of_dag(dag_id: str, run_id: str) -> bool:
    """Whether Airflow's metadata database holds the run `run_id` of `dag_id`."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id).limit(1))
    return found is not None


def report_keys(dag_id: str, run_id: str, step: str, names: Iterable[str]) -> dict[str, str]:
    """The artifact-store keys of a report's files: only for a DAG the factory makes for a known
    pipeline, with the step in it, and a run of that DAG (404 otherwise, naming the field)."""
    pipeline = report_pipeline(dag_id, step, pipeline_names(load_settings()))
    if pipeline is None:
        raise api_error(404, f"no report of {step} in {dag_id!r}: no DAG of a known pipeline runs it", "dag_id")
    try:
        keys = {name: run_key(pipeline, check_run_id(run_id), step, name) for name in names}
    except InvalidArgument as err:
        raise api_error(404, str(err), "run_id") from None
    if not run_of_dag(dag_id, run_id):
        raise api_error(404, f"no run {run_id!r} of {dag_id}", "run_id")
    return keys


def allowed(user: Any, method: Literal["GET", "POST"], pipeline: str) -> bool:
    """Whether Airflow's auth manager lets `user` read (GET) or create (POST) the runs of the
    pipeline's lifecycle DAG: what every answer about a pipeline is behind."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    details = DagDetails(id=f"{pipeline}_lifecycle")
    manager = get_auth_manager()
    return bool(manager.is_authorized_dag(method=method, access_entity=DagAccessEntity.RUN, details=details, user=user))


def readable_pipelines(user: Any) -> list[str]:
    """The pipelines whose runs `user` may read, in name order."""
    return [n for n in pipeline_names(load_settings()) if allowed(user, "GET", n)]


LOGIN = "/api/v2/auth/login"
"""Airflow's login entry: it checks `next` and sends the browser to the auth manager's login page."""


def needs_login(status: int, detail: Any) -> bool:
    """Whether Airflow refused a request for want of a valid session, where its UI sends the
    browser to the login: no or an expired token (401), or a token it cannot read (403
    "Invalid JWT token"); any other 403 is a real refusal. Pure."""
    return status == 401 or (status == 403 and detail == "Invalid JWT token")


def login_url(root_path: str, next_url: str) -> str:
    """Airflow's login, back to `next_url` (a path here) once logged in, as the UI does it. Pure."""
    return f"{root_path.rstrip('/')}{LOGIN}?{urlencode({'next': next_url})}"


def api_error_body(status: int, reason: str, field: str | None = None) -> dict[str, Any]:
    """Every error of the plugin's API, in the one shape of mlcycle's HTTP APIs
    (`pipelines.core.errors.error_body`): the code of the HTTP status, the reason, the field. Pure."""
    return error_body(status_code(status), reason, field)


def scrub(text: str, directories: Iterable[tuple[str, str]]) -> str:
    """`text` with every server directory of `directories` ((path, name) pairs) replaced by its
    name: no error tells a client where the server keeps its files. Pure."""
    for path, name in sorted(directories, key=lambda d: -len(d[0])):
        if path and path != "/":
            text = text.replace(path.rstrip("/"), name)
    return text


def server_directories(settings: Settings) -> list[tuple[str, str]]:
    """The directories of this installation that an error could name, with what to call them."""
    return [
        (str(settings.specs_path), "<pipelines dir>"),
        (str(settings.state_path), "<state dir>"),
        (str(settings.project_dir), "<project dir>"),
        (str(Path.home()), "<home>"),
    ]


def unknown_pipeline(pipeline: str, known: list[str]) -> str:
    """The 404 of a pipeline the user cannot read (or none): those they may read, no path. Pure."""
    return f"no pipeline {pipeline!r} that you may read (known: {known})"


def install_error_handlers(app: FastAPI) -> None:
    """Every error `app` answers in the one shape (`error_body`), scrubbed of server paths; an
    unexpected error as a bare 500 (its traceback stays in the api-server's log)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def answer(status: int, reason: str, field: str | None, headers: Any = None) -> JSONResponse:
        try:
            reason = scrub(reason, server_directories(load_settings()))
        except Exception:  # no settings: nothing of theirs to scrub, and the answer must go out
            reason = scrub(reason, [(str(Path.home()), "<home>")])
        return JSONResponse(api_error_body(status, reason, field), status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def as_json(request: Request, err: StarletteHTTPException) -> JSONResponse:
        reason = err.detail if isinstance(err.detail, str) else json.dumps(err.detail)
        return answer(err.status_code, reason, getattr(err, "field", None), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_as_json(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        reason = "; ".join(f"{field_path(tuple(e['loc']))}: {e['msg']}" for e in errors)
        return answer(422, reason, field_path(tuple(errors[0]["loc"])) if errors else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        return answer(500, "internal error: the api-server's log has the details", None)


def api_error(status: int, reason: str, field: str | None = None) -> HTTPException:
    """An HTTPException that carries the field at fault (for `error_body`)."""
    err = HTTPException(status, reason)
    err.field = field  # type: ignore[attr-defined]
    return err


async def session_user(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Any:
    """The user of the request's session or token; None where Airflow's UI would send the browser
    to the login (no session, an expired or unreadable token)."""
    try:
        return await get_user(request, None, bearer)
    except HTTPException as err:
        if needs_login(err.status_code, err.detail):
            return None
        raise


PageUserDep = Annotated[Any, Depends(session_user)]


def _app() -> Any:
    """The `/mlcycle` app: the mlcycle page, and the steps' reports with their files."""
    app = FastAPI(title="mlcycle artifacts")
    install_error_handlers(app)
    add_page_route(app)
    add_report_routes(app)
    return app


def add_page_route(app: FastAPI) -> None:
    """`/page`: the mlcycle page, behind Airflow's login (a browser without a session goes there)."""
    from airflow.api_fastapi.app import get_cookie_path
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    @app.get("/page", response_class=HTMLResponse, response_model=None)
    def page(
        request: Request,
        user: PageUserDep,
        pipeline: str | None = None,
        request_id: str = "",
    ) -> Response:
        """The mlcycle page of one pipeline (the first the user may read when none is named); a
        browser without a session goes to Airflow's login, which brings it back here."""
        if user is None:
            back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            # the server's base path (`[api] base_url`), not the scope's root path: that one ends in this mount
            return RedirectResponse(login_url(get_cookie_path(), back), status_code=307)
        settings = load_settings()
        names = readable_pipelines(user)
        if not names:
            return HTMLResponse(empty_page("No pipeline's lifecycle DAG is readable by you."), status_code=403)
        selected = pipeline or names[0]
        if selected not in names:
            return HTMLResponse(empty_page(unknown_pipeline(selected, names)), status_code=404)
        try:
            spec = spec_for(settings, selected)
        except SpecError:
            reason = f"The spec of {selected} does not load: `mlcycle spec validate` names the problem."
            return HTMLResponse(empty_page(reason), status_code=409)
        trace, error, wanted = None, None, request_id.strip()
        if wanted:
            trace = catalog.trace(settings, wanted, set(names))
            if trace is None:
                error = f"no prediction {wanted!r} in a pipeline you may read"
        html = page_html(
            pipelines=names,
            selected=selected,
            data=catalog.overview(settings, selected),
            mlflow_base=settings.mlflow_ui_url,
            psi_threshold=spec.drift.psi_threshold,
            drift_ignored=frozenset(spec.drift.ignore),
            trace_query=request_id,
            trace=trace,
            trace_error=error,
            approvals=[a for a in requests(selected) if a["state"] == "waiting"] if may(user, "GET", selected) else [],
            alerts=alerts_section(*firing_for(settings, selected)),
            batch=batch_for(settings, spec),
        )
        return HTMLResponse(html)


def add_report_routes(app: FastAPI) -> None:
    """`/artifacts/...` (a report's files) and `/reports/...` (a step's report as a page), each
    behind read access to the DAG's runs, and only the report files of the steps that write one."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi.responses import HTMLResponse, Response

    @app.get(
        "/artifacts/{dag_id}/{run_id}/{step}/{name}",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))],
        response_model=None,  # bytes of the artifact's own type (the return annotation is resolved late)
    )
    def artifact(dag_id: str, run_id: str, step: str, name: str) -> Response:
        info = BY_NAME.get(step)
        if info is None or info.report is None or name not in REPORT_FILES:
            raise api_error(404, "not a report", "step" if info is None or info.report is None else "name")
        key = report_keys(dag_id, run_id, step, [name])[name]
        storage = open_storage(load_settings())
        if not storage.exists(key):
            raise HTTPException(404, f"{key}: not written (the step did not run or wrote no report)")
        media_type = CONTENT_TYPES[name[name.rindex(".") :]]
        return Response(storage.read_bytes(key), media_type=media_type, headers=REPORT_HEADERS)

    @app.get(
        "/reports/{dag_id}/{run_id}/{step}",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))],
        response_class=HTMLResponse,
        response_model=None,
    )
    def report_page(dag_id: str, run_id: str, step: str) -> HTMLResponse:
        info = BY_NAME.get(step)
        if info is None or info.report is None:
            raise api_error(404, "not a step with a report", "step")
        keys = report_keys(dag_id, run_id, step, (info.report.file, "report.json"))
        storage = open_storage(load_settings())
        written = [name for name, key in keys.items() if storage.exists(key)]
        if not written:
            raise HTTPException(404, f"{step} of {run_id} wrote no report (the step did not run, or was skipped)")
        json_text = storage.read_bytes(keys["report.json"]).decode() if "report.json" in written else None
        page = report_page_html(dag_id, run_id, step, info.report.title, written, json_text)
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})


def report_page_html(dag_id: str, run_id: str, step: str, title: str, written: list[str], json_text: str | None) -> str:
    """A step's report with a way back: the HTML report framed, the plot as an image, else the
    decisions of `report.json`. Pure."""
    run_page = f"/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"
    files = " · ".join(f'<a href="{artifact_url(dag_id, run_id, step, n)}">{escape(n)}</a>' for n in written)
    main = written[0]
    if main.endswith(".html"):
        src = artifact_url(dag_id, run_id, step, main)
        body = f'<iframe src="{src}" sandbox="{FRAME_SANDBOX}" title="{escape(title)}"></iframe>'
    elif main.endswith(".png"):
        body = f'<img src="{artifact_url(dag_id, run_id, step, main)}" alt="{escape(title)}">'
    else:
        body = f"<pre>{escape(json.dumps(json.loads(json_text or '{}'), indent=2))}</pre>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{escape(title)}: {escape(dag_id)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:0}} header{{padding:.6em 1em;background:#f3f4f6;
border-bottom:1px solid #ddd}} iframe{{border:0;width:100%;height:calc(100vh - 3.5em)}}
img{{max-width:100%;margin:1em}} pre{{margin:1em;white-space:pre-wrap}}</style></head>
<body><header><a href="{run_page}">&larr; back to the run</a> · <b>{escape(title)}</b> of
{escape(dag_id)} {escape(run_id)} · files: {files}</header>
{body}
</body></html>"""


class LabelsBody(BaseModel):
    """Served predictions' labels: rows of entity_id, label[, request_id, observed_at] (or the spec's names)."""

    labels: list[dict[str, Any]] = []


class TriggerBody(BaseModel):
    """A training run's params, as `conf` (what the Trigger form and `POST /api/v2/.../dagRuns` take)."""

    conf: dict[str, Any] = {}


def _api() -> Any:
    """The platform API, `/api/ml/*`: behind Airflow's login, each pipeline behind its lifecycle
    DAG's permissions (read: the DAG's runs; trigger: creating runs). Errors are JSON
    `{"error": <status>, "reason": <text>, "field": <field or null>}` and name no server path;
    lists are pages (`limit`, `offset`, `total`, `next_offset`)."""
    app = FastAPI(
        title="mlcycle platform API",
        version="1",
        description="Pipelines, models and their lineage, deployments, experiments, features, health, drift, traces.",
    )
    install_error_handlers(app)
    add_read_routes(app)
    add_batch_routes(app, readable)
    add_write_routes(app)
    add_approval_routes(app, readable)
    add_audit_routes(app, readable())
    add_steering_routes(app, lambda method="POST": readable(method))
    add_resource_routes(app, readable, readable_pipelines, api_error)
    return app


def readable(method: Literal["GET", "POST"] = "GET") -> Any:
    """The dependency of a route under `/pipelines/{pipeline}`: the pipeline's name, once it is
    known (404), the user may read or create (`method`) its lifecycle DAG's runs (403), and its spec
    loads (409)."""

    def check(pipeline: str, user: GetUserDep) -> str:
        settings = load_settings()
        if pipeline not in pipeline_names(settings):  # a name, never a path to look for
            raise api_error(404, unknown_pipeline(pipeline, readable_pipelines(user)), "pipeline")
        if not allowed(user, method, pipeline):
            what = "write" if method == "POST" else "read"
            raise HTTPException(403, f"no {what} access to {pipeline}_lifecycle's runs")
        try:
            spec_for(settings, pipeline)
        except SpecError:
            why = f"the spec of {pipeline} does not load: `mlcycle spec validate` says why"
            raise HTTPException(409, why) from None
        return pipeline

    return check


def add_read_routes(app: FastAPI) -> None:
    """The platform API's reads: the pipelines, one pipeline, its versions, its drift, a prediction's trace."""
    from fastapi import Query

    Limit = Query(50, ge=1, le=500)
    Offset = Query(0, ge=0)

    @app.get("/pipelines")
    def pipelines(user: GetUserDep, limit: int = Limit, offset: int = Offset) -> dict[str, Any]:
        settings = load_settings()
        listed = catalog.page(readable_pipelines(user), limit, offset)
        listed["items"] = [catalog.pipeline_summary(settings, n) for n in listed["items"]]
        return listed

    @app.get("/pipelines/{pipeline}")
    def pipeline(name: str = Depends(readable())) -> dict[str, Any]:
        return catalog.pipeline_detail(load_settings(), name)

    @app.get("/pipelines/{pipeline}/models")
    def models(name: str = Depends(readable()), limit: int = Limit, offset: int = Offset) -> dict[str, Any]:
        return catalog.page(catalog.model_versions(load_settings(), name), limit, offset)

    @app.get("/pipelines/{pipeline}/drift")
    def drift(name: str = Depends(readable()), limit: int = Limit, offset: int = Offset) -> dict[str, Any]:
        return catalog.page(catalog.drift_history(load_settings(), name), limit, offset)

    @app.get("/predictions/{request_id}")
    def prediction(request_id: str, user: GetUserDep) -> dict[str, Any]:
        settings = load_settings()
        names = set(readable_pipelines(user))
        answers = catalog.trace(settings, request_id, names)
        if answers is None:
            raise api_error(404, f"no prediction {request_id!r} in a pipeline you may read", "request_id")
        return {"request_id": request_id, "answers": answers}


def add_write_routes(app: FastAPI) -> None:
    """The platform API's writes, behind creating the lifecycle DAG's runs: labels, training runs."""
    from pydantic import ValidationError

    @app.post("/pipelines/{pipeline}/labels", status_code=201)
    def labels(body: LabelsBody, user: GetUserDep, name: str = Depends(readable("POST"))) -> dict[str, Any]:
        """Ground truth for served predictions: all rows or none (a bad row is named in the 422)."""
        import pandas as pd

        from pipelines.io.labels import label_rows, upsert_labels  # pandas, through the sources

        settings = load_settings()
        if not body.labels:
            raise api_error(
                422, "no labels: `labels` is a list of {entity_id, label[, request_id, observed_at]}", "labels"
            )
        try:
            rows = label_rows(pd.DataFrame(body.labels), spec_for(settings, name), datetime.now(UTC))
        except InvalidArgument as err:
            raise api_error(422, str(err), "labels") from None
        loaded = upsert_labels(settings, rows)
        audited(settings, user, "labels_loaded", name, detail={"rows": loaded, "via": "api"})
        return {"pipeline": name, "loaded": loaded}

    @app.post("/pipelines/{pipeline}/runs", status_code=201)
    def trigger(body: TriggerBody, user: GetUserDep, name: str = Depends(readable("POST"))) -> dict[str, Any]:
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.utils.types import DagRunTriggeredByType

        unknown = sorted(set(body.conf) - set(FORM))
        if unknown:
            raise api_error(422, f"unknown run params {unknown}; a run takes {list(FORM)}", f"conf.{unknown[0]}")
        try:
            params = RunParams(**body.conf)
        except ValidationError as err:
            first = err.errors()[0]
            where = field_path(("conf", *first["loc"]))
            raise api_error(422, f"invalid run params: {where}: {first['msg']}", where) from None
        if params.source_uri:  # only under the prefixes the pipeline allows (the form's own check)
            settings = load_settings()
            prefixes = allowed_prefixes(spec_for(settings, name).source, settings, name)
            problem = uri_problem(params.source_uri, prefixes, settings)
            if problem:
                raise api_error(422, problem, "conf.source_uri")
        run = trigger_dag(
            f"{name}_lifecycle",
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name=user.get_name(),
            conf=body.conf,
        )
        if run is None:
            raise HTTPException(409, "no run was created")
        audited(load_settings(), user, "trigger", name, run_id=run.run_id, detail={"conf": body.conf, "via": "api"})
        return {"pipeline": name, "dag_id": run.dag_id, "run_id": run.run_id, "state": str(run.state)}


class MlcyclePlugin(AirflowPlugin):
    name = "mlcycle"
    listeners = [TRIGGER_AUDIT]  # noqa: RUF012 (AirflowPlugin's interface)
    operator_extra_links = [MlflowLink(), ReportLink()]  # noqa: RUF012 (AirflowPlugin's interface)
    external_views = [  # noqa: RUF012 (AirflowPlugin's interface)
        {"name": "mlcycle", "href": PAGE_PATH, "url_route": "mlcycle", "destination": "nav", "category": None}
    ]
    fastapi_apps = [  # noqa: RUF012 (AirflowPlugin's interface)
        {"app": _app(), "url_prefix": "/mlcycle", "name": "mlcycle artifacts"},
        {"app": _api(), "url_prefix": "/api/ml", "name": "mlcycle platform API"},
    ]
