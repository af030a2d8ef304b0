"""`mlcycle serve stop` on a real Ray head: every process of the head this state dir started ends
(GCS, raylet, agents, a worker), and a process that merely looks like Ray is left running."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pipelines.core.settings import Settings
from pipelines.core.system import started_processes
from pipelines.io import db
from serving import embedded
from tests.services import free_port_pairs

pytestmark = pytest.mark.integration

DRIVER = """
import ray, sys
ray.init(address=sys.argv[1], namespace="stop-test")
@ray.remote(num_cpus=0)
class Held:
    def ping(self):
        return 1
held = Held.options(name="held", lifetime="detached").remote()
print(ray.get(held.ping.remote()))
"""


def test_serve_stop_ends_its_heads_processes_and_leaves_a_ray_looking_one(tmp_path: Path) -> None:
    (gcs,) = free_port_pairs(1)
    settings = Settings(state_dir=tmp_path / "state", ray_address=f"127.0.0.1:{gcs}")
    lookalike_bin = tmp_path / "raylet"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", lookalike_bin)
    lookalike = subprocess.Popen([str(lookalike_bin), "300"])  # a user's own "raylet"
    try:
        embedded.start_head(settings)
        mark, session = embedded.recorded(settings)
        assert mark is not None and session is not None
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER, f"127.0.0.1:{gcs}"], env=env, capture_output=True, text=True, timeout=300
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        head = started_processes(embedded.HEAD_MARK, mark, session)
        titles = " ".join(" ".join(p.cmdline()) for p in head)
        for part in ("gcs_server", "raylet", "ray::Held"):
            assert part in titles, titles
        assert lookalike.pid not in {p.pid for p in head}

        assert embedded.stop(settings) == len(head)
        gone = [p for p in head if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not gone, [p.cmdline() for p in gone]
        assert not started_processes(embedded.HEAD_MARK, mark, session)
        assert lookalike.poll() is None  # not the head's: left running
        assert not embedded.ray_running(settings)  # its GCS port is free again
    finally:
        if embedded.recorded_mark(settings):  # whatever of this test's head is left, and nothing else
            embedded.stop(settings)
        db.stop_embedded(settings)  # the head's command started the state dir's PostgreSQL
        lookalike.kill()
        lookalike.wait()
