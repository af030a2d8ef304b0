"""Runtime `local`: run a pod's container (command, args, env) as a process on this host.

The child gets this process's environment overlaid with the pod's env, so secrets that reach a pod
through `envFrom` reach the local process from the environment. Output is streamed line by line;
the exit code is the result. The XCom path of the pod is replaced by a temporary file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from pipelines.core.pod import XCOM_PATH, container_of
from pipelines.core.system import executable


def exit_description(returncode: int) -> str:
    """How a process ended, as an operator reads it: a signal by name (a negative code from
    `subprocess`, 128 + N from a container's shell), else the code. Pure."""
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 128 + 65 else 0
    if number:
        try:
            return f"{returncode} ({signal.Signals(number).name})"
        except ValueError:
            pass
    return str(returncode)


class StepFailed(RuntimeError):
    """The step's process exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, tail: list[str]) -> None:
        self.returncode = returncode
        self.tail = tail
        last = "\n".join(tail[-15:])
        super().__init__(f"`{' '.join(argv)}` exited with {exit_description(returncode)}; last lines:\n{last}")


def local_argv_env(
    manifest: dict[str, Any], base_env: dict[str, str], xcom_file: str
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that reproduce the pod's container on this host. Pure."""
    c = container_of(manifest)
    argv = [*c.get("command", []), *c.get("args", [])]
    env = dict(base_env)
    for item in c.get("env", []):
        env[item["name"]] = item["value"]
    if env.get("MLCYCLE_XCOM_PATH") == XCOM_PATH:
        env["MLCYCLE_XCOM_PATH"] = xcom_file
    env.setdefault("PYTHONUNBUFFERED", "1")
    return argv, env


class LocalProcess:
    """One run of a pod's container as a local process; `terminate()` from another thread."""

    def __init__(self, manifest: dict[str, Any], cwd: str | None = None) -> None:
        self.manifest, self.cwd = manifest, cwd
        self.proc: subprocess.Popen[str] | None = None

    def run(self, log: Callable[[str], None]) -> Any:
        """Run to completion; returns the step's XCom result (or None); raises StepFailed."""
        with tempfile.TemporaryDirectory(prefix="mlcycle-xcom-") as tmp:
            xcom = os.path.join(tmp, "return.json")
            argv, env = local_argv_env(self.manifest, dict(os.environ), xcom)
            argv[0] = executable(argv[0], path_first=True)
            tail: list[str] = []
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=self.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            try:
                for line in self.proc.stdout or ():  # a pipe: stdout=PIPE
                    line = line.rstrip("\n")
                    log(line)
                    tail = [*tail[-49:], line]
                code = self.proc.wait()
            finally:
                self.terminate()
            if code != 0:
                raise StepFailed(argv, code, tail)
            if os.path.exists(xcom):
                with open(xcom) as fh:
                    return json.load(fh)
            return None

    def terminate(self, grace_s: float = 10.0) -> None:
        """Stop the process group (SIGTERM, then SIGKILL after `grace_s`)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
