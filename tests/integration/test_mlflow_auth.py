"""The platform's MLflow server (`mlcycle up`'s own command and environment) asks for a login: an
unauthenticated client cannot move `champion`, the platform's admin can, a user the admin adds
sees nothing until granted; its users live in the platform database's `mlflow_auth` schema."""

from __future__ import annotations

import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from pipelines.core.settings import Settings
from pipelines.core.system import stop_processes
from pipelines.io import db, mlflow_auth
from pipelines.io.registry import CHAMPION, alias_version, model_name, move_alias
from pipelines.io.tracking import setup_mlflow
from pipelines.local.platform import platform_dir, service_argv
from tests.services import free_port_pairs

pytestmark = pytest.mark.integration
PIPELINE = "authz"
LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture(scope="module")
def server(platform: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    """`mlflow server` exactly as `mlcycle up --exec mlflow` runs it, on a free port, with a
    registered model whose `champion` is v1 (made the platform's way: through the database)."""
    (port,) = free_port_pairs(1)
    settings = platform.model_copy(
        update={"mlflow_port": port, "artifact_root": str(tmp_path_factory.mktemp("mlflow-artifacts"))}
    )
    setup_mlflow(settings, PIPELINE)
    client = mlflow.MlflowClient()
    client.create_registered_model(model_name(PIPELINE))
    for _ in range(2):
        client.create_model_version(model_name(PIPELINE), source=f"{settings.artifact_root}/none")
    move_alias(settings, client, pipeline=PIPELINE, alias=CHAMPION, version=1, actor="test", run_id="r", reason="t")
    argv, env = service_argv(settings, "mlflow", db.database_url(settings))
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(900):  # bounded: 3 minutes on a busy machine
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:  # no login: the health check
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("mlflow server did not answer /health")
        yield settings, url
    finally:
        stop_processes([proc])


@pytest.fixture
def anonymous(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LOGIN:
        monkeypatch.delenv(name, raising=False)


def _champion(settings: Settings) -> int:
    """The alias as the platform reads it (the database, not the server)."""
    setup_mlflow(settings, PIPELINE)
    found = alias_version(mlflow.MlflowClient(), model_name(PIPELINE), CHAMPION)
    return int(found.version)


def test_the_server_runs_the_basic_auth_app(server: tuple[Settings, str]) -> None:
    settings, _ = server
    argv, env = service_argv(settings, "mlflow", db.database_url(settings))
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    config = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert config.parent == platform_dir(settings) and stat.S_IMODE(config.stat().st_mode) == 0o600
    secret = mlflow_auth.admin_password_file(settings)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and env["MLFLOW_AUTH_ADMIN_PASSWORD"] == secret.read_text()
    with db.connect(settings) as conn:  # its users: the platform database, their own schema
        users = conn.execute("SELECT username, is_admin FROM mlflow_auth.users").fetchall()
    assert users == [(mlflow_auth.ADMIN_USER, True)]


@pytest.mark.usefixtures("anonymous")
def test_an_unauthenticated_client_cannot_move_the_champion(server: tuple[Settings, str]) -> None:
    settings, url = server
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    with pytest.raises(MlflowException, match="401"):
        client.set_registered_model_alias(model_name(PIPELINE), CHAMPION, "2")
    with pytest.raises(MlflowException, match="401"):
        client.get_model_version_by_alias(model_name(PIPELINE), CHAMPION)
    with pytest.raises(MlflowException, match="401"):
        client.create_model_version(model_name(PIPELINE), source=f"{settings.artifact_root}/evil")
    assert httpx.get(f"{url}/ajax-api/2.0/mlflow/registered-models/search", timeout=10).status_code == 401
    assert _champion(settings) == 1


def test_a_wrong_password_is_refused(server: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, url = server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow_auth.ADMIN_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    with pytest.raises(MlflowException, match="401"):
        client.set_registered_model_alias(model_name(PIPELINE), CHAMPION, "2")
    assert _champion(settings) == 1


def test_a_user_the_admin_adds_has_no_permission_until_granted(
    server: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, url = server
    for name, value in mlflow_auth.client_credentials(settings).items():
        monkeypatch.setenv(name, value)
    get_app_client("basic-auth", tracking_uri=url).create_user("viewer", "viewer-password-1")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "viewer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "viewer-password-1")
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    with pytest.raises(MlflowException, match="403"):
        client.get_model_version_by_alias(model_name(PIPELINE), CHAMPION)
    with pytest.raises(MlflowException, match="403"):
        client.set_registered_model_alias(model_name(PIPELINE), CHAMPION, "2")
    assert _champion(settings) == 1


def test_the_platforms_identity_can_move_the_champion(
    server: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, url = server
    for name, value in mlflow_auth.client_credentials(settings).items():
        monkeypatch.setenv(name, value)
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    client.set_registered_model_alias(model_name(PIPELINE), CHAMPION, "2")
    assert int(client.get_model_version_by_alias(model_name(PIPELINE), CHAMPION).version) == 2
    assert _champion(settings) == 2
    client.set_registered_model_alias(model_name(PIPELINE), CHAMPION, "1")
