"""The Compose stack under test: `make test-stack` built the images; this starts a project of its
own (`mlcycletest`, free ports on 127.0.0.1, its own volumes) and removes it all at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.local import stack as stack_mod
from tests.services import docker_engine_running

ROOT = Path(__file__).resolve().parents[2]
TIMINGS: dict[str, float] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # one stack, one story: keep the file's order
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
        s.down(volumes=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_line("stack timings (s): " + ", ".join(f"{k}={v:.0f}" for k, v in TIMINGS.items()))
