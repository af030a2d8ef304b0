"""Serving and batch scoring across Ray nodes: a real two-node Ray cluster on this host (the head
and a worker, each `ray start` on 127.0.0.1 with its own resources). Serving: the champion's two
replicas spread over them (each asks for 2.5 CPUs: the head has 4, the worker 3), bounded load
(wrk), and the worker node killed in the middle: the endpoint keeps answering on the replica that
is left; when a node joins again (an autoscaler's new one), Serve reschedules the lost replica
there. The failed requests are the figure (printed). Batch: a `runtime: ray` run's Ray Data job
loses the worker node while an actor there scores, and still writes every entity once."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from pipelines.core.settings import Settings, spec_for
from pipelines.core.system import executable
from pipelines.io.registry import model_name
from pipelines.steps.runner import RESULT_PREFIX
from serving.config import VersionConfig
from serving.deploy import deploy, serving_args, undeploy
from tests import loadgen
from tests.e2e.conftest import KEY, forget_pipeline
from tests.integration.helpers import run_through, small_spec, workspace_env

pytestmark = pytest.mark.e2e

SOURCE = {"kind": "synthetic", "customers": 500, "months": 6, "seed": 23}
FAST = {"n_trials": 1, "max_epochs": 3, "pruner": "none", "batch_size": 128}
EVAL = {"min_primary": 0.55, "bootstrap_samples": 50, "max_latency_ms_per_row": 50.0}
PIPELINE = "churn"  # the head's replicas (started for the module) read the bundled spec of that name
INGRESS = f"ServeReplica:{PIPELINE}:ingress"


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def _replica_nodes() -> list[str]:
    """The nodes of the application's live ingress replicas (from the GCS's actor table: the
    embedded head runs without the dashboard that Ray's state API asks)."""
    from ray._private.state import state

    table = state.actor_table(None)
    alive = [a for a in table.values() if a["ActorClassName"] == INGRESS and a["State"] in ("ALIVE", 2)]
    return [a["Address"]["NodeID"] for a in alive]


def _ingress_states() -> dict[str, int]:
    from ray import serve

    app = serve.status().applications[PIPELINE]
    return {getattr(k, "value", str(k)): v for k, v in app.deployments["ingress"].replica_states.items() if v}


