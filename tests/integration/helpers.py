"""Running steps in-process against real services, on small specs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipelines.core.settings import Settings
from pipelines.steps.runner import run_step
from tests.conftest import churn_spec_dict, write_spec

# A canary plan for tests: two steps, seconds of dwell. The latency SLO is wide on purpose: the
# tests are about errors and the promotion mechanics, and on a loaded 2-core CI machine the p99
# of a replica taking all traffic reached 5 s once.
SHORT_CANARY = {
    "steps": [20, 100],
    "dwell_s": 4,
    "min_requests": 15,
    "max_error_rate": 0.05,
    "max_p99_latency_ms": 30000,
    "max_score_shift": 0.3,
}


def small_spec(settings: Settings, source: dict[str, Any], name: str = "churn", **overrides: Any) -> Path:
    """The churn spec on `source`, sized for tests (fewer rows required)."""
    assert settings.pipelines_dir is not None
    contract = churn_spec_dict()["contract"]
    contract["min_rows"] = 100
    overrides.setdefault("contract", contract)
    return write_spec(settings.pipelines_dir, name, source=source, **overrides)


def run(settings: Settings, step: str, run_id: str, pipeline: str = "churn", **kw: Any) -> dict[str, Any]:
    return run_step(step, pipeline, run_id, settings, **kw)


def run_through(
    settings: Settings,
    run_id: str,
    steps: tuple[str, ...] = ("ingest", "validate", "features"),
    pipeline: str = "churn",
) -> dict[str, dict[str, Any]]:
    return {s: run(settings, s, run_id, pipeline) for s in steps}


def serving_workspace(platform: Settings, tmp: Path) -> Settings:
    """The platform's settings on a workspace of the test's own (`tmp`: its pipelines, its artifacts)
    with free ports for a Serve of the test's own (HTTP, HAProxy's stats and metrics, the fallback)."""
    from tests.services import free_port_pairs

    (tmp / "pipelines").mkdir()
    serve_port, stats_port, metrics_port, fallback_port = free_port_pairs(4)
    return platform.model_copy(
        update={
            "pipelines_dir": tmp / "pipelines",
            "artifact_root": str(tmp / "artifacts"),
            "serve_port": serve_port,
            "haproxy_stats_port": stats_port,
            "haproxy_metrics_port": metrics_port,
            "serve_fallback_port": fallback_port,
        }
    )


def workspace_env(settings: Settings) -> dict[str, str]:
    """The environment a child process (a step, a Ray node) needs to work on the test's workspace."""
    return {
        **os.environ,
        "MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir),
        "MLCYCLE_ARTIFACT_ROOT": str(settings.artifact_root),
        "MLCYCLE_STATE_DIR": str(settings.state_path),
    }


def step_process(settings: Settings, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """`mlcycle step <args>` as its own process, as a pod runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "mlcycle")
    return subprocess.Popen([exe, "step", *args], env=workspace_env(settings), text=True, **popen)


def end_test_serve(workdir: str) -> None:
    """End the test's own Ray and its Serve without Serve's graceful shutdown, whose controller
    waited 30 s for replicas a module's end no longer needs: the local cluster's processes
    (`ray.shutdown` of the driver that started it), then the HAProxy Serve ran with its files in
    `workdir`, which a killed proxy actor leaves running."""
    import ray

    from serving.deploy import haproxy_dir
    from serving.embedded import stop_haproxy

    ray.shutdown()
    stop_haproxy(str(haproxy_dir(workdir)), remove=True)


def copy_as_champion(settings: Settings, pipeline: str, version: int = 1) -> int:
    """Register a new version of the pipeline's model with `version`'s files and digests, and point
    `champion` at it: a step that read the alias instead of what was pinned would load it fine, and
    score with it. Returns the new version."""
    import mlflow

    from pipelines.io.registry import CHAMPION, FILES_TAG, model_name
    from pipelines.io.tracking import setup_mlflow

    setup_mlflow(settings, pipeline)
    client = mlflow.MlflowClient()
    name = model_name(pipeline)
    old = client.get_model_version(name, str(version))
    new = client.create_model_version(name, old.source, run_id=old.run_id, tags={FILES_TAG: old.tags[FILES_TAG]})
    client.set_registered_model_alias(name, CHAMPION, new.version)
    assert int(client.get_model_version_by_alias(name, CHAMPION).version) == int(new.version)
    return int(new.version)
