"""The Airflow connection type `mlcycle`: its fields, and the settings a connection stands for. Pure.

An Airflow deployment keeps mlcycle's settings in one connection (`mlcycle_default`, or the id in
`MLCYCLE_CONN_ID`), so any secrets backend of that Airflow holds them. The standard fields name the
platform database (host, port, login, password, schema: the database); the extras the rest
(object store, MLflow, Ray, where steps run). `connection_env` turns one into the variables
`Settings` reads: what the connection sets wins, what it leaves empty falls back to the environment.
The lookup itself (Airflow's secrets backends) is `operators.hook`, done when a task runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

CONN_TYPE = "mlcycle"
DEFAULT_CONN_ID = "mlcycle_default"
CONN_ID_ENV = "MLCYCLE_CONN_ID"
"""The environment variable naming the connection a task reads (default `mlcycle_default`)."""


@dataclass(frozen=True)
class ExtraField:
    """One extra field of the connection: the variable it sets, its label and what it is for."""

    env: str
    label: str
    description: str
    placeholder: str = ""
    secret: bool = False


EXTRA_FIELDS: dict[str, ExtraField] = {
    "profile": ExtraField(
        "MLCYCLE_PROFILE", "Profile", "`cluster` (external database and store) or `embedded`", "cluster"
    ),
    "runtime": ExtraField(
        "MLCYCLE_RUNTIME", "Step runtime", "Where steps run: kubernetes, docker or local", "kubernetes"
    ),
    "artifact_root": ExtraField(
        "MLCYCLE_ARTIFACT_ROOT", "Artifact root", "The object store bucket and prefix", "s3://mlcycle/artifacts"
    ),
    "s3_endpoint_url": ExtraField(
        "MLCYCLE_S3_ENDPOINT_URL", "S3 endpoint URL", "Empty for AWS S3", "http://seaweedfs.mlcycle:8333"
    ),
    "s3_region": ExtraField("MLCYCLE_S3_REGION", "S3 region", "The bucket's region", "us-east-1"),
    "aws_access_key_id": ExtraField("AWS_ACCESS_KEY_ID", "S3 access key id", "The object store's access key id"),
    "aws_secret_access_key": ExtraField(
        "AWS_SECRET_ACCESS_KEY", "S3 secret access key", "The object store's secret key", secret=True
    ),
    "mlflow_ui_url": ExtraField(
        "MLCYCLE_MLFLOW_UI_URL", "MLflow URI", "The MLflow tracking server (UI and links)", "http://mlflow.mlcycle:5000"
    ),
    "ray_address": ExtraField(
        "MLCYCLE_RAY_ADDRESS", "Ray address", "The Ray cluster Serve deploys to", "ray://ray-head.mlcycle:10001"
    ),
    "ray_auth_token": ExtraField("RAY_AUTH_TOKEN", "Ray auth token", "The Ray cluster's token", secret=True),
    "redis_url": ExtraField(
        "MLCYCLE_REDIS_URL", "Redis URL", "Feast's online store, where Redis", "redis://redis.mlcycle:6379", True
    ),
    "pipelines_dir": ExtraField(
        "MLCYCLE_PIPELINES_DIR", "Pipelines directory", "The folder of pipeline specs", "/opt/airflow/pipelines"
    ),
    "image": ExtraField("MLCYCLE_IMAGE", "Step image", "The image step pods run", "registry/mlcycle-step:0.1.0"),
    "k8s_namespace": ExtraField("MLCYCLE_K8S_NAMESPACE", "Kubernetes namespace", "Where step pods run", "mlcycle"),
    "k8s_env_secret": ExtraField(
        "MLCYCLE_K8S_ENV_SECRET", "Step pods' Secret", "The Kubernetes Secret with the pods' credentials", "mlcycle-env"
    ),
}
"""The connection's extras, by the key they have in its `extra` JSON."""

RELABELING = {
    "host": "Database host",
    "port": "Database port",
    "login": "Database user",
    "password": "Database password",
    "schema": "Database name",
}
PLACEHOLDERS = {"host": "postgres.mlcycle (or a socket directory)", "port": "5432", "login": "mlcycle"}
HIDDEN_FIELDS = ["extra"]  # every extra has a field of its own


@dataclass(frozen=True)
class ConnectionFields:
    """What a connection holds, as Airflow's `Connection` has it."""

    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _extra(extra: Mapping[str, Any], name: str) -> str | None:
    """An extra by its name or by the `extra__mlcycle__<name>` key older Airflow UIs stored."""
    value = extra.get(name)
    if value in (None, ""):
        value = extra.get(f"extra__{CONN_TYPE}__{name}")
    return None if value in (None, "") else str(value)


def database_url(conn: ConnectionFields) -> str | None:
    """The libpq URL of the connection's database, or None when it names no host. A host that is a
    directory (starts with `/`) is a Unix socket's, as libpq reads it."""
    if not conn.host:
        return None
    login = quote(conn.login or "", safe="")
    auth = f"{login}:{quote(conn.password, safe='')}@" if conn.password else (f"{login}@" if login else "")
    database = quote(conn.schema or "postgres", safe="")
    if conn.host.startswith("/"):
        query = {"host": conn.host, **({"port": str(conn.port)} if conn.port else {})}
        return f"postgresql://{auth}/{database}?{urlencode(query)}"
    port = f":{conn.port}" if conn.port else ""
    return f"postgresql://{auth}{conn.host}{port}/{database}"


def connection_env(conn: ConnectionFields) -> dict[str, str]:
    """The settings' environment variables the connection sets; empty fields set nothing, so
    `Settings` falls back to the environment for them."""
    env = {spec.env: value for name, spec in EXTRA_FIELDS.items() if (value := _extra(conn.extra, name)) is not None}
    if (url := database_url(conn)) is not None:
        env["MLCYCLE_DATABASE_URL"] = url
    return env


def connection_type_info(hook_class_name: str) -> dict[str, Any]:
    """The `connection-types` entry of the provider info: the hook, the form's fields (Airflow's
    `conn-fields`, read without importing the hook) and the standard fields' labels."""
    fields = {
        name: {
            "label": spec.label,
            "description": spec.description,
            "schema": {"type": ["string", "null"], **({"format": "password"} if spec.secret else {})},
        }
        for name, spec in EXTRA_FIELDS.items()
    }
    return {
        "connection-type": CONN_TYPE,
        "hook-class-name": hook_class_name,
        "hook-name": "mlcycle",
        "conn-fields": fields,
        "ui-field-behaviour": ui_field_behaviour(),
    }


def ui_field_behaviour() -> dict[str, Any]:
    """Hidden fields, labels and placeholders of the connection form (Airflow's shape)."""
    placeholders = {**PLACEHOLDERS, **{n: s.placeholder for n, s in EXTRA_FIELDS.items() if s.placeholder}}
    return {"hidden-fields": list(HIDDEN_FIELDS), "relabeling": dict(RELABELING), "placeholders": placeholders}
