"""The mlcycle Airflow plugin: the operator's extra links, and the reports they open.

The reports (validation, evaluation, canary, Evidently) live in the artifact store, local or S3.
This plugin serves them read-only under the api-server at `/mlcycle/artifacts/...`, to users
allowed to read the DAG's runs (Airflow's own login and auth manager decide), and only the report
files of the steps that write one.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from operators.links import MlflowLink, ReportLink
from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import load_settings
from pipelines.core.steps import BY_NAME, REPORT_FILES
from pipelines.io.storage import open_storage, run_key
from pipelines.steps.context import check_run_id

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".json": "application/json"}


def _app() -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import Response

    app = FastAPI(title="mlcycle artifacts")

    @app.get(
        "/artifacts/{dag_id}/{run_id}/{step}/{name}",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))],
    )
    def artifact(dag_id: str, run_id: str, step: str, name: str) -> Response:
        info = BY_NAME.get(step)
        if info is None or info.report is None or name not in REPORT_FILES:
            raise HTTPException(404, "not a report")
        pipeline = dag_id.rsplit("_", 1)[0]
        try:
            key = run_key(pipeline, check_run_id(run_id), step, name)
        except InvalidArgument as err:
            raise HTTPException(404, str(err)) from None
        storage = open_storage(load_settings())
        if not storage.exists(key):
            raise HTTPException(404, f"{key}: not written (the step did not run or wrote no report)")
        return Response(storage.read_bytes(key), media_type=CONTENT_TYPES[name[name.rindex(".") :]])

    return app


class MlcyclePlugin(AirflowPlugin):
    name = "mlcycle"
    operator_extra_links = [MlflowLink(), ReportLink()]  # noqa: RUF012 (AirflowPlugin's interface)
    fastapi_apps = [{"app": _app(), "url_prefix": "/mlcycle", "name": "mlcycle artifacts"}]  # noqa: RUF012
