"""Serving throughput and latency: our Ray Serve endpoint against `mlflow models serve` and a bare
FastAPI + ONNX Runtime server, all on the same registered ONNX model and the same machine.

    .venv/bin/python bench/serving.py [--requests 400] [--concurrency 1 8 32]

It trains a small churn model in a throw-away state directory (registered as v1 in MLflow), then
for each server and each concurrency level sends `--requests` single-instance predictions from
that many client threads (one HTTP connection each) and reports throughput, p50 and p99, and their
ratios against the bare server (the baseline, measured in the same run). Every server is given
the features in the request, so the comparison is of serving, not of feature lookups; our
endpoint still logs every prediction to the platform database (off the hot path). Servers listen
on 127.0.0.1 and are stopped afterwards. The clients run on the same cores as the servers.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# This file is bench/serving.py: put the project first on the path so `serving` is the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from common import bench_state, free_port, percentiles, train_champion

from pipelines.core.settings import Settings, scoped_environ
from pipelines.core.system import stop_processes

PIPELINE = "bench_serving"
KEY = "bench-key"
BARE_SERVER = Path(__file__).with_name("bare_server.py")


def measure(
    post: Callable[[httpx.Client, int], httpx.Response], base_url: str, concurrency: int, total: int
) -> dict[str, float]:
    """`total` requests from `concurrency` threads; throughput (req/s), p50 and p99 (ms), errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    next_id = [0]

    def worker() -> None:
        with httpx.Client(base_url=base_url, timeout=60, headers={"x-api-key": KEY}) as client:
            for _ in range(5):  # warm the connection
                post(client, 1)
            while True:
                with lock:
                    if next_id[0] >= total:
                        return
                    next_id[0] += 1
                    n = next_id[0]
                t = time.perf_counter()
                r = post(client, n)
                elapsed = time.perf_counter() - t
                with lock:
                    latencies.append(elapsed)
                    errors[0] += r.status_code != 200

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - started
    p50, p99 = percentiles(latencies)
    return {"rps": len(latencies) / wall, "p50": p50, "p99": p99, "errors": float(errors[0])}


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}: {err}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s")


@contextmanager
def process(cmd: list[str], health: str, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(health, proc)
        yield
    finally:
        stop_processes([proc])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with bench_state() as settings:
        took = train_champion(settings, PIPELINE)
        print(f"setup (lifecycle to a registered ONNX model): {took:.0f}s")
        with scoped_environ({**settings.pod_env(), "MLCYCLE_SERVING_API_KEYS": KEY}):
            run_all(settings, args.requests, args.concurrency)


def sample_rows(settings: Settings, n: int = 500) -> list[dict[str, Any]]:
    from pipelines.core.spec import spec_for
    from pipelines.io.storage import open_storage, read_parquet

    spec = spec_for(settings, PIPELINE)
    test = read_parquet(open_storage(settings), f"{PIPELINE}/bench/features/test.parquet").head(n)
    cols = spec.model.numeric_features + spec.model.categorical_features
    return [
        {c: (v.item() if hasattr(v, "item") else v) for c, v in zip(cols, row, strict=True)}
        for row in test[cols].itertuples(index=False)
    ]


def run_all(settings: Settings, total: int, levels: list[int]) -> None:
    import mlflow.onnx

    from pipelines.io.registry import model_name
    from pipelines.io.tracking import mlflow_uri, setup_mlflow

    rows = sample_rows(settings)
    setup_mlflow(settings, PIPELINE)
    model_path = settings.state_path / "model.onnx"
    model_path.write_bytes(mlflow.onnx.load_model(f"models:/{model_name(PIPELINE)}/1").SerializeToString())

    def ours(client: httpx.Client, n: int) -> httpx.Response:
        row = rows[n % len(rows)]
        return client.post("/predict", json={"instances": [{"entity_id": n, "features": row}]})

    def mlflow_post(client: httpx.Client, n: int) -> httpx.Response:
        # MLflow's ONNX flavour feeds a DataFrame column as a 1-d array; our graph takes one
        # [n, 1] tensor per raw column, so the request names the tensors ("inputs").
        row = rows[n % len(rows)]
        tensors = {c: [[v if isinstance(v, str) else float(v)]] for c, v in row.items()}
        return client.post("/invocations", json={"inputs": tensors})

    results: dict[str, dict[int, dict[str, float]]] = {}
    port = free_port()
    with process([sys.executable, str(BARE_SERVER), str(model_path), str(port)], f"http://127.0.0.1:{port}/healthz"):
        results["bare FastAPI + ORT (baseline)"] = {
            c: measure(ours, f"http://127.0.0.1:{port}", c, total) for c in levels
        }

    port = free_port()
    mlflow_cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{model_name(PIPELINE)}/1",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH.
    bin_dir = str(Path(sys.executable).parent)
    env = {"MLFLOW_TRACKING_URI": mlflow_uri(settings), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    with process(mlflow_cmd, f"http://127.0.0.1:{port}/ping", env):
        results["mlflow models serve"] = {c: measure(mlflow_post, f"http://127.0.0.1:{port}", c, total) for c in levels}

    results.update(ray_serve(settings, ours, total, levels))
    report(results, levels, total)


def ray_serve(
    settings: Settings, post: Callable[[httpx.Client, int], httpx.Response], total: int, levels: list[int]
) -> dict[str, dict[int, dict[str, float]]]:
    import ray
    from ray import serve

    from pipelines.core.spec import spec_for
    from pipelines.io.registry import model_name
    from serving.config import VersionConfig
    from serving.deploy import connect, deploy, endpoint, serving_args

    out = {}
    settings = settings.model_copy(update={"serve_port": free_port()})
    # As `mlcycle serve start` runs Serve. (RAY_SERVE_ENABLE_HA_PROXY would be faster still, but it
    # binds every interface, and servers here listen on 127.0.0.1 only.)
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="mlcycle")
    try:
        connect(settings)
        spec = spec_for(settings, PIPELINE)
        for label, batch in (("Ray Serve, batching on", spec.serving.max_batch_size), ("Ray Serve, batching off", 1)):
            args = serving_args(
                spec, [VersionConfig(version=1, weight=100)], model_name(PIPELINE), online_features=False
            ).model_copy(update={"max_batch_size": batch})
            deploy(args)
            wait_http(endpoint(settings, PIPELINE) + "/readyz")
            out[f"{label} (max batch {batch})"] = {
                c: measure(post, endpoint(settings, PIPELINE), c, total) for c in levels
            }
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def report(results: dict[str, dict[int, dict[str, float]]], levels: list[int], total: int) -> None:
    base = results["bare FastAPI + ORT (baseline)"]
    print(f"\n{total} single-instance predictions per level; ratios against the bare server in this run")
    head = f"{'server':44} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'err':>4}"
    print(f"{head}   {'req/s x':>7} {'p50 x':>6} {'p99 x':>6}")
    for name, by_level in results.items():
        for c in levels:
            r, b = by_level[c], base[c]
            print(
                f"{name:44} {c:>4} {r['rps']:8.1f} {r['p50']:8.2f} {r['p99']:8.2f} {int(r['errors']):>4}   "
                f"{r['rps'] / b['rps']:7.2f} {r['p50'] / b['p50']:6.2f} {r['p99'] / b['p99']:6.2f}"
            )


if __name__ == "__main__":
    main()
