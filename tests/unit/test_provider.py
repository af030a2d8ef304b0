"""The Airflow provider: the `mlcycle` connection's mapping to settings (pure), its precedence over
the environment (through Airflow's own environment-variable secrets backend), the provider info
Airflow validates, and the connection form's fields."""

from __future__ import annotations

import json
import tomllib
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
from airflow.providers_manager import _ensure_prefix_for_placeholders

from operators.hook import MlcycleHook, connection_settings_env, task_settings
from operators.provider import get_provider_info
from pipelines.core.connection import EXTRA_FIELDS, ConnectionFields, connection_env, database_url
from pipelines.core.settings import load_settings

PROJECT = Path(__file__).resolve().parents[2]
AIRFLOW = Path(jsonschema.__file__).parents[1] / "airflow"


# ------------------------------------------------------------------------- the mapping (pure)
def test_the_standard_fields_are_the_platform_database_with_login_and_password_quoted() -> None:
    conn = ConnectionFields(host="db.example", port=5433, login="ml cycle", password="p@ss/w:rd", schema="platform")
    assert database_url(conn) == "postgresql://ml%20cycle:p%40ss%2Fw%3Ard@db.example:5433/platform"


def test_a_host_that_is_a_directory_is_a_unix_socket_as_libpq_reads_it() -> None:
    conn = ConnectionFields(host="/var/run/postgresql", port=5432, login="postgres")
    assert database_url(conn) == "postgresql://postgres@/postgres?host=%2Fvar%2Frun%2Fpostgresql&port=5432"


def test_no_host_no_database() -> None:
    assert database_url(ConnectionFields(login="u", password="p")) is None
    assert "MLCYCLE_DATABASE_URL" not in connection_env(ConnectionFields(login="u", password="p"))


def test_extras_set_their_variables_and_empty_ones_set_nothing() -> None:
    conn = ConnectionFields(
        extra={
            "artifact_root": "s3://bucket/runs",
            "s3_endpoint_url": "http://store:8333",
            "aws_access_key_id": "AK",
            "aws_secret_access_key": "SK",
            "ray_address": "ray://head:10001",
            "mlflow_ui_url": "",
            "runtime": None,
            "extra__mlcycle__k8s_namespace": "ml",  # the key older Airflow forms stored
        }
    )
    assert connection_env(conn) == {
        "MLCYCLE_ARTIFACT_ROOT": "s3://bucket/runs",
        "MLCYCLE_S3_ENDPOINT_URL": "http://store:8333",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "MLCYCLE_RAY_ADDRESS": "ray://head:10001",
        "MLCYCLE_K8S_NAMESPACE": "ml",
    }


def test_every_extra_sets_a_setting_the_settings_read_or_a_standard_credential() -> None:
    from pipelines.core.settings import Settings

    known = {f"MLCYCLE_{name.upper()}" for name in Settings.model_fields}
    credentials = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"}
    assert {f.env for f in EXTRA_FIELDS.values()} - known <= credentials


