"""The Ray Serve application against a real local Ray, with models from the real registry."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines.core.settings import Settings, scoped_environ, spec_for
from pipelines.core.spec import Autoscaling
from pipelines.core.system import executable, private_dir
from pipelines.io import db, vectors
from pipelines.io.registry import model_name
from serving.config import VersionConfig
from serving.deploy import (
    connect,
    deploy,
    endpoint,
    haproxy_dir,
    running_replicas,
    serve_env,
    serving_args,
    wait_direct_route,
)
from serving.haproxy import replicas_up
from serving.telemetry import FLUSH_EVERY_S
from tests import loadgen
from tests.integration.helpers import SHORT_CANARY, end_test_serve, run_through, serving_workspace, small_spec
from tests.services import free_port_pairs

pytestmark = pytest.mark.integration

PIPELINE = "churn_serve"
SOURCE: dict[str, Any] = {}  # the fixture's file of generated churn data, with nulls (`_source`)
NULLABLE = ("usage_hours_30d", "region")
""""Nullable in the fixture's contract; about 8 % of them null for customers past 300 (the ones
below keep every value: the tests that read their features rely on it)."""
KEY = "test-key-1"
LIFECYCLE = ("ingest", "validate", "features", "train", "evaluate", "promote")
FAST = {"n_trials": 2, "max_epochs": 3, "early_stopping_patience": 2, "pruner": "none", "batch_size": 128}
# Non-inferiority: a retrain on the same data may register as challenger.
EVAL = {"min_primary": 0.6, "min_improvement": -0.2, "bootstrap_samples": 100, "max_latency_ms_per_row": 50.0}


@pytest.fixture(scope="module")
def served(platform: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    import ray

    tmp = tmp_path_factory.mktemp("serving")
    settings = serving_workspace(platform, tmp)
    SOURCE.update(_source(tmp))
    small_spec(settings, SOURCE, name=PIPELINE, training=FAST, evaluation=EVAL, contract=_contract())
    assert run_through(settings, "serve-1", LIFECYCLE, PIPELINE)["promote"]["version"] == 1
    assert run_through(settings, "serve-2", LIFECYCLE, PIPELINE)["promote"]["version"] == 2
    env = {
        "MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir),
        "MLCYCLE_ARTIFACT_ROOT": str(settings.artifact_root),
        "MLCYCLE_SERVING_API_KEYS": f"{KEY},another-key",
        # Serve as `mlcycle serve start` runs it: HAProxy, throughput-optimized, one hop
        **serve_env(settings, executable("mlcycle-haproxy"), str(tmp)),
    }
    private_dir(haproxy_dir(str(tmp)))  # as `mlcycle serve start` makes it, before Ray writes into it
    with scoped_environ(env):
        # A cluster of the test's own, even where `mlcycle serve start` runs one already.
        # its workers (the replicas) inherit the raylet's environment: they connect to the database
        # as the serving role, as every runtime's do (it cannot write MLflow's tables); this
        # process (labels, checks) keeps the platform's login
        with scoped_environ({"MLCYCLE_DATABASE_URL": db.enable_serving_role(settings)}):
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="mlcycle")
        try:
            connect(settings)
            yield settings
        finally:
            end_test_serve(str(tmp))


def _source(tmp: Path) -> dict[str, Any]:
    """The churn generator's data (600 customers, 8 months) as a Parquet file source, with nulls in
    the `NULLABLE` columns of some customers past 300."""
    from pipelines.ml.datagen import ChurnConfig, generate_churn

    df = generate_churn(ChurnConfig(customers=600, months=8, seed=4))
    rng = np.random.default_rng(4)
    for column in NULLABLE:
        df[column] = df[column].astype(object if column == "region" else float)
        df.loc[(df["customer_id"] > 300) & (rng.random(len(df)) < 0.08), column] = None
    path = tmp / "churn.parquet"
    df.to_parquet(path, index=False)
    return {"kind": "file", "path": str(path)}


def _contract() -> dict[str, Any]:
    from tests.specs import churn_spec_dict

    contract = churn_spec_dict()["contract"]
    contract["min_rows"] = 100
    for column in NULLABLE:
        contract["columns"][column]["nullable"] = True
    return contract


def _deploy(settings: Settings, weights: dict[int, float], shadow: int | None = None) -> None:
    versions = [VersionConfig(version=v, weight=w) for v, w in weights.items()]
    if shadow is not None:
        versions.append(VersionConfig(version=shadow, shadow=True))
    deploy(serving_args(spec_for(settings, PIPELINE), versions, model_name(PIPELINE)))


def _client(settings: Settings) -> httpx.Client:
    return httpx.Client(base_url=endpoint(settings, PIPELINE), headers={"x-api-key": KEY}, timeout=30)


def _predict(client: httpx.Client, ids: list[int], headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/predict", json={"instances": [{"entity_id": i} for i in ids]}, headers=headers)


def version_threshold(settings: Settings, version: int) -> float | None:
    """The decision threshold the registered version's ONNX graph records."""
    from pipelines.io.registry import load_onnx_model
    from pipelines.ml.imbalance import session_threshold
    from pipelines.ml.model import onnx_session

    session = onnx_session(load_onnx_model(settings, PIPELINE, model_name(PIPELINE), version))
    return session_threshold(session)


def test_predict_returns_a_version_and_is_logged(served: Settings) -> None:
    _deploy(served, {1: 100})
    with _client(served) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = _predict(c, [1, 2, 3])
        assert r.status_code == 200, r.text
        body = r.json()
        assert [p["version"] for p in body["predictions"]] == [1, 1, 1]
        assert all(0 < p["score"] < 1 for p in body["predictions"])
        threshold = version_threshold(served, 1)  # tuned on the validation rows, recorded in the graph
        assert threshold is not None and 0 < threshold < 1
        assert [p["class"] for p in body["predictions"]] == [int(p["score"] >= threshold) for p in body["predictions"]]
        # Request-time features override the online store's.
        over = c.post("/predict", json={"instances": [{"entity_id": 1, "features": {"support_calls_30d": 40}}]})
        assert over.json()["predictions"][0]["score"] != body["predictions"][0]["score"]
        info = c.get("/").json()
        assert info["weights"] == {"1": 100.0}
    anonymous = httpx.get(f"{endpoint(served, PIPELINE)}/", timeout=30)  # versions and canary: behind the key
    assert anonymous.status_code == 401 and "API key" in anonymous.text
    rows = _wait_for_rows(served, body["request_id"], 3)
    assert {(r[0], r[1], r[2]) for r in rows} == {("1", 1, "ok"), ("2", 1, "ok"), ("3", 1, "ok")}
    assert all(r[3]["usage_hours_30d"] is not None for r in rows)  # the features used are logged
    (overridden,) = _wait_for_rows(served, over.json()["request_id"], 1)
    assert overridden[3]["support_calls_30d"] == 40
    with db.connect(served) as conn:  # the replicas wrote them as the serving role
        users = {r[0] for r in conn.execute("SELECT usename FROM pg_stat_activity WHERE datname = current_database()")}
    assert db.SERVING_ROLE in users, users


