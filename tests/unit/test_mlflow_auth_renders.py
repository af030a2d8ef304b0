"""The chart and the Compose stack run the MLflow server with the basic-auth app and its admin
from their secrets, and the serving pods connect to the database as the serving role: checked
over the real `helm template` output and the compose file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from pipelines.cli.parser import build_parser
from pipelines.core.settings import Settings
from pipelines.io.db import SERVING_ROLE
from pipelines.io.tracking import server_command
from tests.unit.test_helm_chart import pod_specs, render

PROJECT = Path(__file__).resolve().parents[2]


def _server_argv(command: list[str]) -> list[str]:
    """What a rendered `mlcycle mlflow-server ...` command execs: its arguments, parsed by mlcycle's
    own parser, through the command builder `cmd_mlflow_server` uses."""
    assert command[:2] == ["mlcycle", "mlflow-server"], command
    args = build_parser().parse_args(command[1:])
    # the pod's database is the chart's or the stack's: a URL here, so no embedded PostgreSQL starts
    return server_command(Settings(database_url="postgresql://mlcycle@db:5432/mlcycle"), args.host, args.port)


def _user(compose_url: str) -> str | None:
    """The user of a compose file's URL (its `${...}` interpolations stand for the password)."""
    return urlsplit(re.sub(r"\$\{[^}]*\}", "password", compose_url)).username


def _secret_ref(container: dict[str, Any], name: str) -> dict[str, str] | None:
    for e in container.get("env", []):
        if e["name"] == name:
            return dict(e["valueFrom"]["secretKeyRef"])
    return None


def test_the_charts_mlflow_runs_basic_auth_with_its_admin_from_a_secret_only_it_reads() -> None:
    specs = dict(pod_specs(render()))
    (mlflow,) = specs["rel-mlcycle-mlflow"]["containers"]
    argv = _server_argv(mlflow["command"])
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert argv[argv.index("--port") + 1] == "5000"
    admin = {"name": "mlcycle-mlflow-admin", "key": "MLFLOW_AUTH_ADMIN_PASSWORD"}
    assert _secret_ref(mlflow, "MLFLOW_AUTH_ADMIN_PASSWORD") == admin
    others = [c for name, spec in specs.items() if name != "rel-mlcycle-mlflow" for c in spec["containers"]]
    assert all(_secret_ref(c, "MLFLOW_AUTH_ADMIN_PASSWORD") is None for c in others)


def test_the_charts_ray_pods_connect_as_the_serving_role_which_the_mlflow_pod_enables() -> None:
    specs = pod_specs(render())
    serving = {"name": "mlcycle-serving-db", "key": "MLCYCLE_DATABASE_URL"}
    rays = [(name, c) for name, spec in specs for c in spec["containers"] if c["name"] == "ray"]
    assert len(rays) >= 2
    for name, ray in rays:
        assert _secret_ref(ray, "MLCYCLE_DATABASE_URL") == serving, name  # over the envFrom's platform login
    (init,) = dict(specs)["rel-mlcycle-mlflow"]["initContainers"]
    assert init["command"] == ["mlcycle", "db", "serving-role"]
    assert _secret_ref(init, "MLCYCLE_SERVING_DATABASE_URL") == serving


def test_the_stacks_mlflow_runs_basic_auth_and_its_ray_head_connects_as_the_serving_role() -> None:
    services = yaml.safe_load((PROJECT / "docker-compose.yaml").read_text())["services"]
    argv = _server_argv(services["mlflow"]["command"])
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert services["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    readers = [n for n, s in services.items() if "MLFLOW_AUTH_ADMIN_PASSWORD" in (s.get("environment") or {})]
    assert readers == ["mlflow"]
    head = services["ray-head"]
    assert _user(head["environment"]["MLCYCLE_DATABASE_URL"]) == SERVING_ROLE
    assert head["depends_on"]["serving-role"] == {"condition": "service_completed_successfully"}
    role = services["serving-role"]
    assert role["command"] == ["mlcycle", "db", "serving-role"]
    assert _user(role["environment"]["MLCYCLE_SERVING_DATABASE_URL"]) == SERVING_ROLE
