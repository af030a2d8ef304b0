from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest

from operators.local import LocalProcess, StepFailed, exit_description, local_argv_env
from pipelines.core.pod import XCOM_PATH
from pipelines.core.system import executable


def _pod(command: list[str], args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    env = {"MLCYCLE_XCOM_PATH": XCOM_PATH, **(env or {})}
    return {
        "spec": {
            "containers": [
                {
                    "name": "base",
                    "command": command,
                    "args": args,
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }
            ]
        }
    }


def test_argv_env_reproduce_the_container() -> None:
    argv, env = local_argv_env(
        _pod(["mlcycle"], ["step", "ingest"], {"A": "1"}), {"PATH": "/bin", "A": "0"}, "/tmp/x.json"
    )
    assert argv == ["mlcycle", "step", "ingest"]
    assert env["A"] == "1"  # the pod's env wins over the host's
    assert env["PATH"] == "/bin"
    assert env["MLCYCLE_XCOM_PATH"] == "/tmp/x.json"


def test_streams_output_and_returns_the_xcom_result() -> None:
    code = (
        "import json, os\n"
        "print('line one'); print('line two', flush=True)\n"
        "print(os.environ['GREETING'])\n"
        "json.dump({'rows': 3}, open(os.environ['MLCYCLE_XCOM_PATH'], 'w'))\n"
    )
    lines: list[str] = []
    result = LocalProcess(_pod([sys.executable], ["-c", code], {"GREETING": "hello"})).run(lines.append)
    assert lines == ["line one", "line two", "hello"]
    assert result == {"rows": 3}


def test_non_zero_exit_fails_with_the_tail() -> None:
    code = "import sys; print('about to fail'); sys.exit(3)"
    with pytest.raises(StepFailed) as err:
        LocalProcess(_pod([sys.executable], ["-c", code])).run(lambda _: None)
    assert err.value.returncode == 3
    assert "about to fail" in str(err.value)


def test_terminate_stops_the_process_group() -> None:
    proc = LocalProcess(_pod([sys.executable], ["-c", "import time; print('up', flush=True); time.sleep(60)"]))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            proc.run(lambda _: None)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    started = time.monotonic()
    t.start()
    while proc.proc is None and time.monotonic() - started < 10:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.terminate(grace_s=5)
    t.join(15)
    assert not t.is_alive()
    assert isinstance(errors[0], StepFailed) and errors[0].returncode < 0


def test_resolve_executable_finds_the_venv_script() -> None:
    assert executable("mlcycle", path_first=True).endswith("mlcycle")
    with pytest.raises(FileNotFoundError):
        executable("surely-not-a-command-here", path_first=True)


@pytest.mark.parametrize(
    ("code", "text"),
    [(-9, "-9 (SIGKILL)"), (137, "137 (SIGKILL)"), (143, "143 (SIGTERM)"), (1, "1"), (3, "3"), (255, "255")],
)
def test_an_exit_names_the_signal_that_ended_the_process(code: int, text: str) -> None:
    assert exit_description(code) == text