def test_similar_reads_the_champions_space_and_scored_entities_are_written_to_it(served: Settings) -> None:
    from tests.integration.helpers import run

    assert run(served, "embed", "serve-1", pipeline=PIPELINE)["state"] == "ready"
    _deploy(served, {1: 100})
    with _client(served) as c:
        near = c.get("/similar", params={"entity_id": 1, "k": 5})
        assert near.status_code == 200, near.text
        body = near.json()
        assert (body["version"], body["distance"], body["k"]) == (1, "cosine", 5)
        distances = [n["distance"] for n in body["neighbours"]]
        assert (
            len(distances) == 5
            and distances == sorted(distances)
            and "1" not in {n["entity_id"] for n in body["neighbours"]}
        )
        unknown = c.get("/similar", params={"entity_id": "nobody"})
        assert unknown.status_code == 404 and "'nobody' has no vector in v1" in unknown.json()["reason"]
        bad = c.get("/similar", params={"entity_id": 1, "k": 1000})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "k"
        # dual write: a scored entity's vector is refreshed in the space of the version that scored it.
        # This replica served v1 before its space existed: it learns of the space at its next
        # request log write, and writes vectors from then on (a bounded number of requests).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            scored = c.post("/predict", json={"instances": [{"entity_id": 1, "features": {"support_calls_30d": 40}}]})
            assert scored.status_code == 200
            with db.connect(served) as conn:
                sql = f'SELECT source FROM vectors."{PIPELINE}_v1" WHERE entity_id = %s'
                row = conn.execute(sql, ("1",)).fetchone()
            if row and row[0] == "served":
                break
            time.sleep(0.2)
    assert row is not None and row[0] == "served"
    assert httpx.get(f"{endpoint(served, PIPELINE)}/similar?entity_id=1", timeout=30).status_code == 401


def _wait_for_rows(settings: Settings, request_id: str, n: int, shadow: bool | None = None) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + 15
    while True:
        with db.connect(settings) as conn:
            rows = conn.execute(
                "SELECT entity_id, model_version, status, features, score, shadow FROM inference_requests"
                " WHERE request_id = %s AND (%s::bool IS NULL OR shadow = %s)",
                (request_id, shadow, shadow),
            ).fetchall()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_auth_validation_and_size_limits(served: Settings) -> None:
    _deploy(served, {1: 100})
    with httpx.Client(base_url=endpoint(served, PIPELINE), timeout=30) as anon:
        assert anon.post("/predict", json={"instances": [{"entity_id": 1}]}).status_code == 401
        bad = anon.post("/predict", json={"instances": [{"entity_id": 1}]}, headers={"x-api-key": "wrong"})
        assert bad.status_code == 401
        bearer = anon.post(
            "/predict", json={"instances": [{"entity_id": 1}]}, headers={"authorization": "Bearer another-key"}
        )
        assert bearer.status_code == 200
    with _client(served) as c:
        r = c.post("/predict", json={"instances": [{"entity_id": {"nested": 1}}]})
        assert r.status_code == 422
        assert r.json()["detail"][0]["field"].startswith("instances[0].entity_id")
        r = c.post("/predict", json={"instances": []})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "instances"
        r = c.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = c.post("/predict", json={"instances": [{"entity_id": 999999}]})  # unknown entity: no online features
        assert r.status_code == 422 and "missing features" in r.json()["detail"][0]["message"]
        # a value of the wrong type is the client's fault: 422, never an error of the serving version
        typed = c.post("/predict", json={"instances": [{"entity_id": 5, "features": {"usage_hours_30d": "abc"}}]})
        assert typed.status_code == 422, typed.text
        assert typed.json()["detail"][0]["message"] == "usage_hours_30d: not a number ('abc')"
        named = c.post("/predict", json={"instances": [{"entity_id": "x"}]})  # the key is an integer
        assert named.status_code == 422, named.text
        assert named.json()["detail"][0]["message"] == "entity_id: not an integer ('x')"
        time.sleep(10 * FLUSH_EVERY_S)  # the request log is written off the request path
        with db.connect(served) as conn:
            errors = conn.execute(
                "SELECT count(*) FROM inference_requests WHERE pipeline = %s AND entity_id = '5' AND status = 'error'",
                (PIPELINE,),
            ).fetchone()
        assert errors == (0,)
        big = {"instances": [{"entity_id": 1, "features": {"plan": "x" * 2_000_000}}]}
        assert c.post("/predict", json=big).status_code == 413


def test_readyz_tells_anyone_ready_and_only_a_key_holder_the_versions(served: Settings) -> None:
    """A kubelet's probe sends no key: readiness answers it, with nothing but the status."""
    _deploy(served, {1: 100})
    anonymous = httpx.get(f"{endpoint(served, PIPELINE)}/readyz", timeout=30)
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
    wrong = httpx.get(f"{endpoint(served, PIPELINE)}/readyz", headers={"x-api-key": "wrong"}, timeout=30)
    assert wrong.json() == {"status": "ready"}
    with _client(served) as c:
        ready = c.get("/readyz").json()
    assert ready == {"status": "ready", "versions": [1], "generation": ready["generation"]} and ready["generation"] >= 1


def _read_head(conn: socket.socket) -> bytes:
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_a_chunked_body_over_the_limit_is_refused_before_the_rest_is_sent(served: Settings) -> None:
    """A chunked body (no Content-Length) whose first chunks already pass serving.max_payload_bytes:
    the 413 arrives while the body is still unfinished (no last chunk sent), so the endpoint never
    waited for it, nor held it whole."""
    _deploy(served, {1: 100})
    limit = spec_for(served, PIPELINE).serving.max_payload_bytes
    head = (
        f"POST /v1/pipelines/{PIPELINE}/predict HTTP/1.1\r\nHost: {served.serve_host}\r\nx-api-key: {KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection((served.serve_host, served.serve_port), timeout=20) as conn:
        conn.sendall(head.encode())
        chunk, sent = b'{"instances": [' + b" " * 65_000, 0
        while sent <= limit:  # bounded: about 17 chunks of 64 KB
            conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        answer = _read_head(conn)  # the body is unfinished: an endpoint that waits for it times out here
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
        assert sent < 2 * limit


def test_a_5xx_names_what_failed_and_the_request_id_never_the_database_error(served: Settings) -> None:
    """The platform database unreachable (an application whose replica has a closed port as its
    database URL, with a password): `/similar` answers 503 in the one error shape, with the
    request id; no database error, address, password or exception is in the body."""
    from ray import serve

    from serving.app import Ingress
    from serving.deployments import STATIC_KEYS

    name = f"{PIPELINE}_nodb"
    args = serving_args(spec_for(served, PIPELINE), [], model_name(PIPELINE), pipeline=name, online_features=False)
    (closed,) = free_port_pairs(1)
    url = f"postgresql://mlcycle:s3cret-pw@127.0.0.1:{closed}/mlcycle"
    app = Ingress.options(  # type: ignore[attr-defined]
        name="ingress",
        user_config=args.model_dump(mode="json"),
        ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": {"MLCYCLE_DATABASE_URL": url}}},
    ).bind(args.model_dump(include=STATIC_KEYS))
    serve.run(app, name=name, route_prefix=args.route_prefix)
    try:
        sent_id = str(uuid.uuid4())
        r = httpx.get(
            f"{endpoint(served, name)}/similar",
            params={"entity_id": 1},
            headers={"x-api-key": KEY, "x-request-id": sent_id},
            timeout=60,
        )
        assert r.status_code == 503, r.text
        assert r.json() == {
            "error": "database_unavailable",
            "reason": "the platform database could not be read; retry after 1 s",
            "field": None,
            "request_id": sent_id,
        }
        for leak in ("s3cret", str(closed), "127.0.0.1", "connection", "Error", "/"):
            assert leak not in r.json()["reason"], leak
    finally:
        serve.delete(name)


def test_haproxys_files_are_private_and_its_admin_socket_read_only(served: Settings) -> None:
    """The HAProxy Serve runs (through mlcycle-haproxy): its folders 0700, its admin socket 0600 at
    level user, so not even the owner's other processes can re-point a backend through it."""
    _deploy(served, {1: 100})
    wait_direct_route(served, PIPELINE)
    hap = haproxy_dir(str(Path(str(served.pipelines_dir)).parent))
    sockets = _live_sockets(served)
    assert sockets, list(hap.iterdir())
    assert stat.S_IMODE(os.lstat(hap).st_mode) == 0o700
    for sock in sockets:
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.lstat(sock.parent).st_mode) == 0o700
        # Serve writes its config, then starts HAProxy through the wrapper, which rewrites it: a
        # reload may be under way (an application deleted by the test before), so wait for it
        config, _ = _poll(lambda p=sock.parent / "haproxy.cfg": " mode 600 level user " in p.read_text(), 30)
        assert config, (sock.parent / "haproxy.cfg").read_text()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(f"disable server http-{PIPELINE}/x\n".encode())
            assert b"Permission denied" in s.recv(4096)


