"""Runs one step of one run: the body of `mlcycle step <name> --pipeline P --run-id R`.

It loads the spec and the settings, applies pending migrations, records the attempt in the
`step_runs` table, calls the step's `run(ctx)` and records the outcome. The step's result (small:
URIs, hashes, counts) is printed as the last line of output and, when `MLCYCLE_XCOM_PATH` is set,
written there: the pod's `/airflow/xcom/return.json` on Kubernetes, a temporary file locally.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipelines.context import StepContext, check_run_id
from pipelines.errors import InvalidArgument, SpecError, StepSkipped
from pipelines.settings import Settings
from pipelines.spec import STEPS, PipelineSpec, load_spec
from pipelines.storage import open_storage, to_json

log = logging.getLogger(__name__)

STEP_MODULES: dict[str, str] = {
    "ingest": "pipelines.ingest",
    "validate": "pipelines.validate",
    "features": "pipelines.features",
    "train": "pipelines.train",
    "evaluate": "pipelines.evaluate",
    "promote": "pipelines.promote",
    "canary": "pipelines.canary",
    "drift": "pipelines.drift",
}
"""The steps this version implements, in lifecycle order."""

RESULT_PREFIX = "MLCYCLE_RESULT "


def lifecycle_steps() -> list[str]:
    """The implemented steps of the lifecycle DAG, in order (`drift` has a DAG of its own)."""
    return [s for s in STEPS if s in STEP_MODULES and s != "drift"]


def spec_for(settings: Settings, pipeline: str) -> PipelineSpec:
    path = settings.specs_path / f"{pipeline}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in settings.specs_path.glob("*.yaml"))
        raise SpecError(f"no pipeline '{pipeline}' in {settings.specs_path} (known: {known})")
    return load_spec(path)


def run_step(step: str, pipeline: str, run_id: str, settings: Settings, *, force: bool = False) -> dict[str, Any]:
    """Run one step and return its result; the attempt is recorded whatever happens."""
    if step not in STEP_MODULES:
        raise InvalidArgument(f"unknown step '{step}'; this version runs {list(STEP_MODULES)}")
    check_run_id(run_id)
    from pipelines import db, params

    run_params = params.from_env(dict(os.environ))
    spec = params.apply(spec_for(settings, pipeline), run_params)
    db.migrate(settings)
    ctx = StepContext(
        spec=spec,
        settings=settings,
        run_id=run_id,
        storage=open_storage(settings),
        step=step,
        extra={"force": force, "params": run_params},
    )
    attempt = _start(settings, pipeline, run_id, step)
    started = time.monotonic()
    try:
        module = importlib.import_module(STEP_MODULES[step])
        result: dict[str, Any] = module.run(ctx)
    except StepSkipped as err:
        _finish(settings, pipeline, run_id, step, attempt, "skipped", {"reason": str(err)}, None)
        raise
    except BaseException as err:
        _finish(settings, pipeline, run_id, step, attempt, "failed", {}, f"{type(err).__name__}: {err}")
        raise
    result["seconds"] = round(time.monotonic() - started, 3)
    status = "reused" if result.get("reused") else "succeeded"
    _finish(settings, pipeline, run_id, step, attempt, status, result, None)
    _write_xcom(result)
    return result


def _start(settings: Settings, pipeline: str, run_id: str, step: str) -> int:
    from pipelines.db import connect

    with connect(settings) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{pipeline}/{run_id}/{step}",))
        row = conn.execute(
            "SELECT coalesce(max(attempt), 0) + 1 FROM step_runs WHERE pipeline=%s AND run_id=%s AND step=%s",
            (pipeline, run_id, step),
        ).fetchone()
        attempt = int(row[0]) if row else 1
        conn.execute(
            "INSERT INTO step_runs (pipeline, run_id, step, status, attempt) VALUES (%s, %s, %s, 'running', %s)",
            (pipeline, run_id, step, attempt),
        )
    return attempt


def _finish(
    settings: Settings,
    pipeline: str,
    run_id: str,
    step: str,
    attempt: int,
    status: str,
    outputs: dict[str, Any],
    error: str | None,
) -> None:
    from pipelines.db import connect

    try:
        with connect(settings) as conn:
            conn.execute(
                "UPDATE step_runs SET status=%s, finished_at=now(), outputs=%s, error=%s"
                " WHERE pipeline=%s AND run_id=%s AND step=%s AND attempt=%s",
                (status, to_json(outputs), error, pipeline, run_id, step, attempt),
            )
    except Exception:  # recording must never hide the step's own error
        log.exception("could not record the outcome of %s/%s/%s", pipeline, run_id, step)


def _write_xcom(result: dict[str, Any]) -> None:
    path = os.environ.get("MLCYCLE_XCOM_PATH")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(to_json(result))
