"""A command's wall time and peak resident memory, measured from a parent process (tests and benches)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

# Run in a small Python of its own: a process's peak memory counts what its parent held when it was
# forked (Linux keeps it across exec), so a command forked from pytest or a bench holding a large
# frame would report theirs. The kernel's `ru_maxrss` from `wait4` is the peak of the largest single
# process of the command's tree (the command or a child it waited for), not a sum over the tree.
MEASURED = (
    "import os, subprocess, sys, time; t = time.perf_counter(); p = subprocess.Popen(sys.argv[1:]); "
    "_, status, usage = os.wait4(p.pid, 0); "
    "print('PEAK_KIB', usage.ru_maxrss, os.waitstatus_to_exitcode(status), time.perf_counter() - t)"
)


@dataclass(frozen=True)
class Measured:
    """How a command ended: its exit code, wall seconds, peak RSS (MiB), stderr and stdout."""

    code: int
    seconds: float
    peak_rss_mib: float
    stderr: str
    stdout: str = ""


def parse_measured(stdout: str) -> tuple[int, float, float]:
    """The exit code, seconds and peak RSS (MiB) of MEASURED's last line. Pure."""
    _, kib, code, seconds = stdout.strip().splitlines()[-1].split()
    return int(code), float(seconds), int(kib) / 1024


def measured_run(argv: list[str], env: dict[str, str], timeout: float) -> Measured:
    """Run `argv` as a grandchild of this process, through MEASURED."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURED, *argv], env=env, capture_output=True, text=True, timeout=timeout
    )
    code, seconds, peak = parse_measured(done.stdout)
    return Measured(code, seconds, peak, done.stderr, done.stdout)
