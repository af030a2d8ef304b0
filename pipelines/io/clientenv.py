"""`mlcycle env`: the variables a plain client needs to reach the platform's services.

The platform's own code finds everything from the `MLCYCLE_*` settings; a user's notebook or
script uses the plain clients instead: the MLflow client, the Feast SDK on `feature_repo/`,
`psql`, boto3, Ray. `client_env` is what each of them reads, from the settings and the database
URL, as `export` lines a shell can `eval`.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict

from pipelines.core.settings import Settings
from pipelines.io.db import sqlalchemy_url
from pipelines.io.featurestore import REDIS_REPO_YAML, feast_env, redis_connection_string


@dataclass(frozen=True)
class Var:
    client: str
    name: str
    value: str


def tracking_server_url(settings: Settings) -> str:
    """The MLflow tracking server the UI runs: `MLCYCLE_MLFLOW_UI_URL` where it is set (a cluster's
    MLflow service), else the embedded platform's own (`mlcycle up`: `mlflow server` on
    127.0.0.1:`MLCYCLE_MLFLOW_PORT`), else the UI URL's default. Pure."""
    if "mlflow_ui_url" not in settings.model_fields_set and settings.profile == "embedded":
        return f"http://127.0.0.1:{settings.mlflow_port}"
    return settings.mlflow_ui_url.rstrip("/")


def client_env(
    settings: Settings, database_url: str, pipeline: str, mlflow_login: Mapping[str, str] | None = None
) -> list[Var]:
    """The variables of every plain client, grouped by client. Pure. The MLflow client talks to
    the tracking server (what the UI shows, over HTTP), never to the database under it, with
    `mlflow_login` (MLFLOW_TRACKING_USERNAME/PASSWORD: the server asks for a login)."""
    mlflow = "MLflow client (tracking and registry)"
    out = [Var(mlflow, "MLFLOW_TRACKING_URI", tracking_server_url(settings))]
    out += [Var(mlflow, k, v) for k, v in (mlflow_login or {}).items()]
    if settings.s3_endpoint_url:
        out.append(Var(mlflow, "MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url))
    feast = f"Feast SDK: FeatureStore(repo_path='{settings.project_dir / 'feature_repo'}')"
    out += [Var(feast, k, v) for k, v in feast_env(pipeline, sqlalchemy_url(database_url), database_url).items()]
    if settings.redis_url:
        out.append(Var(feast, "MLCYCLE_FEAST_REDIS", redis_connection_string(settings.redis_url)))
        out.append(Var(feast, "FEAST_FS_YAML_FILE_PATH", str(settings.project_dir / "feature_repo" / REDIS_REPO_YAML)))
    info = conninfo_to_dict(database_url)
    libpq = {
        "PGHOST": info.get("host"),
        "PGPORT": info.get("port"),
        "PGDATABASE": info.get("dbname"),
        "PGUSER": info.get("user"),
        "PGPASSWORD": info.get("password"),
        "PGSSLMODE": info.get("sslmode"),
    }
    out += [Var("psql and any libpq client", k, str(v)) for k, v in libpq.items() if v not in (None, "")]
    if settings.s3_endpoint_url:
        out.append(
            Var("boto3 / aws (credentials: your AWS_* variables)", "AWS_ENDPOINT_URL_S3", settings.s3_endpoint_url)
        )
        out.append(Var("boto3 / aws (credentials: your AWS_* variables)", "AWS_DEFAULT_REGION", settings.s3_region))
    out.append(Var("artifacts (reports, snapshots, models)", "MLCYCLE_ARTIFACT_ROOT", settings.artifact_uri))
    if settings.ray_address:
        out.append(Var("Ray client", "RAY_ADDRESS", settings.ray_address))
    return out


def render_env(variables: list[Var]) -> str:
    """`export NAME=value` lines (shell-quoted) under a comment per client. Pure."""
    lines: list[str] = []
    client = None
    for var in variables:
        if var.client != client:
            client = var.client
            lines.append(f"{'' if not lines else chr(10)}# {client}")
        lines.append(f"export {var.name}={shlex.quote(var.value)}")
    return "\n".join(lines)
