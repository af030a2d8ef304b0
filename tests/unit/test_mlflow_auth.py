"""The MLflow server's basic-auth config and the serving role's URL: pure pieces, read back by
MLflow's own config reader where it reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from pipelines.core.settings import Settings
from pipelines.io import db, mlflow_auth
from pipelines.io.clientenv import client_env
from pipelines.io.tracking import schema_url, server_command

URL = "postgresql://mlcycle:p%25ss%40word@db.internal:5432/mlcycle?sslmode=require"


def test_the_server_runs_the_basic_auth_app(tmp_path: Path) -> None:
    # a database URL given: no embedded PostgreSQL is started (and left running) for a unit test
    argv = server_command(Settings(state_dir=tmp_path, database_url=URL), "127.0.0.1", 5000)
    assert argv[:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert not (tmp_path / "pg").exists()


def test_mlflow_reads_the_config_the_platform_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.setenv(mlflow_auth.PASSWORD_ENV, "from-the-secret")
    env = mlflow_auth.server_env(Settings(state_dir=tmp_path), URL, tmp_path / "conf")
    assert (Path(env["MLFLOW_AUTH_CONFIG_PATH"]).stat().st_mode & 0o777) == 0o600
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", env["MLFLOW_AUTH_CONFIG_PATH"])
    config = read_auth_config()
    assert config.database_uri == schema_url(URL, "mlflow_auth")  # the percent signs survive
    assert config.default_permission == "NO_PERMISSIONS"
    assert (config.admin_username, config.admin_password) == ("admin", "from-the-secret")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == mlflow_auth.flask_secret("from-the-secret") != "from-the-secret"


def test_the_embedded_admin_password_is_made_once_mode_600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mlflow_auth.PASSWORD_ENV, raising=False)
    settings = Settings(state_dir=tmp_path)
    first = mlflow_auth.admin_password(settings)
    assert len(first) >= 20 and mlflow_auth.admin_password(settings) == first
    assert (mlflow_auth.admin_password_file(settings).stat().st_mode & 0o777) == 0o600
    login = mlflow_auth.client_credentials(settings)
    assert login == {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": first}
    names = [v.name for v in client_env(settings, URL, "churn", login)]
    assert names[:3] == ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]


def test_the_cluster_profile_needs_the_admin_password_from_its_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(mlflow_auth.PASSWORD_ENV, raising=False)
    cluster = Settings(state_dir=tmp_path, profile="cluster", database_url=URL, artifact_root="s3://b/a")
    with pytest.raises(Exception, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        mlflow_auth.admin_password(cluster)
    assert mlflow_auth.client_credentials(cluster) == {}  # `mlcycle env` then prints no login
    assert not mlflow_auth.admin_password_file(cluster).exists()


def test_the_serving_url_is_the_platform_database_as_another_user() -> None:
    info = conninfo_to_dict(db.with_login(URL, "mlcycle_serving", "s/cr@t"))
    assert (info["user"], info["password"]) == ("mlcycle_serving", "s/cr@t")
    assert (info["host"], info["port"], info["dbname"], info["sslmode"]) == (
        "db.internal",
        "5432",
        "mlcycle",
        "require",
    )
    socket = db.with_login("postgresql://postgres:@/postgres?host=/tmp/state/pg", "mlcycle_serving", "x")
    assert conninfo_to_dict(socket) == {
        "user": "mlcycle_serving",
        "password": "x",
        "dbname": "postgres",
        "host": "/tmp/state/pg",
    }
