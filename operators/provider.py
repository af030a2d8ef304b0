"""The provider info Airflow reads through the distribution's `apache_airflow_provider` entry point.

`airflow providers list` shows mlcycle from it, and the connection form of type `mlcycle` is built
from it without importing the hook. Importing this module loads nothing of Airflow.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from pipelines.core.connection import connection_type_info

PACKAGE = "mlcycle"
HOOK = "operators.hook.MlcycleHook"


def get_provider_info() -> dict[str, Any]:
    """mlcycle as an Airflow provider: its name, version, hook, operators and connection type."""
    return {
        "package-name": PACKAGE,
        "name": "mlcycle",
        "description": "mlcycle's lifecycle steps as Airflow operators, the DAG factory of pipeline specs and "
        "the `mlcycle` connection type (platform database, object store, MLflow, Ray).",
        "versions": [metadata.version(PACKAGE)],
        "integrations": [{"integration-name": "mlcycle", "tags": ["software"]}],
        "operators": [
            {
                "integration-name": "mlcycle",
                "python-modules": ["operators.step", "operators.approval", "operators.trigger", "operators.factory"],
            }
        ],
        "hooks": [{"integration-name": "mlcycle", "python-modules": ["operators.hook"]}],
        "connection-types": [connection_type_info(HOOK)],
    }
