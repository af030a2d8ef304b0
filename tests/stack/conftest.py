"""The Compose stack under test: `make test-stack` built the images; this starts a project of its
own (`mlcycletest`, free ports on 127.0.0.1, its own volumes) and removes it all at the end.

What the tests of a stack share is a fixture, never module state, so that each test passes alone
(`pytest tests/stack -k <one>`, `pytest tests/faults -k <one>`):
- `stack`: the running stack, one a session;
- `lifecycle`: one `churn_lifecycle` run through Airflow's REST API, made by the first test that
  asks for it and the same run for every later one;
- `champion`: the version the registry's `champion` alias names: the one already on the stack
  (a test before made it), else the one `lifecycle` makes.
In file order no fixture adds a lifecycle run: the first test that needs a finished run is the one
that makes it (the lifecycle test here, the first fault run in tests/faults).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.local import stack as stack_mod
from tests.services import docker_engine_running

ROOT = Path(__file__).resolve().parents[2]
TIMINGS: dict[str, float] = {}
PIPELINE = "churn"
DAG = f"{PIPELINE}_lifecycle"
MODEL = "mlcycle-churn"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest keeps the file's order: one stack, one story, one lifecycle run. No test needs that
    # order (what they share is a fixture); it is the order that makes each thing once.
    for item in items:
        item.add_marker(pytest.mark.timeout(1800))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_mod.Stack]:
    if not docker_engine_running():
        pytest.fail("no Docker engine: `bash tools/docker_engine.sh` installs and starts one")
    env = tmp_path_factory.mktemp("stack") / "stack.env"
    stack_mod.write_env(env, "mlcycletest", free_ports=True)
    s = stack_mod.Stack(ROOT, env)
    try:
        TIMINGS["stack_up_s"] = s.up(timeout=900)
        yield s
    finally:
        # the services' logs outlive the stack: what a failed run's reader needs first
        logs = s.compose("logs", "--no-color", "--timestamps", check=False, capture=True)
        out = ROOT / ".test-artifacts"
        out.mkdir(exist_ok=True)
        (out / "stack-logs.txt").write_text(logs.stdout + logs.stderr)
        s.down(volumes=True)


# ----------------------------------------------------------------------------- the stack's parts
def _url(stack: stack_mod.Stack, key: str, path: str = "") -> str:
    return f"http://127.0.0.1:{stack.port(key)}{path}"


def _airflow(stack: stack_mod.Stack) -> Any:
    from pipelines.local.local_airflow import AirflowClient

    return AirflowClient(_url(stack, "AIRFLOW_PORT"), stack.values["AIRFLOW_ADMIN_PASSWORD"])


def _mlflow_login(stack: stack_mod.Stack) -> tuple[str, str]:
    """The MLflow server's admin (its basic-auth app refuses a request without a login)."""
    return ("admin", stack.values["MLFLOW_ADMIN_PASSWORD"])


def _champion(stack: stack_mod.Stack) -> dict[str, Any]:
    """The model version the `champion` alias names (MLflow's REST API); raises when there is none."""
    r = httpx.get(
        _url(stack, "MLFLOW_PORT", "/api/2.0/mlflow/registered-models/alias"),
        params={"name": MODEL, "alias": "champion"},
        auth=_mlflow_login(stack),
        timeout=30,
    )
    r.raise_for_status()
    version: dict[str, Any] = r.json()["model_version"]
    return version


def _has_champion(stack: stack_mod.Stack) -> bool:
    """Whether the registry has the model and its `champion` alias (404: no model yet)."""
    r = httpx.get(
        _url(stack, "MLFLOW_PORT", "/api/2.0/mlflow/registered-models/get"),
        params={"name": MODEL},
        auth=_mlflow_login(stack),
        timeout=30,
    )
    if r.status_code == 404:
        return False
    r.raise_for_status()
    return any(a["alias"] == "champion" for a in r.json()["registered_model"].get("aliases", []))


class StepStarts:
    """The step containers started while it listens (the Docker engine's live event stream; its
    buffer of past events is too short, healthchecks fill it)."""

    def __init__(self) -> None:
        import docker

        self.started: list[dict[str, str]] = []
        self.stream = docker.from_env().events(decode=True, filters={"event": "start", "label": "mlcycle.io/step"})
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends with close()
            for event in self.stream:
                self.started.append(event["Actor"]["Attributes"])

    def close(self) -> None:
        self.stream.close()
        self.thread.join(10)


# ------------------------------------------------------------------------------ shared fixtures
@dataclass(frozen=True)
class Lifecycle:
    """One `churn_lifecycle` run triggered through the REST API, as it ended."""

    run_id: str
    conf: dict[str, Any]
    run: dict[str, Any]  # the DAG run as the API answers once it ended
    states: dict[str, str | None]  # task id: state
    started: list[dict[str, str]]  # the labels of the run's step containers, as each started


@pytest.fixture(scope="session")
def lifecycle(stack: stack_mod.Stack) -> Lifecycle:
    """`churn_lifecycle` triggered through Airflow's REST API v2 with params (what the UI's Trigger
    form sends) and waited for, the step containers it starts recorded. It judges nothing: the
    lifecycle test asserts how the run went, `champion` asserts it succeeded."""
    airflow = _airflow(stack)
    airflow.wait_for_dag(DAG, timeout=300)
    conf = {"n_trials": 2}
    starts = StepStarts()
    started = time.monotonic()
    try:
        run_id = airflow.trigger(DAG, conf=conf)
        run = airflow.wait_run(DAG, run_id, timeout=1800)
    finally:
        starts.close()
    TIMINGS["lifecycle_s"] = time.monotonic() - started
    mine = [a for a in starts.started if a.get("mlcycle.io/run-id") == run_id]
    return Lifecycle(run_id, conf, run, airflow.task_states(DAG, run_id), mine)


@pytest.fixture(scope="session")
def champion(stack: stack_mod.Stack, request: pytest.FixtureRequest) -> int:
    """The champion's version number: the stack's when a test before made one (the lifecycle test,
    the fault suite's first run), else `lifecycle`'s, which must have succeeded."""
    if not _has_champion(stack):
        run: Lifecycle = request.getfixturevalue("lifecycle")
        assert run.run["state"] == "success", run.states
    return int(_champion(stack)["version"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_line("stack timings (s): " + ", ".join(f"{k}={v:.0f}" for k, v in TIMINGS.items()))
