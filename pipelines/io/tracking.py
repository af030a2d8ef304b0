"""MLflow and Optuna on the platform database, each in its own schema.

`mlflow_uri(settings)` / `optuna_url(settings)` are SQLAlchemy URLs of the platform database with
`search_path` set to the `mlflow` / `optuna` schema (created by migration 0002). MLflow's artifacts
go under the artifact root: a local directory or `s3://...` (endpoint from the settings).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any
from urllib.parse import quote

from pipelines.core.settings import Settings
from pipelines.io.db import advisory_lock, database_url, sqlalchemy_url

_initialized: dict[tuple[str, str], str] = {}
"""The ids of the experiments this process found or created (later calls skip the lock)."""


def schema_url(url: str, schema: str) -> str:
    """A SQLAlchemy URL of `url` whose sessions use `schema` first. Pure."""
    sep = "&" if "?" in url else "?"
    return f"{sqlalchemy_url(url)}{sep}options={quote(f'-csearch_path={schema}')}"


def mlflow_uri(settings: Settings) -> str:
    return schema_url(database_url(settings), "mlflow")


def optuna_url(settings: Settings) -> str:
    return schema_url(database_url(settings), "optuna")


def artifact_location(settings: Settings, pipeline: str) -> str:
    root = settings.artifact_uri.rstrip("/")
    return f"{root}/mlflow/{pipeline}" if root.startswith("s3://") else f"file://{root}/mlflow/{pipeline}"


def server_command(settings: Settings, host: str, port: int) -> list[str]:
    """`mlflow server` on the platform's tracking schema and artifact root, behind MLflow's
    basic-auth app (its config and admin: `mlflow_auth.server_env`). Pure."""
    root = settings.artifact_uri.rstrip("/")
    artifacts = f"{root}/mlflow" if root.startswith("s3://") else f"file://{root}/mlflow"
    return [
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        mlflow_uri(settings),
        "--default-artifact-root",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
    ]


def experiment_name(pipeline: str) -> str:
    return f"mlcycle/{pipeline}"


def setup_mlflow(settings: Settings, pipeline: str) -> str:
    """Point MLflow at the platform database and the pipeline's experiment; returns its id."""
    import mlflow

    if settings.s3_endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    mlflow.set_tracking_uri(mlflow_uri(settings))
    mlflow.set_registry_uri(mlflow_uri(settings))
    name = experiment_name(pipeline)
    known = (mlflow_uri(settings), name)
    if known in _initialized:
        exp_id = _initialized[known]
    else:  # MLflow creates its tables (and we the experiment) on first use: one process at a time
        with advisory_lock(settings, "mlflow"):
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location(settings, pipeline))
        _initialized[known] = exp_id
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def code_version(settings: Settings) -> str:
    """The git commit of the code: MLCYCLE_GIT_COMMIT, else the `GIT_COMMIT` file an image's build
    writes into the project directory, else `git rev-parse HEAD`."""
    env = os.environ.get("MLCYCLE_GIT_COMMIT")
    if env:
        return env
    stamped = settings.project_dir / "GIT_COMMIT"
    if stamped.is_file() and stamped.read_text().strip() not in ("", "unknown"):
        return stamped.read_text().strip()
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        out = subprocess.run(
            [git, "rev-parse", "HEAD"],
            cwd=settings.project_dir,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def airflow_tags() -> dict[str, str]:
    """The Airflow dag/run/try ids the operator passes to the step, as MLflow tags."""
    names = {
        "MLCYCLE_AIRFLOW_DAG_ID": "airflow.dag_id",
        "MLCYCLE_AIRFLOW_RUN_ID": "airflow.run_id",
        "MLCYCLE_AIRFLOW_TRY_NUMBER": "airflow.try_number",
    }
    return {tag: os.environ[var] for var, tag in names.items() if os.environ.get(var)}


def find_run(experiment_id: str, tags: dict[str, str]) -> Any:
    """The newest MLflow run of the experiment carrying all `tags`, or None."""
    import mlflow

    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None