def test_the_serving_api_fuzzed_from_its_openapi_answers_no_5xx_and_every_4xx_says_why(served: Settings) -> None:
    """Schemathesis: requests generated from the app's own OpenAPI description and against it
    (wrong types, missing fields, out-of-range values), with the key and, for POST, without it too."""
    from tests.fuzz import fuzz

    _deploy(served, {1: 100})
    base = endpoint(served, PIPELINE)
    schema = httpx.get(f"{base}/openapi.json", timeout=30).json()
    protocols = {"/v2/models/{model}/infer", "/v2/models/{model}", "/invocations"}  # OIP and MLflow's scoring
    assert {"/predict", "/"} | protocols <= set(schema["paths"]), schema["paths"]
    keyed = fuzz(schema, base, {"GET": {"x-api-key": KEY}, "POST": {"x-api-key": KEY}}, examples=40)
    anonymous = fuzz(schema, base, examples=10)
    assert keyed.problems == [] and anonymous.problems == [], (keyed.problems + anonymous.problems)[:5]
    assert keyed.statuses[200] > 0 and keyed.statuses[422] > 0, keyed.statuses  # both kinds of request were sent
    assert anonymous.statuses[401] > 0, anonymous.statuses
    with _client(served) as c:
        assert _predict(c, [1]).status_code == 200  # and it still answers


def test_weighted_split_is_sticky_and_monotone(served: Settings) -> None:
    _deploy(served, {1: 70, 2: 30})
    ids = list(range(1, 601)) * 5  # 3,000 predictions over 600 entities
    seen: dict[int, set[int]] = {}
    with _client(served) as c:
        for i in range(0, len(ids), 100):
            r = _predict(c, ids[i : i + 100])
            assert r.status_code == 200, r.text
            for p in r.json()["predictions"]:
                seen.setdefault(int(p["entity_id"]), set()).add(p["version"])
    assert all(len(v) == 1 for v in seen.values())  # one entity, one version
    on_v2 = {e for e, v in seen.items() if v == {2}}
    assert abs(len(on_v2) / len(seen) - 0.30) < 0.06
    _deploy(served, {1: 50, 2: 50})
    with _client(served) as c:
        now = {int(p["entity_id"]): p["version"] for p in _predict(c, sorted(on_v2)).json()["predictions"]}
    assert set(now.values()) == {2}  # a growing canary keeps the entities it had


def test_labels_give_ab_results_on_the_info_endpoint(served: Settings, tmp_path: Path) -> None:
    """Labels loaded later (by request id, or by entity and time) join the served predictions;
    GET /v1/pipelines/<name> shows the champion/challenger difference with its p-value."""
    from pipelines.cli import main

    truth = pd.read_parquet(SOURCE["path"])
    latest = truth.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")
    _deploy(served, {1: 50, 2: 50})
    served_by: dict[int, tuple[str, int]] = {}
    with _client(served) as c:
        for start in range(1, 401, 100):
            r = _predict(c, list(range(start, start + 100)))
            assert r.status_code == 200, r.text
            for p in r.json()["predictions"]:
                served_by[int(p["entity_id"])] = (r.json()["request_id"], p["version"])
        rid = r.json()["request_id"]
    _wait_for_rows(served, rid, 100)
    ids = sorted(served_by)
    labels = pd.DataFrame(
        {
            "entity_id": ids,
            "label": [int(latest.loc[i, "churned"]) for i in ids],
            # half keyed by request, half by entity and the time the outcome was seen
            "request_id": [served_by[i][0] if i % 2 else None for i in ids],
            "observed_at": [None if i % 2 else "2099-01-01T00:00:00Z" for i in ids],
        }
    )
    path = tmp_path / "labels.csv"
    labels.to_csv(path, index=False)
    with scoped_environ(served.pod_env()):
        assert main(["labels", "load", "--pipeline", PIPELINE, str(path)]) == 0
        assert main(["labels", "load", "--pipeline", PIPELINE, str(path)]) == 0  # a reload changes nothing
    with db.connect(served) as conn:
        (n,) = conn.execute("SELECT count(*) FROM labels WHERE pipeline = %s", (PIPELINE,)).fetchone()
    assert n == len(ids)
    with _client(served) as c:
        ab = c.get("/").json()["ab"]
    assert ab["status"] == "ok", ab
    on = {v: sum(1 for _, ver in served_by.values() if ver == v) for v in (1, 2)}
    assert (ab["champion"]["version"], ab["challenger"]["version"]) == (1, 2)
    assert (ab["champion"]["labelled"], ab["challenger"]["labelled"]) == (on[1], on[2])
    assert ab["metric"] == "roc_auc" and ab["champion"]["value"] > 0.6 and ab["challenger"]["value"] > 0.6
    assert 0 < ab["p_value"] <= 1 and ab["lower"] <= ab["difference"] <= ab["upper"]
    assert ab["verdict"] in {"no significant difference", "challenger better", "challenger worse"}


def _full_features(settings: Settings) -> dict[str, Any]:
    """Every feature of the fixture's model, within the contract (no online lookup needed)."""
    spec = spec_for(settings, PIPELINE)
    out: dict[str, Any] = {name: 1 for name in spec.model.numeric_features}
    out.update({name: spec.contract.columns[name].classes[0] for name in spec.model.categorical_features})
    return out