def _join_node(ray_head: dict[str, str], workspace: Settings) -> dict[str, Any]:
    """A new Ray node on this host: its own raylet with 3 CPUs, joined to the head."""
    before = {n["NodeID"] for n in _alive_nodes()}
    env = {**workspace_env(workspace), **ray_head}
    started = subprocess.run(
        [
            str(executable("ray")),
            "start",
            f"--address=127.0.0.1:{ray_head['MLCYCLE_TEST_GCS_PORT']}",
            "--num-cpus=3",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    deadline = time.monotonic() + 60
    while not (new := [n for n in _alive_nodes() if n["NodeID"] not in before]):
        assert time.monotonic() < deadline, "the worker node never joined"
        time.sleep(1)
    return new[0]


@pytest.fixture
def forget(workspace: Settings) -> Iterator[None]:
    """The registry and audit are the e2e session's: this test's run, and another module's first
    run, must meet no champion of `churn` left by someone else."""
    forget_pipeline(workspace, PIPELINE)
    yield
    forget_pipeline(workspace, PIPELINE)
    undeploy(PIPELINE)


@pytest.fixture
def worker_node(ray_head: dict[str, str], workspace: Settings) -> Iterator[dict[str, Any]]:
    node = _join_node(ray_head, workspace)
    yield node
    if any(n["NodeID"] == node["NodeID"] for n in _alive_nodes()):  # the test failed before killing it
        _kill_node(node)


def _kill_node(node: dict[str, Any]) -> int:
    """SIGKILL the node's raylet and every process under it (its workers, the replica): a lost
    machine, as far as this host can play one. Returns how many processes died."""
    port = node["NodeManagerPort"]  # the raylet picks it at start (`--node_manager_port=0`)
    raylets = [
        p
        for p in psutil.process_iter(["name"])
        if p.info["name"] == "raylet"
        and any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp"))
    ]
    assert len(raylets) == 1, f"no single raylet listens on {port}: {raylets}"
    doomed = [raylets[0], *raylets[0].children(recursive=True)]
    for proc in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    return len(doomed)


def test_the_endpoint_survives_the_loss_of_a_node(
    workspace: Settings, ray_head: dict[str, str], forget: None, worker_node: dict[str, Any]
) -> None:
    small_spec(workspace, SOURCE, name=PIPELINE, schedule=None, training=FAST, evaluation=EVAL, serving={"replicas": 2})
    run_through(workspace, "nodes-1", ("ingest", "validate", "features", "train", "evaluate", "promote"), PIPELINE)
    spec = spec_for(workspace, PIPELINE)
    # 2.5 CPUs a replica: one fits the head (4 CPUs), one the worker (3), never two on one node
    args = serving_args(spec, [VersionConfig(version=1, weight=100.0)], model_name(PIPELINE), replica_cpus=2.5)
    deploy(args)
    url = f"http://127.0.0.1:{ray_head['MLCYCLE_SERVE_PORT']}/v1/pipelines/{PIPELINE}/predict"
    features = {
        "tenure_months": 12,
        "monthly_charges": 70.5,
        "usage_hours_30d": 20.0,
        "support_calls_30d": 1,
        "days_since_last_login": 3,
        "payment_delays_90d": 0,
        "plan": "standard",
        "region": "north",
        "contract": "monthly",
        "payment_method": "card",
    }
    body = json.dumps({"instances": [{"entity_id": 7, "features": features}]})
    assert (
        httpx.post(url, content=body, headers={"x-api-key": KEY, "content-type": "application/json"}).status_code == 200
    )
    placed = _replica_nodes()
    head = next(n["NodeID"] for n in _alive_nodes() if n["NodeID"] != worker_node["NodeID"])
    assert _ingress_states() == {"RUNNING": 2} and sorted(placed) == sorted([head, worker_node["NodeID"]]), placed

    proc, work = loadgen.start(url, [body], {"x-api-key": KEY}, connections=4, seconds=30)
    time.sleep(8)
    killed = _kill_node(worker_node)
    result = loadgen.finish(proc, work, connections=4, seconds=30)
    failed = result.non_2xx + result.socket_errors
    print(
        f"\nnode loss under load: {result.requests} requests in {result.seconds:.0f}s, {failed} failed "
        f"({100 * failed / max(1, result.requests):.2f}%), p99 {result.p99_ms:.0f} ms, max {result.max_ms:.0f} ms; "
        f"{killed} processes of the worker node killed"
    )
    assert result.requests > 100 and failed < result.requests / 10  # it kept answering

    # One replica answers meanwhile; a node that joins (an autoscaler's new one) takes the lost one.
    assert _ingress_states().get("RUNNING") == 1
    with httpx.Client(headers={"x-api-key": KEY, "content-type": "application/json"}, timeout=30) as client:
        assert [client.post(url, content=body).status_code for _ in range(20)] == [200] * 20
        fresh = _join_node(ray_head, workspace)
        deadline = time.monotonic() + 120
        while (states := _ingress_states()) != {"RUNNING": 2}:
            assert time.monotonic() < deadline, f"the lost replica was not rescheduled: {states}"
            time.sleep(2)
        assert fresh["NodeID"] in _replica_nodes()
        assert [client.post(url, content=body).status_code for _ in range(20)] == [200] * 20


RAY_BATCH = "churn_raybatch"


def _ray_batch_entities(path: Path, rows: int) -> str:
    """`rows` generated churn rows, each its own customer, in Parquet row groups of 2,000 (a Ray
    Data row per group); returns their newest time (the batch's as_of)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.ml.datagen import ChurnConfig, generate_churn

    base = generate_churn(ChurnConfig(customers=500, months=6, seed=23)).drop(columns=["churned"])
    df = base.iloc[np.arange(rows) % len(base)].reset_index(drop=True)
    df["customer_id"] = np.arange(1, rows + 1)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=2000)
    return str(df["event_timestamp"].max().isoformat())


def _scorers_on(node: dict[str, Any]) -> list[psutil.Process]:
    """The Ray Data actors (`MapBatches(RowGroupScorer)`) running under a node's raylet."""
    port = node["NodeManagerPort"]
    for raylet in (p for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"):
        with contextlib.suppress(psutil.Error):
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in raylet.net_connections("tcp")):
                return [
                    p
                    for p in raylet.children(recursive=True)
                    if "RowGroupScorer" in " ".join(p.cmdline() or [p.name()])
                ]
    return []


def test_a_ray_data_batch_scores_every_row_once_though_the_worker_node_is_lost(
    workspace: Settings, ray_head: dict[str, str], worker_node: dict[str, Any], tmp_path: Path
) -> None:
    """`runtime: ray`: the batch's scoring as a Ray Data job (an actor per node, two at once); the
    worker node is killed while its actor scores; Ray Data restarts the actor on the head and
    retries its row groups; the run publishes every entity exactly once, with the pinned version."""
    rows = 400_000
    as_of = _ray_batch_entities(tmp_path / "entities.parquet", rows)
    batch = {
        "entities": {"kind": "file", "path": str(tmp_path / "entities.parquet")},
        "as_of": as_of,
        "runtime": "ray",
        "parallelism": 2,
        "chunk_rows": 500,
        "outputs": {"table": True, "parquet": True},
    }
    small_spec(workspace, SOURCE, name=RAY_BATCH, schedule=None, training=FAST, evaluation=EVAL, batch=batch)
    lifecycle = ("ingest", "validate", "features", "train", "evaluate", "promote", "batch_pin")
    assert run_through(workspace, "raybatch-1", lifecycle, RAY_BATCH)["batch_pin"]["runtime"] == "ray"
    env = {**workspace_env(workspace), **ray_head}
    step = [str(executable("mlcycle")), "step", "batch", "--pipeline", RAY_BATCH, "--run-id", "raybatch-1"]
    head = next(n["NodeID"] for n in _alive_nodes() if "node:__internal_head__" in n["Resources"])
    assert worker_node["NodeID"] != head
    proc = subprocess.Popen([*step, "--worker", "0"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        # the actors spread over the nodes (a node joined by an earlier test of the module as well)
        while not (lost := [n for n in _alive_nodes() if n["NodeID"] != head and _scorers_on(n)]):
            assert proc.poll() is None, "the job ended before an actor ran on a worker node"
            assert time.monotonic() < deadline, "no actor of the job ever ran on a worker node"
            time.sleep(0.5)
        time.sleep(1)  # scoring its first row groups
        assert proc.poll() is None, "the job ended before the worker node could be lost"
        killed = _kill_node(lost[0])
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    # Ray's driver prints the cluster's events (the lost node's) on stdout too
    result = json.loads(
        next(li for li in reversed(out.splitlines()) if li.startswith(RESULT_PREFIX))[len(RESULT_PREFIX) :]
    )
    published = run_through(workspace, "raybatch-1", ("batch_publish",), RAY_BATCH)["batch_publish"]
    from pipelines.io import db

    with db.connect(workspace) as conn:
        counts = conn.execute(
            "SELECT count(*), count(DISTINCT entity_id), min(version), max(version) FROM batch_predictions"
            " WHERE pipeline=%s AND run_id='raybatch-1'",
            (RAY_BATCH,),
        ).fetchone()
    print(
        f"\nray batch: {rows} rows in {result['ray_tasks']} row groups, {result['ray_seconds']:.1f} s with the "
        f"worker node ({killed} processes) killed mid-run"
    )
    assert counts == (rows, rows, 1, 1)  # every entity once, the pinned version
    assert result["rows_scored"] == rows and published["rows_scored"] == rows and result["ray_tasks"] == rows // 2000
