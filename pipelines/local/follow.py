"""`mlcycle run <pipeline>`: trigger `<pipeline>_lifecycle` on the running platform through
Airflow's REST API v2, as a user's script would, and follow it task by task (`mlcycle batch run`:
`<pipeline>_batch`, the same way).

The live view prints a line whenever a task changes state: the task, its state, how long it took
and, once it has finished, the step's result in one line (read from the platform's run records).
At the end: the run's outputs and the links to open.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from pipelines.core.audit import AuditEvent
from pipelines.core.errors import InvalidArgument, SettingsError
from pipelines.core.params import FORM, RunParams, apply
from pipelines.core.settings import Settings
from pipelines.core.spec import PipelineSpec
from pipelines.io import audit
from pipelines.io.batch_history import output_location, published_run
from pipelines.io.registry import champion_version
from pipelines.io.runs import headline, render_run, run_steps
from pipelines.local.local_airflow import TERMINAL, AirflowClient, ApiError

FINISHED = {"success", "failed", "skipped", "upstream_failed", "removed"}


def parse_conf(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs as a run's conf: a value that reads as JSON (a number, true, a list) is
    that, anything else a string. Pure."""
    conf: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"--conf {pair!r}: expected key=value")
        try:
            conf[key.strip()] = json.loads(raw)
        except ValueError:
            conf[key.strip()] = raw
    return conf


def check_conf(conf: dict[str, Any], spec: PipelineSpec, settings: Settings) -> None:
    """Refuse a run's conf before anything is triggered, with the message the trigger form or the
    runner would give (InvalidArgument: exit 2): a key that is no run param, a value of the wrong
    type or range, a spec the params break, a `source_uri` outside the folders a run may read."""
    unknown = sorted(k for k in conf if k not in FORM)
    if unknown:
        raise InvalidArgument(f"--conf {', '.join(unknown)}: not a run param; the run params are {', '.join(FORM)}")
    try:
        params = RunParams.model_validate(conf)
    except ValidationError as err:
        raise InvalidArgument("--conf " + "; ".join(validation_lines(err))) from None
    apply(spec, params)  # InvalidArgument where the run's spec would not validate
    if params.source_uri:
        from pipelines.io.sources import check_override  # heavy: pandas

        check_override(params.source_uri, spec, settings)