# ------------------------------------------------- the adapter: Airflow's secrets backends at run time
CONN = {
    "conn_type": "mlcycle",
    "host": "db.cluster",
    "login": "mlcycle",
    "password": "db-password-of-the-connection",
    "schema": "mlcycle",
    "extra": {"profile": "cluster", "artifact_root": "s3://from-the-connection/runs"},
}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [f.env for f in EXTRA_FIELDS.values()] + ["MLCYCLE_DATABASE_URL", "MLCYCLE_CONN_ID"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLCYCLE_DATABASE_URL", "postgresql://env@db.env/env")
    monkeypatch.setenv("MLCYCLE_S3_ENDPOINT_URL", "http://store.env:8333")
    monkeypatch.setenv("MLCYCLE_ARTIFACT_ROOT", "s3://from-the-environment/runs")


@pytest.mark.usefixtures("environment")
def test_the_connection_wins_over_the_environment_and_what_it_leaves_empty_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MLCYCLE_DEFAULT", json.dumps(CONN))
    settings = task_settings()
    assert settings.profile == "cluster"
    assert settings.database_url == "postgresql://mlcycle:db-password-of-the-connection@db.cluster/mlcycle"
    assert settings.artifact_root == "s3://from-the-connection/runs"
    assert settings.s3_endpoint_url == "http://store.env:8333"  # not in the connection
    assert load_settings().database_url == "postgresql://env@db.env/env"  # the environment is restored


@pytest.mark.usefixtures("environment")
def test_no_connection_means_the_environment_alone() -> None:
    assert connection_settings_env() == {}
    assert task_settings() == load_settings()


@pytest.mark.usefixtures("environment")
def test_the_connection_id_comes_from_mlcycle_conn_id_and_a_uri_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MLCYCLE_DEFAULT", json.dumps(CONN))
    monkeypatch.setenv(
        "AIRFLOW_CONN_TEAM_ML", "mlcycle://team:pw@%2Fsocket%2Fdir/ml?ray_address=ray%3A%2F%2Fhead%3A10001"
    )
    monkeypatch.setenv("MLCYCLE_CONN_ID", "team_ml")
    assert connection_settings_env() == {
        "MLCYCLE_DATABASE_URL": "postgresql://team:pw@/ml?host=%2Fsocket%2Fdir",
        "MLCYCLE_RAY_ADDRESS": "ray://head:10001",
    }


# --------------------------------------------------------------------------- the provider info
def test_the_provider_info_is_what_airflow_validates_and_names_this_distribution() -> None:
    info = get_provider_info()
    jsonschema.validate(info, json.loads((AIRFLOW / "provider_info.schema.json").read_text()))
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    assert info["package-name"] == project["name"]  # Airflow refuses a provider whose name differs
    assert info["versions"] == [metadata.version("mlcycle")]
    assert project["entry-points"]["apache_airflow_provider"]["provider_info"] == "operators.provider:get_provider_info"


def test_the_connection_type_names_the_hook_that_declares_it() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    module, _, name = conn_type["hook-class-name"].rpartition(".")
    hook = getattr(__import__(module, fromlist=[name]), name)
    assert hook is MlcycleHook
    assert (conn_type["connection-type"], hook.conn_type, hook.default_conn_name) == (
        "mlcycle",
        "mlcycle",
        "mlcycle_default",
    )


def test_the_form_labels_every_field_hides_the_raw_extra_and_keeps_secrets_as_passwords() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    fields, behaviour = conn_type["conn-fields"], conn_type["ui-field-behaviour"]
    assert set(fields) == set(EXTRA_FIELDS)
    assert all(f["label"] and f["description"] for f in fields.values())
    secret = {n for n, f in fields.items() if f["schema"].get("format") == "password"}
    assert secret == {"aws_secret_access_key", "ray_auth_token", "redis_url"}
    assert behaviour["hidden-fields"] == ["extra"]
    assert behaviour["relabeling"]["password"] == "Database password"
    # as Airflow converts and checks it (providers_manager._add_customized_fields)
    customized = {
        "hidden_fields": behaviour["hidden-fields"],
        **{k: behaviour[k] for k in ("relabeling", "placeholders")},
    }
    schema = json.loads((AIRFLOW / "customized_form_field_behaviours.schema.json").read_text())
    jsonschema.validate(customized, schema)
    placeholders = _ensure_prefix_for_placeholders(customized, "mlcycle")["placeholders"]
    assert placeholders["extra__mlcycle__artifact_root"] == "s3://mlcycle/artifacts"
    assert MlcycleHook.get_ui_field_behaviour()["hidden_fields"] == ["extra"]  # the same, for Airflow 3.0/3.1


def test_the_hook_widgets_of_older_airflow_are_the_same_fields() -> None:
    widgets = MlcycleHook.get_connection_form_widgets()
    assert set(widgets) == set(EXTRA_FIELDS)
    assert widgets["aws_secret_access_key"].field_class.__name__ == "PasswordField"


@pytest.mark.usefixtures("environment")
def test_on_kubernetes_the_connections_secrets_stay_out_of_the_pod(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The worker reads the connection; the pod it renders names the Secret, never the values."""
    from operators import PipelineStepOperator
    from pipelines.core.settings import scoped_environ
    from tests.specs import write_spec

    write_spec(tmp_path)
    extra = {**CONN["extra"], "aws_secret_access_key": "s3-secret-of-the-connection", "k8s_env_secret": "mlcycle-env"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLCYCLE_DEFAULT", json.dumps({**CONN, "extra": {**extra, "pipelines_dir": str(tmp_path)}})
    )
    with scoped_environ(connection_settings_env()):
        pod = PipelineStepOperator(task_id="ingest", pipeline="churn", step="ingest").render_pod("run-1")
    (container,) = pod["spec"]["containers"]
    rendered = json.dumps(pod)
    assert "db-password-of-the-connection" not in rendered and "s3-secret-of-the-connection" not in rendered
    assert {"name": "MLCYCLE_ARTIFACT_ROOT", "value": "s3://from-the-connection/runs"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "mlcycle-env"}}]
