"""Runs one step of one run: the body of `mlcycle step <name> --pipeline P --run-id R`.

It loads the spec and the settings, applies pending migrations, records the attempt in the
`step_runs` table, calls the step's `run(ctx)` and records the outcome. The step's result (small:
URIs, hashes, counts) is printed as the last line of output and, when `MLCYCLE_XCOM_PATH` is set,
written there: the pod's `/airflow/xcom/return.json` on Kubernetes, a temporary file locally.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.core import params
from pipelines.core.errors import StepSkipped
from pipelines.core.settings import Settings, spec_for
from pipelines.core.spec import PipelineSpec
from pipelines.core.steps import step as step_info
from pipelines.io import db
from pipelines.io.runs import Outcome, finish_attempt, start_attempt
from pipelines.io.storage import Storage, finite_json, open_storage, read_json, run_key, to_json
from pipelines.steps.context import StepContext, check_run_id

RESULT_PREFIX = "MLCYCLE_RESULT "


def run_step(
    step: str, pipeline: str, run_id: str, settings: Settings, *, force: bool = False, worker: int | None = None
) -> dict[str, Any]:
    """Run one step and return its result; the attempt is recorded whatever happens."""
    info = step_info(step)
    check_run_id(run_id)
    run_params = params.from_env(dict(os.environ))
    spec = params.apply(spec_for(settings, pipeline), run_params)
    db.migrate(settings)
    ctx = StepContext(
        spec=spec,
        settings=settings,
        run_id=run_id,
        storage=open_storage(settings),
        step=step,
        force=force,
        params=run_params,
        worker=worker,
    )
    attempt = start_attempt(settings, pipeline, run_id, step, worker)
    started = time.monotonic()
    try:
        # read from this run's storage: a failure to reach it is this attempt's failure, recorded
        if info.lifecycle or step == "trials":  # a drift or batch run's id may be a lifecycle run's too
            ctx = replace(ctx, spec=judged_as_chosen(spec, ctx.storage, run_id, step))
        module = importlib.import_module(info.module)
        result: dict[str, Any] = finite_json(module.run(ctx))  # NaN (an AUC of one class) recorded as null
    except StepSkipped as err:
        finish_attempt(settings, attempt, Outcome("skipped", {"reason": str(err)}))
        raise
    except BaseException as err:
        finish_attempt(settings, attempt, Outcome("failed", error=describe_error(err)), required=False)
        raise
    result["seconds"] = round(time.monotonic() - started, 3)
    finish_attempt(settings, attempt, Outcome("reused" if result.get("reused") else "succeeded", result))
    _write_xcom(result)
    return result


def judged_as_chosen(spec: PipelineSpec, storage: Storage, run_id: str, step: str) -> PipelineSpec:
    """The spec with the primary metric this run's features step chose for its label (pr_auc for a
    rare positive class where the spec names none), for every lifecycle step after it."""
    key = run_key(spec.name, run_id, "features", "manifest.json")
    if step in ("ingest", "validate", "features") or not storage.exists(key):
        return spec
    chosen = read_json(storage, key).get("primary_metric")
    if not chosen:
        return spec
    return spec.model_copy(update={"evaluation": spec.evaluation.judged_by(str(chosen))})


def describe_error(err: BaseException) -> str:
    """`Type: message`, and the first cause in its chain when that is what happened: a library's
    wrapper ("invalid data in the commit") over the database shutdown that caused it. Pure."""
    text = f"{type(err).__name__}: {err}".strip()
    root: BaseException = err
    cause, seen = _cause(err), {id(err)}
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        root = cause
        cause = _cause(cause)
    if len(seen) > 1:
        text += f" (caused by {type(root).__name__}: {str(root).strip()})"
    return text


def _cause(err: BaseException) -> BaseException | None:
    """What Python's traceback would print as the cause (`from None` hides the context)."""
    return err.__cause__ if err.__cause__ is not None or err.__suppress_context__ else err.__context__


def _write_xcom(result: dict[str, Any]) -> None:
    path = os.environ.get("MLCYCLE_XCOM_PATH")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(to_json(result))