def _log_rows(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with db.connect(settings) as conn:
        return conn.execute(sql, params).fetchall()


def test_the_endpoint_enforces_the_contract_and_answers_one_request_id(served: Settings) -> None:
    """Every value the contract forbids is a 422 naming its field (none is scored or logged); a
    request that names one entity twice is logged per answer; the request id of the header is
    the body's; an over-long id is replaced, not echoed; an unknown pipeline answers JSON."""
    _deploy(served, {1: 100})
    full = _full_features(served)
    bad = {
        "plan": ("platinum", "plan: 'platinum' is not one of basic, premium, standard"),
        "region": (7, "region: not a string (7)"),
        "tenure_months": (-3, "tenure_months: -3 is below the minimum 0"),
        "monthly_charges": ("NaN", "monthly_charges: not a number ('NaN')"),
        "support_calls_30d": (None, "support_calls_30d: null, but the contract does not allow nulls for this feature"),
        "colour": ("red", "'colour': unknown feature (the model takes contract, days_since_last_login"),
    }
    with _client(served) as c:
        for name, (value, message) in bad.items():
            r = c.post("/predict", json={"instances": [{"entity_id": 9_000_007, "features": {**full, name: value}}]})
            assert r.status_code == 422, (name, r.text)
            (detail,) = r.json()["detail"]
            assert detail["field"] == f"instances[0].features.{name}" and detail["message"].startswith(message)
        for token in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):  # not JSON, yet sent by real clients
            body = b'{"instances": [{"entity_id": 9000007, "features": {"usage_hours_30d": ' + token + b"}}]}"
            r = c.post("/predict", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, (token, r.text)
            assert r.json()["detail"][0]["field"] == "instances[0].features.usage_hours_30d"
            assert "not a finite number" in r.json()["detail"][0]["message"]
        twice = c.post("/predict", json={"instances": [{"entity_id": 8}, {"entity_id": 8, "features": full}]})
        assert twice.status_code == 200, twice.text
        assert twice.headers["x-request-id"] == twice.json()["request_id"]
        mine = str(uuid.uuid4())
        assert _predict(c, [9], headers={"x-request-id": mine}).json()["request_id"] == mine
        long = _predict(c, [9], headers={"x-request-id": "x" * 10_000})
        assert long.status_code == 200 and len(long.headers["x-request-id"]) == 36
        assert long.headers["x-request-id"] == long.json()["request_id"]
    rows = _wait_for_rows(served, twice.json()["request_id"], 2)
    assert sorted(r[4] for r in rows) == sorted(p["score"] for p in twice.json()["predictions"])
    refused = _log_rows(
        served, "SELECT count(*) FROM inference_requests WHERE pipeline = %s AND entity_id = '9000007'", PIPELINE
    )
    assert refused == [(0,)]  # nothing refused reached the log
    unknown = httpx.get(endpoint(served, "no_such_pipeline") + "/", timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found", unknown.text


def test_any_json_value_in_any_feature_is_answered_200_or_4xx_and_only_conforming_ones_are_logged(
    served: Settings,
) -> None:
    """Hypothesis against the live endpoint: one feature of a full row replaced by any JSON value
    (NaN and infinities too) is answered 200 or 422, never 5xx; a 200 only for a value within the
    contract, and every logged row holds the value as sent."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hyp
    from hypothesis import strategies as st

    from tests.unit.test_request_contract import JSON_VALUES

    _deploy(served, {1: 100})
    spec = spec_for(served, PIPELINE)
    full = _full_features(served)
    answered: list[tuple[str, str, Any]] = []

    with _client(served) as c:

        @hyp(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(name=st.sampled_from([*full, "not_a_feature"]), value=JSON_VALUES)
        def one(name: str, value: Any) -> None:
            body = json.dumps({"instances": [{"entity_id": 9_100_000, "features": {**full, name: value}}]})
            r = c.post("/predict", content=body, headers={"content-type": "application/json"})
            assert r.status_code in (200, 422), (name, value, r.status_code, r.text[:300])
            column = spec.contract.columns.get(name)
            if r.status_code == 200:
                assert column is not None, (name, value)
                if value is None:
                    assert column.nullable, name
                elif name in spec.model.categorical_features:
                    assert value in column.classes, (name, value)
                else:
                    assert isinstance(value, int | float) and not isinstance(value, bool)
                    assert column.min is None or value >= column.min
                    assert column.max is None or value <= column.max
                answered.append((r.json()["request_id"], name, value))

        one()
    for request_id, name, value in answered[:20]:
        (row,) = _wait_for_rows(served, request_id, 1)
        assert row[2] == "ok" and row[3][name] == value


def test_a_stored_null_is_scored_as_the_model_scores_it_offline(served: Settings) -> None:
    """An entity whose latest stored row has nulls in nullable columns is answered by id, with the
    score the registered ONNX model gives that row offline; a null sent for a nullable feature is
    scored the same way, and logged as null."""
    from pipelines.io.registry import load_onnx_model
    from pipelines.ml.model import onnx_session, predict_onnx

    _deploy(served, {1: 100})
    df = pd.read_parquet(SOURCE["path"])
    latest = df.sort_values("event_timestamp").groupby("customer_id").tail(1)
    holes = latest[latest["usage_hours_30d"].isna() & latest["region"].isna()]
    if holes.empty:
        holes = latest[latest["usage_hours_30d"].isna()]
    row = holes.iloc[0]
    spec = spec_for(served, PIPELINE)
    names = spec.model.numeric_features + spec.model.categorical_features
    session = onnx_session(load_onnx_model(served, PIPELINE, model_name(PIPELINE), 1))
    offline = float(predict_onnx(session, pd.DataFrame([row[names].to_dict()]))[0])
    sent = {n: (None if pd.isna(row[n]) else row[n].item() if hasattr(row[n], "item") else row[n]) for n in names}
    with _client(served) as c:
        by_id = _predict(c, [int(row["customer_id"])])
        assert by_id.status_code == 200, by_id.text
        assert by_id.json()["predictions"][0]["score"] == pytest.approx(offline, abs=1e-5)
        r = c.post("/predict", json={"instances": [{"entity_id": 9_200_000, "features": sent}]})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["score"] == pytest.approx(offline, abs=1e-5)
    (logged,) = _wait_for_rows(served, by_id.json()["request_id"], 1)
    assert logged[3]["usage_hours_30d"] is None  # a null, never NaN, in the log's JSON


def _materialized_to(settings: Settings) -> str:
    """The instant the pipeline's online store was materialized to (Feast's record of its last
    materialization, the same for each of the feature service's views), in ISO form."""
    from datetime import UTC

    from pipelines.io.featurestore import feature_store

    spec = spec_for(settings, PIPELINE)
    with feature_store(spec, settings) as store:
        service = store.get_feature_service(spec.features.feature_service)
        ends = {store.get_feature_view(p.name).most_recent_end_time for p in service.feature_view_projections}
    assert len(ends) == 1, ends
    end = ends.pop()
    return (end if end.tzinfo else end.replace(tzinfo=UTC)).isoformat()


def test_batch_scores_equal_the_endpoints_for_the_same_entities_by_id(served: Settings, tmp_path: Path) -> None:
    """No training/serving skew between the two ways the platform scores an entity: 200 active
    customers (some with stored nulls) scored by the batch steps (pin, one partition, publish;
    features point-in-time from the offline store at the instant the online store was
    materialized to) and by the endpoint over HTTP by id (features from the online store): the same
    score within 1e-6, from the same version."""
    from tests.integration.helpers import run
    from tests.specs import churn_spec_dict

    df = pd.read_parquet(SOURCE["path"])
    newest = df[df["event_timestamp"] == df["event_timestamp"].max()]  # rows within every view's TTL
    chosen = newest.sample(200, random_state=3)
    assert chosen[list(NULLABLE)].isna().any(axis=None)  # a stored null is scored both ways too
    ids = sorted(int(i) for i in chosen["customer_id"])
    entities = tmp_path / "entities.csv"
    pd.DataFrame({"customer_id": ids}).to_csv(entities, index=False)
    batch = {
        **churn_spec_dict()["batch"],
        "as_of": _materialized_to(served),
        "entities": {"kind": "file", "path": str(entities)},
        "parallelism": 1,
    }
    small_spec(served, SOURCE, name=PIPELINE, training=FAST, evaluation=EVAL, contract=_contract(), batch=batch)
    try:
        pin = run(served, "batch_pin", "skew-1", PIPELINE)
        scored = run(served, "batch", "skew-1", PIPELINE, worker=0)
        run(served, "batch_publish", "skew-1", PIPELINE)
    finally:
        small_spec(served, SOURCE, name=PIPELINE, training=FAST, evaluation=EVAL, contract=_contract())
    assert (scored["rows_scored"], scored["rows_quarantined"]) == (200, 0)
    with db.connect(served) as conn:
        rows = conn.execute(
            f"SELECT entity_id, version, score FROM {PIPELINE}_predictions_latest WHERE run_id = 'skew-1'"
        ).fetchall()
    by_batch = {entity: (version, score) for entity, version, score in rows}
    assert sorted(by_batch) == sorted(map(str, ids))

    _deploy(served, {pin["version"]: 100})
    with _client(served) as c:
        answer = _predict(c, ids)
    assert answer.status_code == 200, answer.text
    online = {str(p["entity_id"]): (p["version"], p["score"]) for p in answer.json()["predictions"]}
    assert {e: v for e, (v, _) in online.items()} == {e: v for e, (v, _) in by_batch.items()}  # one version
    assert {v for v, _ in online.values()} == {pin["version"]}
    batch_scores = [by_batch[e][1] for e in sorted(online)]
    assert batch_scores == pytest.approx([online[e][1] for e in sorted(online)], abs=1e-6)


def test_no_request_poisons_the_log_under_load(served: Settings) -> None:
    """wrk sends 1,000 good requests in turn with one whose feature is NaN and one whose row the
    database refuses (a CHECK constraint put in for the test): the NaN is a 422, every answered
    request is logged, the refused row lands in the dead letters with the database's reason while
    the rest of its batch is written, and the queue drains within 2 s of the load ending."""
    _deploy(served, {1: 100})
    full = _full_features(served)
    poison = "424242"
    bodies = [json.dumps({"instances": [{"entity_id": 10_000 + n, "features": full}]}) for n in range(1000)]
    bodies.insert(500, '{"instances": [{"entity_id": 5, "features": {"usage_hours_30d": NaN}}]}')
    bodies.insert(700, json.dumps({"instances": [{"entity_id": int(poison), "features": full}]}))
    with db.connect(served) as conn:
        conn.execute(
            f"ALTER TABLE inference_requests ADD CONSTRAINT test_poison CHECK (entity_id <> '{poison}') NOT VALID"
        )
        (began,) = conn.execute("SELECT now()").fetchone()
    try:
        url = endpoint(served, PIPELINE) + "/predict"
        result = loadgen.run(url, bodies, {"x-api-key": KEY}, connections=16, seconds=6, statuses=True)
        ended = time.monotonic()
        assert result.statuses is not None and set(result.statuses) == {200, 422}, result
        assert result.requests > len(bodies), result  # every body was sent at least once
        seen = []
        with _client(served) as c:
            while (pending := c.get("/").json()["request_log"]["pending"]) and time.monotonic() < ended + 2:
                seen.append((round(time.monotonic() - ended, 2), pending))
                time.sleep(0.05)
        assert pending == 0, seen
        # the queue is empty; the last flush may still be writing (isolating a refused row takes
        # a few writes): wait for the database to hold every answer, bounded
        deadline = time.monotonic() + 15
        while True:
            ((logged,),) = _log_rows(
                served,
                "SELECT count(*) FROM inference_requests WHERE pipeline = %s AND created_at >= %s AND NOT shadow",
                PIPELINE,
                began,
            )
            ((dead, reasons),) = _log_rows(
                served,
                "SELECT count(*), array_agg(DISTINCT reason) FROM request_log_dead_letters"
                " WHERE pipeline = %s AND entity_id = %s AND failed_at >= %s",
                PIPELINE,
                poison,
                began,
            )
            if logged + dead >= result.statuses[200] or time.monotonic() > deadline:
                break
            time.sleep(FLUSH_EVERY_S)
    finally:
        with db.connect(served) as conn:
            conn.execute("ALTER TABLE inference_requests DROP CONSTRAINT IF EXISTS test_poison")
    assert dead >= 1 and all("test_poison" in r for r in reasons), reasons
    # every answer logged but the refused ones; wrk does not count the answers still in flight
    # when it stops (at most one a connection), which the server answered and logged
    assert result.statuses[200] - dead <= logged <= result.statuses[200] - dead + 16, (logged, result)
    with _client(served) as c:
        info = c.get("/").json()["request_log"]
        assert info["dropped"] == 0 and info["dead_letters"] >= dead
        after = _predict(c, [11])
        assert after.status_code == 200  # and the log goes on
    assert len(_wait_for_rows(served, after.json()["request_id"], 1)) == 1


def test_shadow_answers_are_logged_not_returned(served: Settings) -> None:
    _deploy(served, {1: 100}, shadow=2)
    with _client(served) as c:
        r = _predict(c, [5, 6])
        assert {p["version"] for p in r.json()["predictions"]} == {1}
    shadow_rows = _wait_for_rows(served, r.json()["request_id"], 2, shadow=True)
    assert {(row[1], row[5]) for row in shadow_rows} == {(2, True)}
    assert all(row[4] is not None for row in shadow_rows)


def _live_sockets(settings: Settings) -> list[Path]:
    """The admin sockets of the state dir's HAProxy folder that a process answers: an earlier run
    on the same state path leaves its HAProxy's folder (and dead socket) beside the live one."""
    live = []
    for sock in haproxy_dir(str(Path(str(settings.pipelines_dir)).parent)).glob("*/admin.sock"):
        with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(ConnectionRefusedError, FileNotFoundError):
            s.settimeout(5)
            s.connect(str(sock))
            live.append(sock)
    return live


def _haproxy_pid(settings: Settings) -> int:
    """The pid of the HAProxy process answering the admin socket now (a reload starts a new one)."""
    (sock,) = _live_sockets(settings)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(b"show info\n")
        info = b""
        while chunk := s.recv(65536):
            info += chunk
    return int(next(line for line in info.decode().splitlines() if line.startswith("Pid:")).split(":")[1])


def test_no_request_lost_while_a_canary_walks_and_rolls_back_under_64_connections(served: Settings) -> None:
    """What the canary step does to the application, under 64 connections of wrk: the challenger
    is loaded beside the champion, its weight walks 5 -> 25 -> 50 -> 100 %, then it is rolled
    back and removed. No answer may be other than 200, none slower than the request timeout. Each
    step is applied in place by the replicas (a published generation, served when `deploy`
    returns): Serve never reconfigures them, so HAProxy never loses its backend and never reloads."""
    _deploy(served, {1: 100})
    wait_direct_route(served, PIPELINE)
    pid = _haproxy_pid(served)
    with _client(served) as c:
        generation = c.get("/").json()["generation"]
    bodies = [json.dumps({"instances": [{"entity_id": i}]}) for i in range(1, 501)]
    url = endpoint(served, PIPELINE) + "/predict"
    plan = [{1: 100, 2: 0}, {1: 95, 2: 5}, {1: 75, 2: 25}, {1: 50, 2: 50}, {1: 0, 2: 100}, {1: 100, 2: 0}, {1: 100}]
    seconds = 2.0 * len(plan) + 4
    proc, work = loadgen.start(url, bodies, {"x-api-key": KEY}, connections=64, seconds=seconds)
    time.sleep(2)
    with _client(served) as c:
        for step, weights in enumerate(plan, start=1):
            _deploy(served, weights)
            served_now = c.get("/").json()  # served when deploy returned: no waiting
            assert served_now["generation"] == generation + step, served_now
            assert served_now["weights"] == {str(v): float(w) for v, w in weights.items()}
            time.sleep(2)
    result = loadgen.finish(proc, work, 64, seconds)
    assert _haproxy_pid(served) == pid  # not reloaded: the backend kept its replica throughout
    with _client(served) as c:
        assert c.get("/").json()["weights"] == {"1": 100.0}
    assert result.requests > 500
    assert (result.non_2xx, result.socket_errors) == (0, 0), result
    assert result.max_ms < spec_for(served, PIPELINE).serving.request_timeout_s * 1000, result


def test_a_replica_serve_starts_again_serves_the_newest_generation_not_the_one_serve_holds(
    served: Settings,
) -> None:
    """Generations applied in place leave Serve holding older arguments: a replica that Serve
    starts again (a crash, a scale-up) reads the published row and serves the newest."""
    import ray

    _deploy(served, {1: 100})
    _deploy(served, {1: 50, 2: 50})  # in place: Serve still holds the {1: 100} of its last redeploy
    with _client(served) as c:
        newest = c.get("/").json()["generation"]
    (replica,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"{PIPELINE}#ingress#" in a["name"]]
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)

    def restarted() -> dict[str, Any] | None:
        with _client(served) as c:
            try:
                info = c.get("/")
            except httpx.HTTPError:
                return None
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        fresh = [n for n in names if f"{PIPELINE}#ingress#" in n and n != replica["name"]]
        return info.json() if info.status_code == 200 and fresh else None

    info, _ = _poll(restarted, 120)
    assert info is not None, "no replica came back"
    assert (info["generation"], info["weights"]) == (newest, {"1": 50.0, "2": 50.0}), info
    _deploy(served, {1: 100})


def test_overload_is_shed_with_503_and_retry_after_and_the_endpoint_recovers(served: Settings) -> None:
    """Past a replica's bound (here 4 requests held at once) wrk's 64 connections get 503 with
    `Retry-After` at once, never a 500 or a timeout; the admitted are answered; when the load
    drops the endpoint answers again within seconds."""
    deploy(
        serving_args(
            spec_for(served, PIPELINE), [VersionConfig(version=1, weight=100)], model_name(PIPELINE),
            max_concurrent_requests=4,
        )
    )  # fmt: skip
    bodies = [json.dumps({"instances": [{"entity_id": i} for i in range(n, n + 20)]}) for n in range(1, 481, 20)]
    url = endpoint(served, PIPELINE) + "/predict"
    proc, work = loadgen.start(url, bodies, {"x-api-key": KEY}, connections=64, seconds=4, statuses=True)
    shed = None
    with _client(served) as c:
        deadline = time.monotonic() + 3.5
        while shed is None and time.monotonic() < deadline:  # one refusal, as a client reads it
            r = _predict(c, list(range(1, 21)))
            shed = r if r.status_code == 503 else None
    result = loadgen.finish(proc, work, 64, 4)
    assert result.statuses is not None and set(result.statuses) == {200, 503}, result
    assert result.statuses[503] == result.retry_after > 0 and result.statuses[200] > 0, result
    assert result.socket_errors == 0, result
    assert shed is not None, "no request was shed under 64 connections"
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["error"] == "overloaded" and "max_concurrent_requests" in shed.json()["reason"]
    with _client(served) as c:  # recovered within seconds of the load's end (bounded: 25 tries)
        for _ in range(25):
            after = _predict(c, [1, 2])
            if after.status_code == 200:
                break
            time.sleep(0.2)
        assert after.status_code == 200, (after.status_code, after.headers, after.text)


AUTOSCALE_MAX_LOAD_S = 240
"""The longest wrk loads the autoscaling ingress: Serve sees the load within ~15 s, and a new
replica loads its model before it runs (65-70 s seen on a loaded 2-core host); wrk is stopped
once the second replica has served for a few seconds."""


def _poll(until: Any, timeout_s: float, every_s: float = 0.5) -> tuple[Any, float]:
    """`until()` every `every_s` until it is truthy or `timeout_s` passed: its last value and the seconds taken."""
    began = time.monotonic()
    while not (value := until()) and time.monotonic() - began < timeout_s:
        time.sleep(every_s)
    return value, round(time.monotonic() - began, 1)


@pytest.mark.timeout(900)  # the module's fixture (two lifecycle runs) may run in this test's time
def test_the_ingress_grows_under_load_and_shrinks_after_it_with_no_error(served: Settings) -> None:
    """The spec's autoscaling (1 to 3 replicas, 4 requests each, up after 1 s, down after 5 s):
    under 64 connections of wrk Serve starts a second ingress replica, HAProxy routes to both, a
    weight change keeps them, and after the load Serve stops the extra ones. No answer but 2xx, and
    every answer is in the request log: each replica writes its own queue, the stopped ones before
    they go."""
    auto = Autoscaling(
        min_replicas=1, max_replicas=3, target_ongoing_requests=4, upscale_delay_s=1, downscale_delay_s=5
    )
    args = serving_args(spec_for(served, PIPELINE), [VersionConfig(version=1, weight=100)], model_name(PIPELINE))
    args = args.model_copy(update={"autoscaling": auto})
    deploy(args)
    stats = f"http://127.0.0.1:{served.haproxy_stats_port}/stats;csv"
    try:
        assert _poll(lambda: running_replicas(PIPELINE) == 1, 60)[0], "the ingress did not start at min_replicas"
        wait_direct_route(served, PIPELINE)
        with db.connect(served) as conn:
            (began,) = conn.execute("SELECT now()").fetchone()
        bodies = [json.dumps({"instances": [{"entity_id": i}]}) for i in range(1, 501)]
        url = endpoint(served, PIPELINE) + "/predict"
        proc, work = loadgen.start(url, bodies, {"x-api-key": KEY}, connections=64, seconds=AUTOSCALE_MAX_LOAD_S)
        try:
            grown, grow_s = _poll(lambda: running_replicas(PIPELINE) >= 2, AUTOSCALE_MAX_LOAD_S - 60)
            routed, _ = _poll(lambda: replicas_up(httpx.get(stats, timeout=5).text, PIPELINE) >= 2, 20)
            # a canary's weight change while grown reconfigures the replicas in place: none restarts
            # and the autoscaler's count stands (Serve would reset it to an `initial_replicas`)
            two = [VersionConfig(version=1, weight=100), VersionConfig(version=2, weight=0)]
            deploy(args.model_copy(update={"versions": two}))
            kept = []
            for _ in range(10):  # 5 s more of load on the grown ingress
                kept.append(running_replicas(PIPELINE))
                time.sleep(0.5)
        finally:
            result = loadgen.stop(proc, work, 64)
        shrunk, shrink_s = _poll(lambda: running_replicas(PIPELINE) == 1, 150, every_s=1)
        print(f"autoscaling: 2 replicas running after {grow_s} s of load (then {kept}), 1 again {shrink_s} s after it")
        print(f"autoscaling: {result}")
        assert grown, f"still {running_replicas(PIPELINE)} replica(s) after {grow_s} s of 64 connections"
        assert routed, "HAProxy never routed to a second replica"
        assert min(kept) >= 2, f"a weight change took the ingress back to {kept} replicas"
        assert shrunk, f"still {running_replicas(PIPELINE)} replicas {shrink_s} s after the load"
        assert result.requests > 500 and (result.non_2xx, result.socket_errors) == (0, 0), result
        # every answer logged, the stopped replicas' too (wrk does not count the answers in
        # flight when it stops, at most one a connection)
        _poll(lambda: _logged_since(served, began) >= result.requests, 15)
        count = _logged_since(served, began)
        assert result.requests <= count <= result.requests + 64, (count, result)
    finally:
        _deploy(served, {1: 100})  # the fixed replica the other tests expect


def _logged_since(settings: Settings, began: Any) -> int:
    ((n,),) = _log_rows(
        settings, "SELECT count(*) FROM inference_requests WHERE pipeline = %s AND created_at >= %s", PIPELINE, began
    )
    return int(n)


def test_haproxy_bounds_each_replica_by_its_spec_and_sheds_before_the_replica_sees_it(served: Settings) -> None:
    """A pipeline whose spec says serving.max_concurrent_requests: 4: HAProxy (Serve's ingress
    proxy, through mlcycle-haproxy) gives its replica at most 4 requests, queues 4 more and answers
    the rest 503 + Retry-After itself; the replica refuses nothing."""
    path = small_spec(
        served,
        SOURCE,
        name="churn_tight",
        training=FAST,
        evaluation=EVAL,
        serving={"max_concurrent_requests": 4},
        contract=_contract(),
    )
    try:
        _tight(served)
    finally:
        from ray import serve

        serve.delete("churn_tight")
        path.unlink()


def _tight(served: Settings) -> None:
    from pipelines.ml.datagen import ChurnConfig, generate_churn

    spec = spec_for(served, "churn_tight")
    features = spec.model.numeric_features + spec.model.categorical_features
    rows = generate_churn(ChurnConfig(customers=50, months=2, seed=9)).head(40)
    bodies = [
        json.dumps({"instances": [{"entity_id": int(r["customer_id"]), "features": {f: r[f] for f in features}}]})
        for r in rows.to_dict("records")
    ]
    # the model of churn_serve, the features in the request (no feature store for this pipeline)
    deploy(serving_args(spec, [VersionConfig(version=1, weight=100)], model_name(PIPELINE), online_features=False))
    url = endpoint(served, "churn_tight") + "/predict"
    assert wait_direct_route(served, "churn_tight") == 1  # not yet through Serve's backup proxy
    with httpx.Client(headers={"x-api-key": KEY}, timeout=30) as c:
        assert c.post(url, content=bodies[0]).status_code == 200
    proc, work = loadgen.start(url, bodies, {"x-api-key": KEY}, connections=64, seconds=4, statuses=True)
    shed = None
    with httpx.Client(headers={"x-api-key": KEY}, timeout=30) as c:
        deadline = time.monotonic() + 3.5
        while shed is None and time.monotonic() < deadline:
            r = c.post(url, content=bodies[1])
            shed = r if r.status_code == 503 else None
    result = loadgen.finish(proc, work, 64, 4)
    assert result.statuses is not None and set(result.statuses) == {200, 503}, result
    assert result.statuses[503] == result.retry_after > 0 and result.statuses[200] > 0, result
    assert shed is not None and shed.headers["retry-after"] == "1"
    assert "are waiting for a replica" in shed.json()["reason"], shed.text  # HAProxy's answer, not the app's
    with httpx.Client(headers={"x-api-key": KEY}, timeout=30) as c:
        # the endpoint recovers: once the queue wrk left behind has drained (a loaded machine
        # drains it slower), a client that honours Retry-After is answered
        deadline, r = time.monotonic() + 20, c.post(url, content=bodies[2])
        while r.status_code == 503 and time.monotonic() < deadline:
            time.sleep(float(r.headers.get("retry-after", "1")))
            r = c.post(url, content=bodies[2])
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------- canary
CANARY = SHORT_CANARY


class Load:
    """Steady single-entity traffic in a thread, bounded in count and time; counts client failures."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.done = settings, threading.Event()
        self.sent, self.failures = 0, []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with _client(self.settings) as c:
            deadline = time.monotonic() + 180
            while not self.done.is_set() and time.monotonic() < deadline and self.sent < 20_000:
                try:
                    r = _predict(c, [self.sent % 500 + 1])
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))
                self.sent += 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(60)


def _champion_graph(settings: Settings) -> Any:
    """The champion's ONNX model with its output renamed `score_raw`, to build variants on."""
    import mlflow.onnx

    from pipelines.io.tracking import setup_mlflow

    setup_mlflow(settings, PIPELINE)
    model = mlflow.onnx.load_model(f"models:/{model_name(PIPELINE)}@champion")
    g = model.graph
    g.output[0].name = "score_raw"
    for node in g.node:
        node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
    return model


def _register_challenger(settings: Settings, model: Any, reason: str) -> int:
    import mlflow
    import mlflow.onnx

    from pipelines.io.registry import CHALLENGER, move_alias, seal_version

    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name=reason):
        info = mlflow.onnx.log_model(model, name="model")
    version = int(client.create_model_version(model_name(PIPELINE), info.model_uri).version)
    seal_version(client, model_name(PIPELINE), version)  # as promote does: serving loads sealed versions only
    move_alias(
        settings, client, pipeline=PIPELINE, alias=CHALLENGER, version=version, actor="test", run_id="t", reason=reason
    )
    return version


