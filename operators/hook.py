"""`MlcycleHook`: the Airflow side of the `mlcycle` connection type, and the lookup a task does.

Airflow finds the hook through the provider info (`operators.provider`); the form's fields and
labels come from `pipelines.core.connection` (one table for both the declarative `conn-fields` of
Airflow 3.2+ and the hook methods earlier Airflow 3 releases call). `connection_settings_env` is
the thin adapter a running task calls: the connection from whatever secrets backend the Airflow
has, mapped to settings by the pure `connection_env`; no connection, no settings from it.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook

from pipelines.core.connection import (
    CONN_ID_ENV,
    CONN_TYPE,
    DEFAULT_CONN_ID,
    EXTRA_FIELDS,
    ConnectionFields,
    connection_env,
    ui_field_behaviour,
)
from pipelines.core.settings import Settings, load_settings, scoped_environ


class MlcycleHook(BaseHook):
    """The settings an `mlcycle` connection holds: platform database, object store, MLflow, Ray."""

    conn_name_attr = "mlcycle_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "mlcycle"

    def __init__(self, mlcycle_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlcycle_conn_id = mlcycle_conn_id

    def fields(self) -> ConnectionFields:
        """The connection's fields (raises Airflow's not-found error when there is none)."""
        conn = self.get_connection(self.mlcycle_conn_id)
        return ConnectionFields(conn.host, conn.port, conn.login, conn.password, conn.schema, conn.extra_dejson)

    def settings_env(self) -> dict[str, str]:
        """The settings' environment variables the connection sets."""
        return connection_env(self.fields())

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The form's hidden fields, labels and placeholders (Airflow 3.0 and 3.1 call this)."""
        shown = ui_field_behaviour()
        return {"hidden_fields": shown.pop("hidden-fields"), **shown}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """One text field per extra, secrets as password fields (Airflow 3.0 and 3.1 call this)."""
        from wtforms import PasswordField, StringField

        return {
            name: (PasswordField if f.secret else StringField)(f.label, description=f.description)
            for name, f in EXTRA_FIELDS.items()
        }


def connection_settings_env(conn_id: str | None = None) -> dict[str, str]:
    """The settings the task's `mlcycle` connection sets (`MLCYCLE_CONN_ID`, default
    `mlcycle_default`); empty when the Airflow has no such connection. Called when a task runs."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return MlcycleHook(conn_id or os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID).settings_env()
    except AirflowNotFoundException:
        return {}


def task_settings() -> Settings:
    """The settings of a running task: its `mlcycle` connection's over the environment's."""
    with scoped_environ(connection_settings_env()):
        return load_settings()
