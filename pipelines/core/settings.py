"""Installation settings, read from `MLCYCLE_*` environment variables (never from code).

Two profiles:

* `embedded` (default): everything on one machine under a state directory (`.mlcycle/`): the
  artifact root, Feast's files and a real PostgreSQL with pgvector that mlcycle starts itself.
* `cluster`: an external PostgreSQL (`MLCYCLE_DATABASE_URL`), S3 (`MLCYCLE_ARTIFACT_ROOT=s3://...`,
  `MLCYCLE_S3_ENDPOINT_URL`), Redis and Kubernetes (namespace, image, service account).

Secrets (database password, S3 keys) come from the environment: in pods from a Kubernetes Secret
named by `MLCYCLE_K8S_ENV_SECRET`, never from files in the repository.

The pipelines of an installation live in its pipelines directory: `pipeline_names` lists them and
`spec_for` loads one (the spec package itself knows nothing of settings).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.core.errors import SettingsError, SpecError
from pipelines.core.k8s import Toleration
from pipelines.core.spec import PipelineSpec, load_spec, spec_paths

PROJECT_DIR = Path(__file__).resolve().parents[2]
"""The repository root (or the image's install root): holds include/, feature_repo/, dags/."""


class RetentionSettings(BaseSettings):
    """How long the platform keeps what grows with use (`MLCYCLE_RETENTION_*`); the `retention`
    step of the `mlcycle_retention` DAG enforces it every hour."""

    model_config = SettingsConfigDict(env_prefix="MLCYCLE_RETENTION_", frozen=True, extra="ignore")

    # Days of the request log kept: a day partition is dropped once all of it is older than this.
    request_log_days: int = Field(default=30, ge=0, le=3650)
    # Days of labels kept (by when they were observed), at least the longest window of the
    # pipeline's spec that reads them (feedback lookback, drift window, shadow window).
    labels_days: int = Field(default=90, ge=0, le=3650)
    # Days a run's folder under the artifact root is kept after its last write, unless a version
    # still in the registry was registered by that run (its snapshot, reports and model stay).
    runs_days: int = Field(default=30, ge=0, le=3650)
    # Days a batch run's rows of `batch_predictions` are kept after its last step, except the
    # newest published run's (what `<pipeline>_predictions_latest` shows) and a run with a step running.
    batch_predictions_days: int = Field(default=30, ge=0, le=3650)
    # Day partitions of the request log made ahead of today.
    partitions_ahead: int = Field(default=7, ge=1, le=90)


class Settings(BaseSettings):
    """What an installation looks like. Frozen; build one per process with `Settings()`."""

    model_config = SettingsConfigDict(env_prefix="MLCYCLE_", frozen=True, extra="ignore")

    profile: Literal["embedded", "cluster"] = "embedded"
    project_dir: Path = PROJECT_DIR
    state_dir: Path = Field(default=Path(".mlcycle"))
    pipelines_dir: Path | None = None
    database_url: str | None = None
    # The read-only role a Postgres source without `url_env` connects as (default: the platform
    # database's URL with the user `mlcycle_source` that migration 0014 creates, no password)
    source_database_url: str | None = None
    artifact_root: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    redis_url: str | None = None
    # More folders or s3:// prefixes a run's `source_uri` may read from, for every pipeline (JSON list;
    # `{pipeline}` stands for the pipeline's name), besides what its spec allows (`source.allowed_uris`)
    source_uri_prefixes: list[str] = []
    runtime: Literal["local", "docker", "kubernetes"] | None = None
    # Ray Serve: the cluster to deploy to (None: start or reuse the embedded one) and its HTTP port.
    ray_address: str | None = None
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    # Serve's HAProxy: its stats page and Prometheus exporter (on serve_host, see serving/haproxy.py)
    haproxy_stats_port: int = 8404
    haproxy_metrics_port: int = 9101
    serve_fallback_port: int = 8500  # Serve's Python proxy, behind HAProxy as its backup
    # How often a serving replica reloads the serving keys (a revoked key is refused within this).
    serving_keys_reload_s: float = Field(default=10.0, gt=0, le=3600)
    # Where users open the MLflow UI (the operator's extra links point there).
    mlflow_ui_url: str = "http://127.0.0.1:5000"
    # `mlcycle up` (embedded): where the Airflow api-server (UI, REST API v2) and the MLflow UI listen
    airflow_port: int = 8080
    mlflow_port: int = 5000
    # ... and, where Prometheus is installed, Prometheus, the StatsD bridge of Airflow's metrics
    # (UDP in, /metrics out) and the Ray head's metrics export port (Serve and mlcycle_* metrics)
    prometheus_port: int = 9090
    statsd_udp_port: int = 9125
    statsd_http_port: int = 9102
    ray_metrics_port: int = 9103
    # Alerts (docs/alerts.md): where `mlcycle up` runs Alertmanager where installed; where the steps
    # and Airflow's notifier send their events (unset: not sent, a log line says so; `mlcycle up`
    # sets it for its services); the receivers Alertmanager sends what fires to (a webhook, e-mail)
    alertmanager_port: int = 9093
    alertmanager_url: str | None = None
    alerts_webhook_url: str | None = None
    alerts_email_to: str | None = None
    alerts_smtp_smarthost: str | None = None  # host:port
    alerts_email_from: str = "mlcycle@localhost"
    # Bytes above which the hourly retention step alerts `MlcyclePlatformStorageFull` (None: no check):
    # the platform database (pg_database_size) and the artifact store (every object under the root).
    alerts_database_max_bytes: int | None = Field(default=None, gt=0)
    alerts_bucket_max_bytes: int | None = Field(default=None, gt=0)
    # Kubernetes: what the rendered pods look like.
    image: str = "mlcycle-step:latest"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    k8s_namespace: str = "mlcycle"
    k8s_service_account: str = "mlcycle-steps"
    k8s_env_secret: str | None = None
    # The Secret holding RAY_AUTH_TOKEN: only the pods of the steps that drive Ray Serve (canary)
    # get it; `k8s_env_secret` holds the database and S3 credentials every step needs, no more.
    k8s_ray_secret: str | None = None
    k8s_conn_id: str = "kubernetes_default"
    k8s_startup_timeout_s: int = 600
    k8s_schedule_timeout_s: int = 1800
    # Runtime `docker`: the network the step containers join (the Compose stack's) and the
    # variables they take from the worker's environment, as a pod takes `k8s_env_secret`.
    docker_network: str | None = None
    # A step that asks for a GPU, on an engine without the NVIDIA runtime: run on the CPU (`auto`),
    # fail (`require`); `off` never asks for one.
    docker_gpu: Literal["auto", "require", "off"] = "auto"
    docker_env_from: list[str] = ["MLCYCLE_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    # ... and those only the steps that drive Ray Serve (canary) take, as `k8s_ray_secret`
    docker_ray_env_from: list[str] = ["RAY_AUTH_TOKEN"]
    # The cluster's GPU node pool (JSON in the environment; the Helm chart sets them from its
    # values): added to every step that asks for a GPU, under what the spec itself says.
    k8s_gpu_node_selector: dict[str, str] = {}
    k8s_gpu_tolerations: list[Toleration] = []
    k8s_gpu_resource: str = "nvidia.com/gpu"
    # Every step pod: the registry's pull secrets and the identity its processes run as.
    k8s_image_pull_secrets: list[str] = []
    k8s_run_as_user: int = Field(default=10001, ge=1)
    k8s_run_as_group: int = Field(default=10001, ge=0)
    k8s_fs_group: int = Field(default=10001, ge=0)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @model_validator(mode="after")
    def _cluster_needs_externals(self) -> Settings:
        if self.profile == "cluster":
            missing = [
                f"MLCYCLE_{name.upper()}" for name in ("database_url", "artifact_root") if getattr(self, name) is None
            ]
            if missing:
                raise SettingsError(f"the cluster profile needs {', '.join(missing)}")
        return self

    @property
    def state_path(self) -> Path:
        """The state directory, absolute (relative paths are taken from the project dir)."""
        p = self.state_dir.expanduser()
        return p if p.is_absolute() else (self.project_dir / p).resolve()

    @property
    def specs_path(self) -> Path:
        return self.pipelines_dir or self.project_dir / "include" / "pipelines"

    @property
    def artifact_uri(self) -> str:
        """Where run-scoped artifacts live: a local directory or `s3://bucket/prefix`."""
        return self.artifact_root or str(self.state_path / "artifacts")

    @property
    def effective_runtime(self) -> Literal["local", "docker", "kubernetes"]:
        if self.runtime is not None:
            return self.runtime
        return "local" if self.profile == "embedded" else "kubernetes"

    def pod_env(self) -> dict[str, str]:
        """The non-secret settings a step pod needs; secrets come from `k8s_env_secret`."""
        env: dict[str, str] = {"MLCYCLE_PROFILE": self.profile}
        if self.profile == "embedded":
            env["MLCYCLE_STATE_DIR"] = str(self.state_path)
        optional = {
            "MLCYCLE_ARTIFACT_ROOT": self.artifact_root,
            "MLCYCLE_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "MLCYCLE_REDIS_URL": self.redis_url,
            "MLCYCLE_PIPELINES_DIR": str(self.pipelines_dir) if self.pipelines_dir else None,
            # the canary step deploys to the cluster's Ray Serve
            "MLCYCLE_RAY_ADDRESS": self.ray_address,
            # the steps that find drift or roll a canary back tell Alertmanager
            "MLCYCLE_ALERTMANAGER_URL": self.alertmanager_url,
        }
        env.update({k: v for k, v in optional.items() if v is not None})
        defaults = RetentionSettings.model_fields
        env.update(  # the retention step's pods; the defaults need no variable
            {
                f"MLCYCLE_RETENTION_{k.upper()}": str(v)
                for k, v in self.retention.model_dump().items()
                if v != defaults[k].default
            }
        )
        if self.s3_endpoint_url is not None:
            env["MLCYCLE_S3_REGION"] = self.s3_region
        if self.ray_address is not None:
            env["MLCYCLE_SERVE_HOST"] = self.serve_host
            env["MLCYCLE_SERVE_PORT"] = str(self.serve_port)
        return env


def load_settings() -> Settings:
    """Settings from the environment, with errors a user can read."""
    try:
        return Settings()
    except SettingsError:
        raise
    except ValueError as err:  # pydantic.ValidationError is a ValueError
        raise SettingsError(f"invalid MLCYCLE_* settings: {err}") from None


def pipeline_names(settings: Settings) -> list[str]:
    """The pipelines of the settings' pipelines directory (its spec files' names), sorted."""
    return [p.stem for p in spec_paths(settings.specs_path)]


def spec_for(settings: Settings, pipeline: str) -> PipelineSpec:
    """The spec of one pipeline of the settings' pipelines directory, or an error naming the known ones."""
    path = settings.specs_path / f"{pipeline}.yaml"
    if not path.exists():
        known = pipeline_names(settings)
        raise SpecError(f"no pipeline '{pipeline}' in {settings.specs_path} (known: {known})")
    return load_spec(path)


@contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore what was there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