def _register_faulty(settings: Settings) -> int:
    """A release that fails at run time: the champion's graph with a reshape no batch fits."""
    from onnx import TensorProto, helper

    model = _champion_graph(settings)
    g = model.graph
    g.initializer.append(helper.make_tensor("bad_shape", TensorProto.INT64, [2], [-1, 1000003]))
    g.node.append(helper.make_node("Reshape", ["score_raw", "bad_shape"], ["score"]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1000003]))
    return _register_challenger(settings, model, "a release that raises")


def _register_slow(settings: Settings, matmuls: int = 400) -> int:
    """A release with the champion's scores that is slow: a chain of 1024x1024 products that
    depends on the input (so nothing folds it away) and adds zero to the score."""
    from onnx import TensorProto, helper, numpy_helper

    model = _champion_graph(settings)
    g = model.graph
    numeric = next(i.name for i in g.input if i.type.tensor_type.elem_type == TensorProto.FLOAT)
    g.initializer.extend(
        [
            numpy_helper.from_array(np.full((1024, 1024), 1e-3, dtype=np.float32), "slow_w"),
            numpy_helper.from_array(np.eye(1024, dtype=np.float32), "slow_eye"),
            numpy_helper.from_array(np.zeros((), dtype=np.float32), "slow_zero"),
        ]
    )
    nodes = [
        helper.make_node("ReduceMean", [numeric], ["slow_m"], keepdims=0),
        helper.make_node("Mul", ["slow_w", "slow_m"], ["slow_0"]),
    ]
    nodes += [helper.make_node("MatMul", [f"slow_{k}", "slow_eye"], [f"slow_{k + 1}"]) for k in range(matmuls)]
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{matmuls}"], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", ["score_raw", "slow_nothing"], ["score"]),
    ]
    g.node.extend(nodes)
    g.output[0].name = "score"
    return _register_challenger(settings, model, "a release that is slow")


