"""Faults injected into the Compose stack while the lifecycle runs and the endpoint is under load.

Run 1 (the first model: no endpoint to load yet): a step container SIGKILLed mid-`features`,
PostgreSQL restarted mid-`promote`. Run 2 (a retrain, with the champion served under a paced wrk
load around every fault): SeaweedFS stopped for 60 s during `validate`, the Airflow scheduler
killed with SIGKILL while `features` runs, PostgreSQL restarted mid-`train` (after a finished
trial), Redis stopped for 20 s, a Serve replica killed with SIGKILL.

For each fault the table says where it landed (the tasks running), how it ended (the task's
state and tries), the serving figures during it (requests, non-2xx, p99) and the seconds from its
end until things worked again (a 200 for serving faults, the task's success for the others). Each
run must end succeeded, and then nothing is half-written: every manifest's data exists, every
registered version has its ONNX model, every alias names a version, no finished Optuna trial is
lost, no step attempt is left `running`, and the champion still answers.

Each test also passes alone (`pytest tests/faults -k retrain`): the retrain asks for the
`champion` fixture (tests/stack/conftest.py), which in file order finds run 1's champion and,
alone, makes one with a lifecycle run without faults first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from pipelines.core.settings import scoped_environ
from pipelines.local.stack import Stack
from tests import loadgen
from tests.faults.conftest import ROWS
from tests.stack.conftest import DAG, MODEL, PIPELINE, _airflow, _champion, _url
from tests.stack.test_stack import _known_customers, _service

LOAD_CONNECTIONS, LOAD_DELAY_MS = 2, 20  # paced: at most 100 requests a second, the lifecycle keeps its cores


# ------------------------------------------------------------------------------- the stack's parts
def _key(stack: Stack) -> str:
    return stack.values["SERVING_API_KEYS"].split(",")[0]


def _predict_url(stack: Stack) -> str:
    return _url(stack, "SERVE_PORT", f"/v1/pipelines/{PIPELINE}/predict")


def _tasks(airflow: Any, run_id: str) -> dict[str, dict[str, Any]] | None:
    """The run's task instances by task id; None while Airflow cannot answer (a fault)."""
    try:
        tis = airflow.api("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]
    except Exception:
        return None
    return {t["task_id"]: t for t in tis}


def _running(tasks: dict[str, dict[str, Any]] | None) -> list[str]:
    return sorted(t for t, ti in (tasks or {}).items() if ti["state"] == "running")


def _wait_running(airflow: Any, run_id: str, task: str, timeout: float = 900) -> list[str]:
    """Until `task` runs; returns every task running then."""
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        tasks = _tasks(airflow, run_id)
        seen = tasks or seen
        if tasks and tasks.get(task, {}).get("state") == "running":
            return _running(tasks)
        if tasks and tasks.get(task, {}).get("state") in ("success", "failed", "skipped", "upstream_failed"):
            raise AssertionError(f"{task} ended ({tasks[task]['state']}) before it was seen running")
        time.sleep(0.5)
    states = {name: t.get("state") for name, t in seen.items()}
    raise TimeoutError(f"{task} did not run within {timeout:.0f}s; the run's tasks: {states}")


def _run_state(airflow: Any, run_id: str, timeout: float = 1800) -> dict[str, Any]:
    """The run once it ended. `AirflowClient.wait_run` raises on the first failed call; here the
    API is down for a while by design (PostgreSQL restarted), so a failed call is asked again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            run: dict[str, Any] = airflow.api("GET", f"/dags/{DAG}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
        time.sleep(3)
    raise TimeoutError(f"{DAG} {run_id} did not end within {timeout:.0f}s")


def _sql(stack: Stack, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    v = stack.values
    url = f"postgresql://mlcycle:{v['POSTGRES_PASSWORD']}@127.0.0.1:{stack.port('POSTGRES_PORT')}/mlcycle"
    with psycopg.connect(url, connect_timeout=10) as conn:
        return list(conn.execute(query, params).fetchall())


def _finished_trials(stack: Stack, run_id: str) -> int:
    rows = _sql(
        stack,
        "SELECT count(*) FROM optuna.trials t JOIN optuna.studies s USING (study_id) "
        "WHERE s.study_name = %s AND t.state IN ('COMPLETE', 'PRUNED')",
        (f"{PIPELINE}:{run_id}",),
    )
    return int(rows[0][0])


def _s3(stack: Stack) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=_url(stack, "S3_PORT"),
        aws_access_key_id=stack.values["S3_ACCESS_KEY"],
        aws_secret_access_key=stack.values["S3_SECRET_KEY"],
        region_name="us-east-1",
    )


def _keys(s3: Any, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlcycle", Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _uris(value: Any) -> Iterator[str]:
    """Every s3:// URI in a manifest (any depth). Pure."""
    if isinstance(value, str) and value.startswith("s3://"):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _uris(v)
    elif isinstance(value, list):
        for v in value:
            yield from _uris(v)


def _integrity(stack: Stack, run_id: str, trials_before: int | None = None) -> list[str]:
    """What is half-written after a run, as problems (none: intact)."""
    from mlflow import MlflowClient

    problems: list[str] = []
    s3 = _s3(stack)
    manifests = [k for k in _keys(s3, f"artifacts/{PIPELINE}/{run_id}/") if k.endswith("manifest.json")]
    if not manifests:
        problems.append(f"run {run_id} left no manifest")
    for key in manifests:
        body = json.loads(s3.get_object(Bucket="mlcycle", Key=key)["Body"].read())
        for uri in _uris(body):
            if not _keys(s3, uri.removeprefix("s3://mlcycle/")):
                problems.append(f"{key} names {uri}, which is not there")
    client = MlflowClient(tracking_uri=_url(stack, "MLFLOW_PORT"))
    login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": stack.values["MLFLOW_ADMIN_PASSWORD"]}
    with scoped_environ(login):  # the server's basic-auth app
        versions = {int(v.version): v for v in client.search_model_versions(f"name='{MODEL}'")}
        for number, v in versions.items():
            where = client.get_model_version_download_uri(MODEL, str(number))
            if where.startswith("s3://mlcycle/") and not any(
                k.endswith("model.onnx") for k in _keys(s3, where.removeprefix("s3://mlcycle/"))
            ):
                problems.append(f"version {number} has no model.onnx under {where}")
            if v.status != "READY":
                problems.append(f"version {number} is {v.status}")
        aliases = client.get_registered_model(MODEL).aliases
    for alias, number in aliases.items():
        if int(number) not in versions:
            problems.append(f"alias {alias} names version {number}, which does not exist")
    running = _sql(stack, "SELECT step, attempt FROM step_runs WHERE run_id = %s AND status = 'running'", (run_id,))
    problems += [f"{step} attempt {attempt} is left running" for step, attempt in running]
    if trials_before is not None:
        after = _finished_trials(stack, run_id)
        if after < trials_before:
            problems.append(f"{trials_before} finished trials before the fault, {after} after")
    return problems


# -------------------------------------------------------------------------------------- serving
def _bodies() -> list[str]:
    return [json.dumps({"instances": [{"entity_id": e}]}) for e in _known_customers()]


def _probe(stack: Stack) -> httpx.Response | None:
    try:
        return httpx.post(_predict_url(stack), content=_bodies()[0], headers={"x-api-key": _key(stack)}, timeout=5)
    except httpx.HTTPError:
        return None


def _until_served(stack: Stack, since: float, timeout: float = 300) -> float:
    """Seconds from `since` until the endpoint answers 200 again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = _probe(stack)
        if r is not None and r.status_code == 200:
            return time.monotonic() - since
        time.sleep(0.25)
    raise TimeoutError(f"the endpoint did not answer 200 within {timeout:.0f}s")


@dataclass
class Window:
    """A paced wrk load on the endpoint for a fixed time around one fault."""

    stack: Stack
    seconds: float
    result: loadgen.Result | None = None
    _proc: Any = field(default=None, repr=False)
    _work: Any = field(default=None, repr=False)

    def __enter__(self) -> Window:
        self._proc, self._work = loadgen.start(
            _predict_url(self.stack),
            _bodies(),
            {"x-api-key": _key(self.stack)},
            LOAD_CONNECTIONS,
            self.seconds,
            timeout_s=10,
            statuses=True,
            delay_ms=LOAD_DELAY_MS,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.result = loadgen.finish(self._proc, self._work, LOAD_CONNECTIONS, self.seconds)

    def figures(self) -> dict[str, str]:
        r = self.result
        assert r is not None
        other = {s: n for s, n in (r.statuses or {}).items() if not 200 <= s < 300}
        return {
            "requests": str(r.requests),
            "non-2xx": f"{r.non_2xx + r.socket_errors}" + (f" ({other})" if other else ""),
            "p99 ms": f"{r.p99_ms:.0f}",
        }


def _row(fault: str, where: list[str] | str, **cells: str) -> dict[str, str]:
    row = {"fault": fault, "where": where if isinstance(where, str) else ", ".join(where) or "-", **cells}
    ROWS.append(row)
    return row


def _outcome(airflow: Any, run_id: str, task: str, fault_end: float, fault_end_wall: datetime) -> dict[str, str]:
    """The task's end and the seconds from the fault's end to its success."""
    ti = (_tasks(airflow, run_id) or {}).get(task, {})
    state, tries = ti.get("state"), ti.get("try_number")
    out = {"outcome": f"{task} {state} (try {tries})"}
    if state == "success" and ti.get("end_date"):
        ended = datetime.fromisoformat(ti["end_date"].replace("Z", "+00:00"))
        out["recovery s"] = f"{max(0.0, (ended - fault_end_wall).total_seconds()):.0f}"
    return out


def _now() -> tuple[float, datetime]:
    return time.monotonic(), datetime.now(UTC)


# ---------------------------------------------------------------------------------------- runs
def test_the_first_run_survives_a_killed_step_container_and_a_database_restart_mid_promote(stack: Stack) -> None:
    import docker

    airflow = _airflow(stack)
    airflow.wait_for_dag(DAG, timeout=300)
    run_id = airflow.trigger(DAG, conf={"n_trials": 2})

    # a step container SIGKILLed: the task fails with the signal, Airflow retries, the step reruns
    where = _wait_running(airflow, run_id, "features")
    client = docker.from_env()
    deadline = time.monotonic() + 300
    victims: list[Any] = []
    while not victims and time.monotonic() < deadline:
        victims = client.containers.list(
            filters={"label": [f"mlcycle.io/run-id={run_id}", "mlcycle.io/step=features"], "status": "running"}
        )
        time.sleep(0.5)
    assert victims, "no running features container"
    victims[0].kill(signal="SIGKILL")
    killed = _now()

    # PostgreSQL restarted while promote registers the model
    promote_where = _wait_running(airflow, run_id, "promote", timeout=1200)
    _service(stack, "postgres").restart(timeout=30)
    restarted = _now()

    run = _run_state(airflow, run_id)
    tasks = _tasks(airflow, run_id) or {}
    problems = _integrity(stack, run_id)
    check = "intact" if not problems else "; ".join(problems)
    _row("step container SIGKILL", where, **_outcome(airflow, run_id, "features", *killed), **{"data check": check})
    _row(
        "PostgreSQL restart", promote_where, **_outcome(airflow, run_id, "promote", *restarted), **{"data check": check}
    )
    assert run["state"] == "success", {t: (ti["state"], ti["try_number"]) for t, ti in tasks.items()}
    assert tasks["features"]["try_number"] >= 2  # the kill failed a try; a retry finished it
    assert not problems, problems
    assert int(_champion(stack)["version"]) >= 1
    assert _until_served(stack, time.monotonic()) >= 0


def test_a_retrain_under_serving_load_survives_storage_database_cache_replica_and_scheduler_faults(
    stack: Stack, champion: int
) -> None:
    """A retrain of a served champion: the first run's, or, alone, the one `champion` makes."""
    airflow = _airflow(stack)
    _until_served(stack, time.monotonic())
    reference = _probe(stack)
    assert reference is not None and reference.status_code == 200, reference
    score = reference.json()["predictions"][0]["score"]
    run_id = airflow.trigger(DAG, conf={"n_trials": 4})

    # SeaweedFS stopped for 60 s while validate reads the snapshot
    where = _wait_running(airflow, run_id, "validate")
    seaweed = _service(stack, "seaweedfs")
    with Window(stack, 75) as w:
        seaweed.stop(timeout=10)
        time.sleep(60)
        seaweed.start()
        s3_back = _now()
    s3_row = _row("SeaweedFS stopped 60 s", where, **w.figures())

    # the scheduler killed with SIGKILL mid-`features` (its LocalExecutor's tasks with it), then
    # started. A task that surely runs then: once train ends, a retrain whose challenger loses ends
    # at evaluate within seconds, with nothing left running to kill
    where = _wait_running(airflow, run_id, "features", timeout=1200)
    scheduler = _service(stack, "airflow-scheduler")
    with Window(stack, 30) as w:
        pid = int(scheduler.attrs["State"]["Pid"])
        os.kill(pid, signal.SIGKILL)  # a crash, as the kernel's OOM killer would do it
        time.sleep(3)
        scheduler.reload()
        restarted_by = "Docker's restart policy"
        if scheduler.status != "running":
            scheduler.start()
            restarted_by = "the test (docker start)"
        sched_back = _now()
    sched_row = _row("Airflow scheduler SIGKILL", where, **w.figures())

    # PostgreSQL restarted mid-train, once a trial has finished
    where = _wait_running(airflow, run_id, "train", timeout=1200)
    deadline = time.monotonic() + 900
    while _finished_trials(stack, run_id) < 1 and time.monotonic() < deadline:
        time.sleep(1)
    trials_before = _finished_trials(stack, run_id)
    assert trials_before >= 1, "no trial finished"
    with Window(stack, 30) as w:
        _service(stack, "postgres").restart(timeout=30)
        pg_back = _now()
        pg_recovery = _until_served(stack, pg_back[0])
    pg_row = _row("PostgreSQL restart", where, **w.figures())

    # Redis (the online store) stopped for 20 s under load: 503 features_unavailable, never a
    # prediction made without its features; the same score once it is back
    redis = _service(stack, "redis")
    where = _running(_tasks(airflow, run_id))
    during: list[httpx.Response] = []
    unanswered = 0
    with Window(stack, 40) as w:
        redis.stop(timeout=10)
        stop_until = time.monotonic() + 20
        while time.monotonic() < stop_until:
            r = _probe(stack)
            if r is None:
                unanswered += 1
            else:
                during.append(r)
            time.sleep(0.5)
        redis.start()
        back = time.monotonic()
        recovery = _until_served(stack, back)
    after = _probe(stack)
    assert unanswered == 0, f"{unanswered} probes had no answer within 5 s while Redis was down"
    for r in during:
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:
            body = r.json()
            assert body["error"] == "features_unavailable" and "redis" in body["reason"], body
            assert r.headers["retry-after"] == "1"
        else:
            assert r.json()["predictions"][0]["score"] == score, r.text  # served from features it had
    assert any(r.status_code == 503 for r in during), [r.status_code for r in during]
    assert after is not None and after.status_code == 200 and after.json()["predictions"][0]["score"] == score
    _row(
        "Redis stopped 20 s",
        where,
        outcome=f"{sum(r.status_code == 503 for r in during)}/{len(during)} probes 503 features_unavailable, "
        "none scored without features",
        **w.figures(),
        **{"recovery s": f"{recovery:.1f}", "data check": "same score after"},
    )

    # a Serve replica killed with SIGKILL under load
    where = _running(_tasks(airflow, run_id))
    ray = _service(stack, "ray-head")
    kill = (
        "import os, signal\n"
        "for p in filter(str.isdigit, os.listdir('/proc')):\n"
        "    if int(p) == os.getpid():\n"
        "        continue\n"
        "    try:\n"
        "        cmd = open(f'/proc/{p}/cmdline', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        f"    if b'ServeReplica:{PIPELINE}' in cmd:\n"
        "        os.kill(int(p), signal.SIGKILL); print(p)\n"
    )
    with Window(stack, 40) as w:
        time.sleep(3)
        out = ray.exec_run(["python3", "-c", kill])
        assert out.exit_code == 0 and out.output.strip(), out.output
        killed_at = time.monotonic()
        time.sleep(1)
        replica_recovery = _until_served(stack, killed_at)
    _row(
        "Serve replica SIGKILL",
        where,
        outcome=f"{len(out.output.split())} replica process(es) killed; Serve started a new one",
        **w.figures(),
        **{"recovery s": f"{replica_recovery:.1f}", "data check": "-"},
    )

    run = _run_state(airflow, run_id)
    tasks = _tasks(airflow, run_id) or {}
    problems = _integrity(stack, run_id, trials_before)
    check = "intact" if not problems else "; ".join(problems)
    s3_row.update(_outcome(airflow, run_id, "validate", *s3_back), **{"data check": check})
    pg_row.update(_outcome(airflow, run_id, "train", *pg_back), **{"data check": check})
    pg_row["recovery s"] = f"serving {pg_recovery:.1f}; " + pg_row.get("recovery s", "-")
    sched_row.update(_outcome(airflow, run_id, "features", *sched_back), **{"data check": check})
    sched_row["outcome"] += f"; restarted by {restarted_by}"
    states = {t: (ti["state"], ti["try_number"]) for t, ti in tasks.items()}
    assert run["state"] == "success", states
    assert not problems, problems
    # the champion kept serving: the retrain's challenger is promoted only through evaluate's gate
    assert int(_champion(stack)["version"]) >= champion
    final = _probe(stack)
    assert final is not None and final.status_code == 200, final
