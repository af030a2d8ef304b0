"""Stopping ends only what the platform started: the processes carrying its head's mark."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil

from pipelines.core.settings import Settings
from pipelines.core.system import Proc, carries_mark, select_started, started_processes
from serving import embedded


def test_carries_mark() -> None:
    assert carries_mark({"MLCYCLE_RAY_HEAD": "s#1", "PATH": "/bin"}, "MLCYCLE_RAY_HEAD", "s#1")
    assert not carries_mark({"MLCYCLE_RAY_HEAD": "s#2"}, "MLCYCLE_RAY_HEAD", "s#1")  # another start's head
    assert not carries_mark({}, "MLCYCLE_RAY_HEAD", "s#1")
    assert not carries_mark({"MLCYCLE_RAY_HEAD": ""}, "MLCYCLE_RAY_HEAD", "")  # no mark marks nothing


def test_a_start_is_its_marked_processes_its_session_and_their_descendants() -> None:
    """Ray's agents rewrite their title over the environment the kernel shows: they are found as
    children of the marked raylet; a daemon whose parent is gone, by the session it was started in."""
    table = [
        Proc(1, 0, 1, False),  # init
        Proc(10, 1, 10, True),  # `ray start --block`, marked
        Proc(11, 10, 10, True),  # gcs_server
        Proc(12, 10, 10, False),  # ray::DashboardAgent: environment blanked by its title
        Proc(13, 12, 10, False),  # a child of it
        Proc(20, 1, 20, False),  # a user's own raylet
        Proc(21, 20, 20, False),  # and its worker
        Proc(30, 1, 30, False),  # an orphaned daemon of a head `serve start` ran in session 30
    ]
    assert select_started(table) == [10, 11, 12, 13]
    assert select_started(table, session=30) == [10, 11, 12, 13, 30]
    assert select_started([p for p in table if not p.marked]) == []


def _looks_like_ray(tmp_path: Path, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process named like a Ray daemon (a copy of `sleep` called `raylet`) whose child renames
    itself as Ray's workers do (`ray::IDLE`)."""
    folder = tmp_path / name
    folder.mkdir()
    raylet = folder / "raylet"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", raylet)
    script = f"exec -a ray::IDLE {shutil.which('sleep')} 300 & exec {raylet} 300"
    return subprocess.Popen(["bash", "-c", script], env={**os.environ, **env})


def test_serve_stop_ends_its_own_heads_processes_and_no_other_ray(tmp_path: Path) -> None:
    """Two Ray-looking process trees, one started with this state dir's head mark, one with none
    (a user's own Ray), one with the mark of another state dir's head: `stop` ends the first tree,
    its renamed child included, and leaves the others running."""
    settings = Settings(state_dir=tmp_path / "state")
    other = Settings(state_dir=tmp_path / "other-state")
    mine = _looks_like_ray(tmp_path, "mine", {embedded.HEAD_MARK: embedded.new_mark(settings)})
    users = _looks_like_ray(tmp_path, "users", {})
    others = _looks_like_ray(tmp_path, "others", {embedded.HEAD_MARK: embedded.new_mark(other)})
    started = [mine, users, others]
    try:
        mark = embedded.recorded_mark(settings)
        assert mark is not None and mark.startswith(str(settings.state_path))
        expected = [f"{tmp_path / 'mine' / 'raylet'} 300", "ray::IDLE 300"]
        for _ in range(200):  # the shell has forked the child and replaced itself with `raylet`
            tree = started_processes(embedded.HEAD_MARK, mark)
            names = sorted(" ".join(p.cmdline()) for p in tree)
            if names == expected:
                break
            time.sleep(0.05)
        assert names == expected
        children = {p.pid: psutil.Process(p.pid).children() for p in (users, others)}
        assert embedded.stop(settings) == 2
        assert mine.wait(10) is not None
        assert all(not psutil.pid_exists(p.pid) or p.status() == psutil.STATUS_ZOMBIE for p in tree)
        assert users.poll() is None and others.poll() is None
        assert all(c.is_running() for kids in children.values() for c in kids)
        assert embedded.stop(Settings(state_dir=tmp_path / "never-started")) == 0  # no mark: nothing
        assert users.poll() is None and others.poll() is None
    finally:
        for p in started:
            for child in psutil.Process(p.pid).children() if p.poll() is None else []:
                child.kill()
            if p.poll() is None:
                p.kill()
            p.wait()