def _canary_spec(settings: Settings, **sections: Any) -> None:
    """The fixture's spec, with a short canary plan (and other sections replaced)."""
    sections.setdefault("contract", _contract())
    small_spec(settings, SOURCE, name=PIPELINE, training=FAST, evaluation=EVAL, canary=CANARY, **sections)


def test_a_raising_challenger_is_rolled_back_and_alertmanager_is_told(served: Settings, tmp_path: Path) -> None:
    from pipelines.io.registry import alias_version
    from pipelines.steps.canary import CanaryRolledBack
    from tests.alerting import alert_receiver, delay_s
    from tests.integration.helpers import run

    _canary_spec(served)
    faulty = _register_faulty(served)
    space = vectors.open_space(served, PIPELINE, faulty, 4, "cosine", "hnsw", "serve-2", "faulty")  # as `embed` made it
    vectors.copy_vectors(served, space, ["1", "2"], np.ones((2, 4), dtype=np.float32))
    _deploy(served, {1: 100})
    with alert_receiver(tmp_path) as (am, hook):
        told = served.model_copy(update={"alertmanager_url": am})
        with Load(served) as load, pytest.raises(CanaryRolledBack, match=f"v{faulty} rolled back at 20%"):
            run(told, "canary", "serve-2", pipeline=PIPELINE)
        hook.wait("MlcycleCanaryRolledBack", time.time() - 600)
    arrived, alert = hook.firing("MlcycleCanaryRolledBack")[0]
    print(
        f"\ncanary rolled back -> MlcycleCanaryRolledBack at the webhook: {delay_s(alert, arrived):.1f}s after the decision"
    )
    assert alert["labels"]["pipeline"] == PIPELINE and alert["labels"]["version"] == str(faulty)
    assert "error rate" in alert["annotations"]["summary"]
    assert load.sent > 50
    assert len(load.failures) / load.sent < 0.001, load.failures[:3]
    import mlflow

    client = mlflow.MlflowClient()
    assert int(alias_version(client, model_name(PIPELINE), "champion").version) == 1
    assert int(alias_version(client, model_name(PIPELINE), "challenger").version) == faulty  # the alias stays
    with _client(served) as c:
        info = c.get("/").json()
    assert info["weights"] == {"1": 100.0} and info["canary"]["state"] == "rolled back"
    report = json.loads(Path(str(served.artifact_root), PIPELINE, "serve-2", "canary", "report.json").read_text())
    dropped = vectors.space_info(served, PIPELINE, faulty)  # the rolled-back challenger's space is gone
    assert report["vector_space_dropped"] is True and dropped is not None and dropped["state"] == "dropped"
    assert dropped["reason"].startswith("rolled back: ")
    assert report["outcome"] == "rolled_back"
    assert "error rate" in report["steps"][0]["reasons"][0]


