"""Runtime `docker` on a real engine: output streamed, exit codes, the XCom file, the container
removed, a stop from another thread. Uses the base image (`tools/base_image.sh` provides it);
the `step` image itself runs in tests/stack."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from typing import Any

import pytest

from operators.container import DockerContainer, container_config
from operators.local import StepFailed
from pipelines.core.pod import XCOM_PATH
from tests.services import docker_engine_running

pytestmark = [pytest.mark.integration, pytest.mark.docker]
IMAGE = "debian:bookworm-slim"


@pytest.fixture(scope="module")
def client() -> Any:
    if not docker_engine_running():
        pytest.skip("no Docker engine here (`bash tools/docker_engine.sh` installs one; CI runs it)")
    subprocess.run(["bash", "tools/base_image.sh"], check=True)
    import docker

    return docker.from_env()


def _pod(script: str, run_id: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "mlcycle-test-step",
            "labels": {"mlcycle.io/step": "t"},
            "annotations": {"mlcycle.io/run-id": run_id},
        },
        "spec": {
            "containers": [
                {
                    "name": "base",
                    "image": IMAGE,
                    "command": ["sh", "-c"],
                    "args": [script],
                    "env": [
                        {"name": k, "value": v} for k, v in {"MLCYCLE_XCOM_PATH": XCOM_PATH, **(env or {})}.items()
                    ],
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                }
            ]
        },
    }


def _run(
    client: Any, pod: dict[str, Any], worker: dict[str, str] | None = None
) -> tuple[Any, list[str], DockerContainer]:
    runner = DockerContainer(pod, container_config(pod, worker or {}, ["SECRET_TOKEN"]), "Never")
    lines: list[str] = []
    return runner.run(lines.append, client), lines, runner


def _leftovers(client: Any, run_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"mlcycle.io/run-id={run_id}"})


def test_output_env_limits_and_result(client: Any) -> None:
    script = (
        'echo "hello $GREETING"; echo "secret=$SECRET_TOKEN"; cat /sys/fs/cgroup/memory.max 2>/dev/null '
        "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes; mkdir -p /airflow/xcom; "
        'printf \'{"rows": 3}\' > "$MLCYCLE_XCOM_PATH"; printf "no newline at the end"'
    )
    pod = _pod(script, "docker-ok", {"GREETING": "pod"})
    result, lines, _ = _run(client, pod, {"SECRET_TOKEN": "s3cr3t", "OTHER": "x"})
    assert result == {"rows": 3}
    assert lines[:2] == ["hello pod", "secret=s3cr3t"]
    assert int(lines[2]) == 64 * 2**20  # the pod's memory limit is the container's
    assert lines[-1] == "no newline at the end"
    assert _leftovers(client, "docker-ok") == []


def test_no_result_file_is_none(client: Any) -> None:
    assert _run(client, _pod("echo done", "docker-none"))[0] is None


def test_a_failing_step_keeps_its_exit_code_and_tail(client: Any) -> None:
    with pytest.raises(StepFailed) as err:
        _run(client, _pod("echo bad input >&2; exit 3", "docker-fail"))
    assert err.value.returncode == 3
    assert err.value.tail == ["bad input"]
    assert _leftovers(client, "docker-fail") == []


def test_a_missing_image_is_a_clear_error(client: Any) -> None:
    pod = _pod("true", "docker-missing")
    pod["spec"]["containers"][0]["image"] = "mlcycle-no-such-image:never"
    with pytest.raises(RuntimeError, match="make images"):
        _run(client, pod)


def test_terminate_stops_a_running_step(client: Any) -> None:
    pod = _pod("echo up; sleep 120", "docker-stop")
    runner = DockerContainer(pod, container_config(pod, {}, []), "Never")
    lines: list[str] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            runner.run(lines.append, client)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=go)
    started = time.monotonic()
    t.start()
    while "up" not in lines and time.monotonic() - started < 60:
        time.sleep(0.2)
    runner.terminate(grace_s=1)
    t.join(60)
    assert not t.is_alive()
    assert isinstance(errors[0], StepFailed) and errors[0].returncode in (137, 143)
    assert time.monotonic() - started < 60
    assert _leftovers(client, "docker-stop") == []


def test_a_container_left_running_by_an_earlier_try_is_removed_before_the_step_runs_again(client: Any) -> None:
    """The task process of a try died (its scheduler killed): its container went on running. The
    next try removes it first, and only it: another run's container of the same step is kept."""
    pod = _pod("sleep 120", "docker-orphan")
    other = _pod("sleep 120", "docker-orphan-other")
    orphan = client.containers.run(**{**container_config(pod, {}, []), "detach": True})
    neighbour = client.containers.run(**{**container_config(other, {}, []), "detach": True})
    try:
        _, lines, _ = _run(client, _pod("echo again", "docker-orphan"))
        assert "again" in lines
        assert any(orphan.name in line and "earlier try" in line for line in lines), lines
        assert _leftovers(client, "docker-orphan") == []
        neighbour.reload()
        assert neighbour.status == "running"
    finally:
        for c in (orphan, neighbour):
            with contextlib.suppress(Exception):
                c.remove(force=True)
