"""Extra links of a step's task in the Airflow UI: its MLflow run or model version, its reports.

Airflow computes them in the worker when the task ends (`get_link` on the operator that just ran)
and stores them in XCom, so they come from the step's own result. Reports are served by the
`mlcycle` plugin (plugins/mlcycle_plugin.py) under the api-server, behind Airflow's own login:
`/mlcycle/reports/<dag_id>/<run_id>/<step>` (the report in a page that links back to the run) and
`/mlcycle/artifacts/<dag_id>/<run_id>/<step>/<file>` (the files).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
from airflow.sdk import BaseOperatorLink

from pipelines.core.settings import load_settings
from pipelines.core.steps import BY_NAME, report_url

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def mlflow_url(base: str, step: str, result: dict[str, Any]) -> str:
    """The MLflow UI page of a step's result: the training run (where evaluate logs too), or the
    registered version. Pure."""
    base = base.rstrip("/")
    if step in ("train", "evaluate") and result.get("mlflow_run_id") and result.get("mlflow_experiment_id"):
        return f"{base}/#/experiments/{result['mlflow_experiment_id']}/runs/{result['mlflow_run_id']}"
    if step == "promote" and result.get("model") and result.get("version"):
        return f"{base}/#/models/{quote(result['model'])}/versions/{result['version']}"
    return ""


def _result(operator: BaseOperator) -> dict[str, Any]:
    result = getattr(operator, "result", None)
    return result if isinstance(result, dict) else {}


@attrs.define
class MlflowLink(BaseOperatorLink):
    name = "MLflow"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return mlflow_url(load_settings().mlflow_ui_url, str(getattr(operator, "step", "")), _result(operator))


@attrs.define
class ReportLink(BaseOperatorLink):
    """The step's report, when the step has one and wrote it."""

    name = "Report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        step = str(getattr(operator, "step", ""))
        info = BY_NAME.get(step)
        if info is None or info.report is None or not _result(operator):
            return ""
        return report_url(ti_key.dag_id, ti_key.run_id, step)