def test_a_slow_challenger_is_rolled_back(served: Settings) -> None:
    """A challenger slower than the request timeout: its requests are answered by the champion
    (the fallback), logged against it as timeouts, and the canary rolls it back."""
    from pipelines.steps.canary import CanaryRolledBack
    from tests.integration.helpers import run

    _canary_spec(served, serving={"request_timeout_s": 1.0, "max_batch_size": 4})
    slow = _register_slow(served)
    _deploy(served, {1: 100})
    try:
        with Load(served) as load, pytest.raises(CanaryRolledBack, match=f"v{slow} rolled back at 20%"):
            run(served, "canary", "serve-2", pipeline=PIPELINE)
        assert load.sent > 20
        with db.connect(served) as conn:
            seen = conn.execute(
                "SELECT model_version, status, error, count(*), max(latency_ms) FROM inference_requests"
                " WHERE pipeline = %s AND created_at > now() - interval '1 minute' GROUP BY 1, 2, 3",
                (PIPELINE,),
            ).fetchall()
        assert len(load.failures) / load.sent < 0.001, (load.failures[:3], seen)
    finally:
        _canary_spec(served)  # the next tests use the default timeout
    report = json.loads(Path(str(served.artifact_root), PIPELINE, "serve-2", "canary", "report.json").read_text())
    assert report["outcome"] == "rolled_back" and "error rate" in report["reason"]
    with db.connect(served) as conn:
        errors = conn.execute(
            "SELECT DISTINCT error FROM inference_requests WHERE pipeline = %s AND model_version = %s"
            " AND status = 'error'",
            (PIPELINE, slow),
        ).fetchall()
    assert errors == [("timeout",)]


