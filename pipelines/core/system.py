"""Small operating-system helpers every layer uses: a secret file, an executable of this
environment, a child process stopped politely, and the processes a start marked (by a variable in
their environment, which every descendant inherits) stopped without touching any other."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The value kept in `path` (mode 600), made by `make()` the first time; the file is created
    exclusively, so two processes racing for it never both write."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(make())
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, mode 600 from its first byte (a temporary file renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def executable(name: str, *, path_first: bool = False) -> str:
    """A console script of this environment (the venv's `bin/`, beside the interpreter), so the
    same installation runs it; with `path_first`, the one on PATH wins where there is one."""
    found = shutil.which(name) if path_first else None
    if found:
        return found
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name}: not in {beside.parent} nor on PATH")


def stop_processes(procs: Iterable[subprocess.Popen[bytes] | subprocess.Popen[str]], grace_s: float = 30.0) -> None:
    """SIGTERM every process, wait up to `grace_s` for each, then SIGKILL the ones still running."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def carries_mark(environ: Mapping[str, str], name: str, value: str) -> bool:
    """Whether a process's environment holds the mark `name=value` its starter gave it. Pure."""
    return bool(value) and environ.get(name) == value


def marked_processes(name: str, value: str) -> list[Any]:
    """The processes (psutil) of this host whose environment carries `name=value`: everything a
    process started with that variable set, and their children (a child inherits the environment),
    whatever they renamed themselves to. Processes this user may not read are not ours."""
    import psutil  # heavy: only stopping needs it

    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            environ = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
        if carries_mark(environ, name, value):
            found.append(proc)
    return found


def stop_marked(name: str, value: str, grace_s: float = 15.0) -> int:
    """SIGTERM the processes `marked_processes(name, value)` finds, wait up to `grace_s`, then
    SIGKILL the ones still running; returns how many there were. No other process is signalled."""
    import psutil  # heavy: only stopping needs it

    procs = marked_processes(name, value)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)