def batch_conf(spec: PipelineSpec, as_of: str | None) -> dict[str, Any]:
    """The conf of a `<name>_batch` run (`mlcycle batch run`): its `as_of` where given (UTC where
    it names no zone). Refused before anything is triggered (InvalidArgument: exit 2) where the spec
    declares no `batch`, the instant is not ISO 8601, or the spec's `batch.as_of` fixes it. Pure."""
    if spec.batch is None:
        raise InvalidArgument(
            f"{spec.name} declares no `batch:` section, so there is no {spec.name}_batch DAG to run (docs/batch.md)"
        )
    if as_of is None:
        return {}
    if spec.batch.as_of is not None:
        raise InvalidArgument(f"--as-of: {spec.name}'s batch.as_of ({spec.batch.as_of.isoformat()}) fixes every run's")
    try:
        moment = datetime.fromisoformat(as_of)
    except ValueError:
        raise InvalidArgument(f"--as-of {as_of!r}: not an ISO 8601 instant (2026-12-01T00:00:00+00:00)") from None
    return {"as_of": (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()}


def validation_lines(err: ValidationError) -> list[str]:
    """`field: message (given value)` per error of a pydantic validation. Pure."""
    lines = []
    for e in err.errors():
        where = ".".join(str(part) for part in e["loc"]) or "value"
        given = f" (given {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"{where}: {e['msg']}{given}")
    return lines


def no_champion_reason(steps: dict[str, Any], state: str) -> str:
    """Why a pipeline that has no champion after this run has none: the evaluate step's verdict,
    or the step where the run stopped and why. `steps`: the run's step rows (`StepRow`) by step
    name, in lifecycle order. Pure."""
    evaluate = steps.get("evaluate")
    verdict = (evaluate.outputs or {}).get("verdict") if evaluate is not None else None
    if verdict and not verdict.get("passed"):
        return "the model failed its gates: " + "; ".join(verdict.get("reasons") or ["(no reason recorded)"])
    for name, row in steps.items():  # in lifecycle order
        if row.status in ("failed", "skipped", "interrupted"):
            why = (row.outputs or {}).get("reason") if row.status == "skipped" else row.error
            return f"the run's {name} step {row.status}" + (f": {why}" if why else "")
    return f"the run ended {state} before a model was promoted"


def without_champion(settings: Settings, pipeline: str, run_id: str, state: str) -> dict[str, str] | None:
    """`{pipeline: why}` where the pipeline has no champion after the run (for `open_these`: no
    endpoint URL, which would answer 404), else None."""
    try:
        champion_version(settings, pipeline)
    except SettingsError:
        steps = {row.step: row for row in run_steps(settings, pipeline, run_id)}
        return {pipeline: no_champion_reason(steps, state)}
    return None


def task_key(ti: dict[str, Any]) -> str:
    """A task instance's name in the live view: mapped ones with their index. Pure."""
    index = ti.get("map_index", -1)
    return ti["task_id"] if index is None or index < 0 else f"{ti['task_id']}[{index}]"


def changes(seen: dict[str, str | None], tis: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task instances whose state differs from what was seen last (updating `seen`), in the
    order they started. Pure but for `seen`."""
    out = []
    for ti in sorted(tis, key=lambda t: (t.get("start_date") or "9", task_key(t))):
        key = task_key(ti)
        if ti.get("state") != seen.get(key) and ti.get("state") is not None:
            seen[key] = ti["state"]
            out.append(ti)
    return out


def task_line(ti: dict[str, Any], result: str) -> str:
    took = f"{ti['duration']:.1f}s" if ti.get("duration") is not None else ""
    line = f"  {task_key(ti):<12} {ti['state']:<16} {took:>7}"
    return f"{line}  {result}" if result else line


def say_now(line: str) -> None:
    print(line, flush=True)  # live, also into a pipe or a log file


def run_pipeline(
    client: AirflowClient,
    settings: Settings,
    pipeline: str,
    conf: dict[str, Any],
    wait: bool,
    say: Callable[[str], None] = say_now,
    timeout: float = 3600,
    dag: str | None = None,
) -> tuple[str, str]:
    """Trigger the pipeline's DAG `dag` (default: its lifecycle); with `wait`, follow it to its end.
    Returns the run id and its state (`queued` when not waiting)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    dag = dag or f"{pipeline}_lifecycle"
    client.wait_for_dag(dag)
    try:
        run_id = client.trigger(dag, conf)
    except ApiError as err:
        if err.status in (400, 422):  # the DAG's params refused the conf: the user's to fix
            raise InvalidArgument(f"{dag}: Airflow refused the run's conf: {err.detail}") from None
        raise
    detail = {"conf": conf, "via": "cli"} | ({} if dag == f"{pipeline}_lifecycle" else {"dag": dag})
    trigger = AuditEvent(client.username, "user", "trigger", pipeline, run_id=run_id, detail=detail)
    audit.record(settings, trigger)  # the Airflow user the run was triggered as
    say(f"==> {dag} {run_id}" + (f" conf {json.dumps(conf)}" if conf else ""))
    say(f"    {client.url}/dags/{dag}/runs/{run_id}")
    if not wait:
        return run_id, "queued"
    seen: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout
    while True:
        run = client.api("GET", f"/dags/{dag}/dagRuns/{run_id}")
        tis = client.api("GET", f"/dags/{dag}/dagRuns/{run_id}/taskInstances")["task_instances"]
        moved = changes(seen, tis)
        if moved:
            steps = {row.step: row for row in run_steps(settings, pipeline, run_id)}
            for ti in moved:
                row = steps.get(ti["task_id"])
                result = headline(ti["task_id"], row.outputs) if row and ti["state"] in FINISHED else ""
                say(task_line(ti, result))
        if run["state"] in TERMINAL:
            return run_id, str(run["state"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dag} {run_id} still {run['state']} after {timeout:.0f}s")
        time.sleep(2)


def summary(settings: Settings, pipeline: str, run_id: str) -> str:
    return render_run(pipeline, run_id, run_steps(settings, pipeline, run_id))


def batch_summary(settings: Settings, pipeline: str, run_id: str, state: str) -> str:
    """A `<name>_batch` run as `mlcycle batch show` lists it, and where its predictions landed."""
    from pipelines.io.batch import render_batch_runs  # heavy: the feature store's imports

    run = published_run(settings, pipeline, run_id)
    if run is None:
        return f"{pipeline}_batch {run_id} ended {state} and published nothing: its tasks' logs say why"
    return f"{render_batch_runs(pipeline, [run])}\n    predictions: {output_location(run)}"