def test_a_healthy_challenger_is_promoted(served: Settings) -> None:
    import mlflow

    from pipelines.io.registry import CHALLENGER, alias_version, audit, move_alias
    from tests.integration.helpers import run

    _canary_spec(served)
    client = mlflow.MlflowClient()
    move_alias(
        served,
        client,
        pipeline=PIPELINE,
        alias=CHALLENGER,
        version=2,
        actor="test",
        run_id="serve-2",
        reason="retry the canary of v2",
    )
    _deploy(served, {1: 100})
    with Load(served) as load:
        out = run(served, "canary", "serve-2", pipeline=PIPELINE)
    assert out["outcome"] == "promoted"
    assert [s["percent"] for s in out["steps"]] == [20, 100]
    assert all(s["decision"] == "advance" for s in out["steps"])
    assert load.failures == []
    assert int(alias_version(client, model_name(PIPELINE), "champion").version) == 2
    assert alias_version(client, model_name(PIPELINE), "challenger") is None
    moves = [(r["alias"], r["from_version"], r["to_version"]) for r in audit(served, PIPELINE)][-2:]
    assert moves == [("champion", 1, 2), ("challenger", 2, None)]
    with _client(served) as c:
        assert c.get("/").json()["weights"] == {"2": 100.0}
        assert {p["version"] for p in _predict(c, [1, 2, 3]).json()["predictions"]} == {2}


def test_an_idle_pipeline_gets_its_champion_and_a_running_one_is_left_alone(served: Settings) -> None:
    """`make demo` on a fresh Ray head whose run deployed nothing: the registry's champion is served."""
    import mlflow

    from pipelines.io.registry import alias_version
    from serving.deploy import serve_champion_if_idle, undeploy

    champion = int(alias_version(mlflow.MlflowClient(), model_name(PIPELINE), "champion").version)
    undeploy(PIPELINE)
    assert serve_champion_if_idle(served, PIPELINE) is True
    with _client(served) as c:
        assert {p["version"] for p in _predict(c, [1, 2, 3]).json()["predictions"]} == {champion}
    assert serve_champion_if_idle(served, PIPELINE) is False


def test_a_tree_model_goes_through_evaluate_promote_and_the_canary_and_is_served(served: Settings) -> None:
    """A LightGBM model (`model.kind: lightgbm`) takes the path the MLP takes: evaluate against the
    champion, promote with the ONNX parity check, the canary under live traffic, then the endpoint."""
    import mlflow
    import onnx

    from pipelines.io.registry import alias_version, load_onnx_model
    from tests.integration.helpers import run
    from tests.specs import churn_spec_dict

    model = {k: v for k, v in churn_spec_dict()["model"].items() if k != "search_space"}
    _canary_spec(served, model={**model, "kind": "lightgbm"}, embeddings=None)
    client = mlflow.MlflowClient()
    champion = int(alias_version(client, model_name(PIPELINE), "champion").version)
    _deploy(served, {champion: 100})
    out = run_through(served, "serve-tree", LIFECYCLE, PIPELINE)
    assert out["train"]["best_family"] == "lightgbm"
    assert out["evaluate"]["verdict"]["passed"] and out["evaluate"]["champion_version"] == champion
    assert out["promote"]["parity"]["passed"] and out["promote"]["parity"]["max_abs_diff"] <= 1e-4
    version = out["promote"]["version"]
    graph = onnx.load_from_string(load_onnx_model(served, PIPELINE, model_name(PIPELINE), version))
    assert "TreeEnsembleClassifier" in {n.op_type for n in graph.graph.node}
    with Load(served) as load:
        canary = run(served, "canary", "serve-tree", pipeline=PIPELINE)
    assert canary["outcome"] == "promoted", canary
    assert load.sent > 50 and load.failures == []
    assert int(alias_version(client, model_name(PIPELINE), "champion").version) == version
    with _client(served) as c:
        predictions = _predict(c, [1, 2, 3]).json()["predictions"]
    assert {p["version"] for p in predictions} == {version}
    assert all(0.0 < p["score"] < 1.0 for p in predictions)
