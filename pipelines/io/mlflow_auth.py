"""MLflow's basic-auth app: every `mlflow server` of the platform asks for a login.

The steps and the serving path use MLflow through the platform database, never over HTTP; the
server (`mlflow server --app-name basic-auth`: the UI and the REST API) is what people and plain
clients reach, and it now refuses any request without credentials (401) and any write the user
has no permission for (403). Its users live in the `mlflow_auth` schema of the platform database
(migration 0013 creates it); `auth_config` is its config file, written at run time (mode 600: it
holds the database URL) and pointed to by `MLFLOW_AUTH_CONFIG_PATH`.

The one account the platform makes is the admin (`ADMIN_USER`), created by the server at its
first start from `MLFLOW_AUTH_ADMIN_PASSWORD`: the Compose stack's and the chart's secret, or on
one machine a password made once into `<state_dir>/mlflow-admin-password` (mode 600). Any other
user an admin adds starts with `DEFAULT_PERMISSION` (none) until granted READ/EDIT/MANAGE on an
experiment or registered model.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from pipelines.core.errors import SettingsError
from pipelines.core.settings import Settings
from pipelines.core.system import secret_file, write_private
from pipelines.io.tracking import schema_url

ADMIN_USER = "admin"
AUTH_SCHEMA = "mlflow_auth"
DEFAULT_PERMISSION = "NO_PERMISSIONS"
PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"  # noqa: S105 (a variable name)


def admin_password_file(settings: Settings) -> Path:
    return settings.state_path / "mlflow-admin-password"


def admin_password(settings: Settings) -> str:
    """The admin's password: `MLFLOW_AUTH_ADMIN_PASSWORD` (the stack's or the chart's secret),
    else, on one machine, the state directory's (made once, mode 600)."""
    env = os.environ.get(PASSWORD_ENV, "").strip()
    if env:
        return env
    if settings.profile != "embedded":
        raise SettingsError(f"the MLflow server needs {PASSWORD_ENV} (its admin's password) in the cluster profile")
    return secret_file(admin_password_file(settings), lambda: secrets.token_urlsafe(18))


def auth_config(database_url: str) -> str:
    """The basic-auth app's config file: users in the `mlflow_auth` schema of the platform
    database, no permission unless granted. Pure. (`%` is doubled: the file is read with
    configparser's interpolation.)"""
    lines = [
        "# written by mlcycle at the server's start; edits are overwritten",
        "[mlflow]",
        f"default_permission = {DEFAULT_PERMISSION}",
        f"database_uri = {schema_url(database_url, AUTH_SCHEMA).replace('%', '%%')}",
        f"admin_username = {ADMIN_USER}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
    ]
    return "\n".join(lines) + "\n"


def flask_secret(password: str) -> str:
    """The server's Flask secret (its CSRF tokens), derived from the admin's password so every
    replica and worker of one installation shares it without another secret to keep. Pure."""
    return hmac.new(password.encode(), b"mlcycle mlflow flask secret", hashlib.sha256).hexdigest()


def server_env(settings: Settings, database_url: str, config_dir: Path) -> dict[str, str]:
    """The variables `mlflow server --app-name basic-auth` needs; writes its config file (mode
    600) into `config_dir`."""
    path = config_dir / "mlflow-auth.ini"
    write_private(path, auth_config(database_url))
    password = admin_password(settings)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(path),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER,
        PASSWORD_ENV: password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret(password),
    }


def client_credentials(settings: Settings) -> dict[str, str]:
    """What an MLflow client sends to the platform's server: the admin's login, where this
    process knows it (on one machine; elsewhere with `MLFLOW_AUTH_ADMIN_PASSWORD` set)."""
    if settings.profile != "embedded" and not os.environ.get(PASSWORD_ENV, "").strip():
        return {}
    return {"MLFLOW_TRACKING_USERNAME": ADMIN_USER, "MLFLOW_TRACKING_PASSWORD": admin_password(settings)}
