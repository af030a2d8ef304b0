"""Serving throughput and latency, measured with `wrk` (C): our Ray Serve endpoint against
`mlflow models serve` and a bare FastAPI + ONNX Runtime server, on the same registered ONNX model.

    .venv/bin/python bench/serving.py [--seconds 8] [--levels 1 16 64] [--json FILE] [--variants]

It trains a small churn model in a throw-away state directory (registered as v1 and, for the
canary figure, the same model again as v2), then drives each server for `--seconds` at each
connection level and reports req/s, p50, p99, p99.9 and non-2xx answers, with ratios against the
bare server and against `mlflow models serve` measured in the same run. Scenarios:

  request_features  every feature in the request (serving alone; every server gets the same rows)
  online_features   entity id only, features from the online store (our endpoint only)
  oip_infer         the request_features rows as Open Inference Protocol tensors, `/v2/models/<p>/infer`
  mlflow_invocations  the same rows as MLflow's `dataframe_records`, our `/invocations`

`mlcycle` is the endpoint exactly as `make demo` runs it (the embedded head's environment:
HAProxy ingress, throughput-optimized, one hop). `--variants` adds the levers switched off one
at a time. Last, the load-during-canary figure: 64 connections while the weights walk 5 -> 25 ->
50 -> 100 % and then roll back. Then overload: 64, 256 and 512 connections against the replica's
bound of 128 requests: answered req/s, the share shed with 503 + Retry-After, the admitted
requests' p99. Then autoscaling: 64 connections against one fixed ingress replica, then against the
autoscaling ingress (1 to 4 replicas) once Serve has grown it, in the same Ray (`--autoscaling-only`:
that figure alone). Last, the request log's bytes on disk per 1M logged requests (table, indexes,
TOAST of its day partitions): synthetic rows of the churn contract written through the serving
path's writer, extrapolated (`--request-log-only` measures only that, without training a model).
Servers listen on 127.0.0.1 and are stopped afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from bodies import Rows, invocation_bodies, mlflow_bodies, oip_bodies, ours_bodies
from common import bench_state, free_port, train_champion
from serving_report import report

from pipelines.core.settings import Settings, scoped_environ, spec_for
from pipelines.core.spec import Autoscaling
from pipelines.core.system import executable, stop_processes
from pipelines.io.registry import load_onnx_model, model_name, seal_version
from pipelines.io.storage import open_storage, read_parquet
from pipelines.io.tracking import mlflow_uri, setup_mlflow
from serving.config import VersionConfig
from serving.deploy import connect, deploy, endpoint, running_replicas, serve_env, serving_args, wait_direct_route
from serving.telemetry import FLUSH_EVERY_S
from tests import loadgen

PIPELINE = "bench_serving"
KEY = "bench-key"
BARE_SERVER = Path(__file__).with_name("bare_server.py")


def wait_http(url: str, proc: Any = None, timeout: float = 120) -> None:
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
    import subprocess

    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(health, proc)
        yield
    finally:
        stop_processes([proc])


def sample_rows(settings: Settings, n: int = 500) -> tuple[list[Any], Rows]:
    """Entity ids and feature rows of the test set (the entities are in the online store)."""
    spec = spec_for(settings, PIPELINE)
    test = read_parquet(open_storage(settings), f"{PIPELINE}/bench/features/test.parquet").head(n)
    cols = spec.model.numeric_features + spec.model.categorical_features
    rows = [
        {c: (v.item() if hasattr(v, "item") else v) for c, v in zip(cols, row, strict=True)}
        for row in test[cols].itertuples(index=False)
    ]
    return [v.item() if hasattr(v, "item") else v for v in test[spec.entity.join_key]], rows


def measurer(levels: list[int], seconds: float) -> Callable[..., list[dict[str, Any]]]:
    def measure(server: str, url: str, bodies: list[str], scenario: str = "request_features") -> list[dict[str, Any]]:
        loadgen.run(url, bodies, {"x-api-key": KEY}, 1, 2)  # warm up
        out = []
        for c in levels:
            r = loadgen.run(url, bodies, {"x-api-key": KEY}, c, seconds)
            out.append({"scenario": scenario, "server": server, **r.as_dict()})
            print(
                f"  {scenario:16} {server:34} c={c:<3} {r.rps:8.1f} req/s  p50 {r.p50_ms:7.2f}  p99 {r.p99_ms:8.2f}"
                f"  p99.9 {r.p999_ms:8.2f} ms  non-2xx {r.non_2xx}",
                flush=True,
            )
        return out

    return measure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--json", type=Path, help="write the measurements here, a JSON list")
    parser.add_argument("--variants", action="store_true", help="also our endpoint with each lever off")
    parser.add_argument("--overload-only", action="store_true", help="only our endpoint's overload figures")
    parser.add_argument("--request-log-only", action="store_true", help="only the request log's bytes per 1M")
    parser.add_argument("--log-rows", type=int, default=200_000, help="rows written to measure the request log")
    parser.add_argument("--autoscaling-only", action="store_true", help="only the 1 replica / autoscaling figures")
    parser.add_argument("--canary-only", action="store_true", help="only the canary walk against its steady p99")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.request_log_only:
        with bench_state() as settings:
            results = [request_log_size(settings, args.log_rows)]
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return
    loadgen.wrk_binary()
    with bench_state() as settings:
        took = train_champion(settings, PIPELINE)
        print(f"setup (lifecycle to a registered ONNX model): {took:.0f}s")
        with scoped_environ({**settings.pod_env(), "MLCYCLE_SERVING_API_KEYS": KEY}):
            if args.overload_only or args.autoscaling_only or args.canary_only:
                results = one_scenario(settings, only_scenario(args))
            else:
                results = run_all(settings, measurer(args.levels, args.seconds), args.variants)
    report(results, args.levels)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


def canary_version() -> None:
    """Version 2 of the champion's model, the same files (the canary's), sealed as serving wants."""
    import mlflow

    client = mlflow.MlflowClient()
    v1 = client.get_model_version(model_name(PIPELINE), "1")
    v2 = client.create_model_version(model_name(PIPELINE), v1.source, run_id=v1.run_id)
    seal_version(client, model_name(PIPELINE), int(v2.version))  # serving deploys sealed versions only


def only_scenario(args: argparse.Namespace) -> Callable[..., list[dict[str, Any]]]:
    if args.canary_only:

        def walk(served: Settings, url: str, bodies: list[str]) -> list[dict[str, Any]]:
            canary_version()
            return [canary_under_load(served, url, bodies)]

        return walk
    return overload if args.overload_only else autoscaling


def run_all(settings: Settings, measure: Callable[..., list[dict[str, Any]]], variants: bool) -> list[dict[str, Any]]:

    ids, rows = sample_rows(settings)
    setup_mlflow(settings, PIPELINE)
    model_path = settings.state_path / "model.onnx"
    model_path.write_bytes(load_onnx_model(settings, PIPELINE, model_name(PIPELINE), 1))
    canary_version()

    results: list[dict[str, Any]] = []
    port = free_port()
    with process([sys.executable, str(BARE_SERVER), str(model_path), str(port)], f"http://127.0.0.1:{port}/healthz"):
        results += measure("bare", f"http://127.0.0.1:{port}/predict", ours_bodies(ids, rows))

    port = free_port()
    mlflow_cmd = [executable("mlflow"), "models", "serve", "-m", f"models:/{model_name(PIPELINE)}/1"]
    mlflow_cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH.
    bin_dir = str(Path(sys.executable).parent)
    env = {"MLFLOW_TRACKING_URI": mlflow_uri(settings), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    with process(mlflow_cmd, f"http://127.0.0.1:{port}/ping", env):
        results += measure("mlflow", f"http://127.0.0.1:{port}/invocations", mlflow_bodies(rows))

    configs: list[tuple[str, dict[str, str], dict[str, Any]]] = [("mlcycle", {}, {})]
    if variants:
        configs += [
            ("mlcycle, Python proxy (no HAProxy)", {"RAY_SERVE_ENABLE_HA_PROXY": "0"}, {}),
            ("mlcycle, a deployment per version", {}, {"version_deployments": True}),
            ("mlcycle, batches of 1", {}, {"max_batch_size": 1}),
        ]
    for name, env_over, args_over in configs:
        with ray_serve(settings, env_over) as (url, served):
            spec = spec_for(settings, PIPELINE)
            one = [VersionConfig(version=1, weight=100)]
            deploy(serving_args(spec, one, model_name(PIPELINE), **args_over))
            wait_http(url + "/readyz")
            results += measure(name, url + "/predict", ours_bodies(ids, rows))
            if name == "mlcycle":
                results += measure(name, url + "/predict", ours_bodies(ids, None), "online_features")
                v2 = f"{url.split('/v1/')[0]}/v2/models/{PIPELINE}/infer"
                results += measure(name, v2, oip_bodies(ids, rows), "oip_infer")
                results += measure(name, url + "/invocations", invocation_bodies(ids, rows), "mlflow_invocations")
                results.append(canary_under_load(settings, url, ours_bodies(ids, rows)))
                results += overload(settings, url, ours_bodies(ids, rows))
                results += autoscaling(served, url, ours_bodies(ids, rows))
    results.append(request_log_size(settings))
    return results


def request_log_size(settings: Settings, rows: int = 200_000, batch: int = 5_000) -> dict[str, Any]:
    """Bytes on disk per 1M logged requests: `rows` rows (the churn contract's features as served,
    a score, a key id) written with the ingress's own writer (COPY, then the insert that skips
    duplicates), the growth of the request log's partitions (table, indexes, TOAST), extrapolated."""
    import random
    import uuid
    from datetime import UTC, datetime, timedelta

    from pipelines.core.spec import load_spec
    from pipelines.io import db
    from pipelines.ml.datagen import ChurnConfig, generate_churn
    from serving.records import LogRow
    from serving.telemetry import RequestLog

    spec = load_spec(settings.project_dir / "include" / "pipelines" / "churn.yaml")
    cols = spec.model.numeric_features + spec.model.categorical_features
    frame = generate_churn(ChurnConfig(customers=2000, months=1, seed=5))
    features = [
        json.dumps({c: (v.item() if hasattr(v, "item") else v) for c, v in r.items()})
        for r in frame[cols].to_dict("records")
    ]
    size_sql = (
        "SELECT COALESCE(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits"
        " WHERE inhparent = 'inference_requests'::regclass"
    )
    rng, now, log = random.Random(3), datetime.now(UTC), RequestLog(lambda: db.database_url(settings), "bench_log")
    with db.connect(settings) as conn:
        before = int(conn.execute(size_sql).fetchone()[0])  # type: ignore[index]
    for start in range(0, rows, batch):
        log.write(
            [
                LogRow(
                    uuid.uuid4(),
                    "bench_log",
                    1,
                    str(n % 2000),
                    features[n % len(features)],
                    rng.random(),
                    rng.uniform(0.5, 20),
                    "ok",
                    None,
                    False,
                    now - timedelta(seconds=n * 3600 / rows),
                    key_id="bootstrap",
                )
                for n in range(start, min(start + batch, rows))
            ]
        )
    log.close()
    with db.connect(settings, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE inference_requests")  # the visibility map and free space map included
        after = int(conn.execute(size_sql).fetchone()[0])  # type: ignore[index]
    per_million = round((after - before) * 1_000_000 / rows)
    print(
        f"\nrequest log: {after - before:,} bytes for {rows:,} rows: {per_million:,} bytes per 1M requests"
        f" ({per_million / 2**30:.2f} GiB; {(after - before) / rows:.0f} B/row)"
    )
    return {"scenario": "request_log", "bytes_per_million": per_million, "rows": rows}


def one_scenario(settings: Settings, scenario: Callable[..., list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One of our endpoint's figures alone (`overload`, `autoscaling`), on a Ray of its own."""
    ids, rows = sample_rows(settings)
    with ray_serve(settings, {}) as (url, served):
        deploy(serving_args(spec_for(settings, PIPELINE), [VersionConfig(version=1, weight=100)], model_name(PIPELINE)))
        wait_http(url + "/readyz")
        wait_direct_route(served, PIPELINE)  # the ports of the bench's own Ray
        loadgen.run(url + "/predict", ours_bodies(ids, rows), {"x-api-key": KEY}, 1, 2)  # warm up
        return scenario(served, url, ours_bodies(ids, rows))


@contextmanager
def ray_serve(settings: Settings, env_over: dict[str, str]) -> Iterator[tuple[str, Settings]]:
    """A Ray of the bench's own, started as `mlcycle serve start` starts the embedded head: the
    endpoint, and the settings with its free ports."""
    import ray
    from ray import serve

    settings = settings.model_copy(
        update={
            "serve_port": free_port(),
            "haproxy_stats_port": free_port(),
            "haproxy_metrics_port": free_port(),
            "serve_fallback_port": free_port(),
        }
    )
    env = {**serve_env(settings, executable("mlcycle-haproxy"), str(settings.state_path)), **env_over}
    with scoped_environ(env):
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="mlcycle")
        try:
            connect(settings)
            yield endpoint(settings, PIPELINE), settings
        finally:
            serve.shutdown()
            ray.shutdown()


def canary_under_load(settings: Settings, url: str, bodies: list[str], connections: int = 64) -> dict[str, Any]:
    """64 connections while the weights walk 5 -> 25 -> 50 -> 100 % and back (a rollback), against
    the steady p99 of the same connections just before it (v1 alone, nothing changing)."""
    spec = spec_for(settings, PIPELINE)
    plan = [(95, 5), (75, 25), (50, 50), (0, 100), (100, 0)]
    seconds = 3.0 * len(plan) + 6
    steady = loadgen.run(url + "/predict", bodies, {"x-api-key": KEY}, connections, seconds)
    proc, work = loadgen.start(url + "/predict", bodies, {"x-api-key": KEY}, connections, seconds)
    time.sleep(3)
    for w1, w2 in plan:
        versions = [VersionConfig(version=1, weight=w1), VersionConfig(version=2, weight=w2)]
        deploy(serving_args(spec, versions, model_name(PIPELINE), canary={"state": "canary", "percent": w2}))
        time.sleep(3)
    r = loadgen.finish(proc, work, connections, seconds)
    out = {"scenario": "canary_walk", "server": "mlcycle", **r.as_dict(), "steady_p99_ms": steady.p99_ms}
    print(
        f"  canary walk 5->25->50->100% and rollback under {connections} connections: {r.requests} requests,"
        f" non-2xx {r.non_2xx}, socket errors {r.socket_errors}, p99 {r.p99_ms:.1f} ms, max {r.max_ms:.1f} ms;"
        f" steady p99 before it {steady.p99_ms:.1f} ms: walk/steady {r.p99_ms / steady.p99_ms:.2f}x"
    )
    return out


OVERLOAD_LEVELS = (64, 256, 512)


def overload(settings: Settings, url: str, bodies: list[str], seconds: float = 6.0) -> list[dict[str, Any]]:
    """Past the replica's bound (`serving.max_concurrent_requests`, enforced by HAProxy: as many
    again wait in its queue, the rest are shed): at each level, the answered req/s, the share shed
    (503 + Retry-After) and the p99 of the admitted requests, server-side (the request log's
    latency in the replica; it leaves out the wait in HAProxy's queue, which wrk's p99 holds where
    nothing is shed, and where requests are shed wrk's histogram mixes in the sub-ms 503s)."""
    from pipelines.io import db

    bound = spec_for(settings, PIPELINE).serving.max_concurrent_requests
    out = []
    for c in OVERLOAD_LEVELS:
        with db.connect(settings) as conn:
            (since,) = conn.execute("SELECT now()").fetchone() or (None,)
        r = loadgen.run(url + "/predict", bodies, {"x-api-key": KEY}, c, seconds, statuses=True)
        time.sleep(FLUSH_EVERY_S + 1.5)  # the request log is written in batches
        with db.connect(settings) as conn:
            (p99,) = conn.execute(
                "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY l) FROM (SELECT max(latency_ms) AS l"
                " FROM inference_requests WHERE pipeline=%s AND created_at >= %s GROUP BY request_id) AS t",
                (PIPELINE, since),
            ).fetchone() or (None,)
        statuses = r.statuses or {}
        answered = statuses.get(200, 0)
        row = {
            "scenario": "overload",
            "server": "mlcycle",
            **r.as_dict(),
            "bound": bound,
            "answered_rps": round(answered / r.seconds, 1) if r.seconds else 0.0,
            "shed_share": round(statuses.get(503, 0) / max(1, sum(statuses.values())), 4),
            "admitted_p99_ms": round(float(p99), 2) if p99 is not None else None,
        }
        out.append(row)
        print(
            f"  overload  c={c:<4} bound {bound}: answered {row['answered_rps']:8.1f} req/s,"
            f" shed {row['shed_share']:.1%} (503s with Retry-After: {r.retry_after}),"
            f" other statuses {sorted(set(statuses) - {200, 503})},"
            f" admitted p99 {row['admitted_p99_ms']} ms (server-side), p99 of all answers {r.p99_ms:.1f} ms (wrk),"
            f" socket errors {r.socket_errors}",
            flush=True,
        )
    return out


AUTOSCALING = Autoscaling(
    min_replicas=1, max_replicas=4, target_ongoing_requests=16, upscale_delay_s=1, downscale_delay_s=5
)
RAMP_MAX_S = 240
"""The longest wrk loads the autoscaling ingress before it is measured (until `max_replicas` run):
Serve sees the load within ~15 s, and a new replica loads its model first (over a minute on a
loaded 2-core host)."""


def autoscaling(
    settings: Settings, url: str, bodies: list[str], seconds: float = 10.0, connections: int = 64
) -> list[dict[str, Any]]:
    """`connections` against one fixed ingress replica, then against the autoscaling ingress
    (`AUTOSCALING`) once the same load grew it to `max_replicas` (at most `RAMP_MAX_S`): req/s and
    p99 of each, and the replicas running while it was measured."""
    args = serving_args(spec_for(settings, PIPELINE), [VersionConfig(version=1, weight=100)], model_name(PIPELINE))
    out = []
    for label, auto in (("1", None), ("auto", AUTOSCALING)):
        deploy(args.model_copy(update={"replicas": 1, "autoscaling": auto}))
        wait_direct_route(settings, PIPELINE)
        if auto is not None:
            proc, work = loadgen.start(url + "/predict", bodies, {"x-api-key": KEY}, connections, RAMP_MAX_S)
            began = time.monotonic()
            while running_replicas(PIPELINE) < auto.max_replicas and time.monotonic() - began < RAMP_MAX_S - 10:
                time.sleep(1)
            loadgen.stop(proc, work, connections)
            print(
                f"  autoscaling: {running_replicas(PIPELINE)} replicas after {time.monotonic() - began:.0f} s of load"
            )
        grown = running_replicas(PIPELINE)
        r = loadgen.run(url + "/predict", bodies, {"x-api-key": KEY}, connections, seconds)
        replicas = min(grown, running_replicas(PIPELINE))
        out.append(
            {"scenario": "autoscaling", "server": "mlcycle", "replicas": label, "running": replicas, **r.as_dict()}
        )
        print(
            f"  autoscaling replicas={label:<4} ({replicas} running) c={connections}: {r.rps:8.1f} req/s,"
            f" p99 {r.p99_ms:.1f} ms, non-2xx {r.non_2xx}, socket errors {r.socket_errors}",
            flush=True,
        )
    deploy(args)  # back to the spec's fixed replicas
    return out


if __name__ == "__main__":
    main()
