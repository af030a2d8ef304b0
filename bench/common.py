"""What the benchmarks share: a throw-away platform state and latency percentiles."""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root, for tests.specs

from pipelines.core.settings import Settings
from pipelines.io import db
from tests import specs


@contextmanager
def bench_state() -> Iterator[Settings]:
    """Settings on a fresh state directory with its own migrated embedded database and a
    pipelines directory for the bench's specs; both are removed afterwards."""
    state = Path(tempfile.mkdtemp(prefix="mlcycle-bench-"))
    (state / "pipelines").mkdir()
    settings = Settings(state_dir=state, pipelines_dir=state / "pipelines")
    try:
        db.migrate(settings)
        yield settings
    finally:
        db.stop_embedded(settings)
        shutil.rmtree(state, ignore_errors=True)


def write_spec(settings: Settings, name: str, **sections: dict[str, Any]) -> None:
    """The bundled churn spec under another name, with sections updated key by key."""
    assert settings.pipelines_dir is not None
    specs.write_spec(settings.pipelines_dir, name, merge=True, **sections)


def step_env(settings: Settings) -> dict[str, str]:
    """The environment of an `mlcycle step` process on the bench's state (its database, its specs)."""
    import os

    return {
        **os.environ,
        "MLCYCLE_STATE_DIR": str(settings.state_path),
        "MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir),
    }


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ms = sorted(s * 1000 for s in samples_s)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]


def free_port() -> int:
    """A port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SMALL = {
    "source": {"kind": "synthetic", "customers": 1000, "months": 6, "seed": 3},
    "training": {"n_trials": 2, "max_epochs": 5, "pruner": "none"},
    "contract": {"min_rows": 100},
}


def train_champion(settings: Settings, name: str, **sections: dict[str, Any]) -> float:
    """A small churn pipeline run from ingest to promote (its model registered as v1, the
    champion); returns the seconds it took."""
    import time

    from pipelines.steps.runner import run_step

    write_spec(settings, name, **{**SMALL, **sections})
    started = time.perf_counter()
    for step in ("ingest", "validate", "features", "train", "evaluate", "promote"):
        run_step(step, name, "bench", settings)
    return time.perf_counter() - started
