"""Serving keys per pipeline and the audit trail, on the real embedded PostgreSQL and a real served
endpoint (Ray Serve behind HAProxy), driven through `mlcycle keys` / `mlcycle audit` and the
platform API as users use them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.cli import main
from pipelines.cli.team_commands import os_user
from pipelines.core.keys import BOOTSTRAP_ID, key_hash
from pipelines.core.settings import Settings, scoped_environ, spec_for
from pipelines.core.system import executable
from pipelines.io import db
from pipelines.io.registry import model_name
from serving.config import VersionConfig
from serving.deploy import connect, deploy, endpoint, serve_env, serving_args
from tests.integration.helpers import end_test_serve, run_through, serving_workspace, small_spec

pytestmark = pytest.mark.integration

SERVED = "keys_a"  # the pipeline on Serve
OTHER = "keys_b"  # a pipeline of the installation that is not served here
BOOTSTRAP = "bootstrap-secret-for-tests"
RELOAD_S = 1.0
LIFECYCLE = ("ingest", "validate", "features", "train", "evaluate", "promote")
FAST = {"n_trials": 1, "max_epochs": 2, "early_stopping_patience": 1, "pruner": "none", "batch_size": 128}
EVAL = {"min_primary": 0.5, "min_improvement": -1.0, "bootstrap_samples": 50, "max_latency_ms_per_row": 50.0}


def _workspace_env(settings: Settings) -> dict[str, str]:
    return {"MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir), "MLCYCLE_ARTIFACT_ROOT": str(settings.artifact_root)}


@pytest.fixture(scope="module")
def keyed(platform: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One version of `SERVED` on a Serve of the test's own, whose replicas reload the keys every
    `RELOAD_S`; `OTHER` is a second pipeline of the same installation."""
    import ray

    from pipelines.ml.datagen import ChurnConfig, generate_churn

    tmp = tmp_path_factory.mktemp("keys")
    settings = serving_workspace(platform, tmp)
    generate_churn(ChurnConfig(customers=400, months=6, seed=5)).to_parquet(tmp / "churn.parquet", index=False)
    source = {"kind": "file", "path": str(tmp / "churn.parquet")}
    for name in (SERVED, OTHER):
        small_spec(settings, source, name=name, training=FAST, evaluation=EVAL)
    assert run_through(settings, "keys-1", LIFECYCLE, SERVED)["promote"]["version"] == 1
    env = {
        **_workspace_env(settings),
        "MLCYCLE_SERVING_API_KEYS": BOOTSTRAP,
        "MLCYCLE_SERVING_KEYS_RELOAD_S": str(RELOAD_S),
        **serve_env(settings, executable("mlcycle-haproxy"), str(tmp)),
    }
    with scoped_environ(env):
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="mlcycle")
        try:
            connect(settings)
            versions = [VersionConfig(version=1, weight=100.0)]
            deploy(serving_args(spec_for(settings, SERVED), versions, model_name(SERVED)))
            yield settings
        finally:
            end_test_serve(str(tmp))


def mlcycle(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`mlcycle <argv>` in this process: its exit code and what it printed."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def create_key(capsys: pytest.CaptureFixture[str], *pipelines: str, name: str = "ci") -> tuple[str, str]:
    """A key made with `mlcycle keys create`: its id and its secret (the one line that has it)."""
    argv = ["keys", "create", "--name", name, "--actor", "ops-alice"]
    for p in pipelines:
        argv += ["--pipeline", p]
    code, out = mlcycle(capsys, *argv)
    assert code == 0, out
    lines = out.splitlines()
    return lines[0].split()[0], lines[1]


def predict(settings: Settings, key: str) -> httpx.Response:
    body = {"instances": [{"entity_id": 7}, {"entity_id": 8}]}
    return httpx.post(f"{endpoint(settings, SERVED)}/predict", json=body, headers={"x-api-key": key}, timeout=30)


def status_becomes(settings: Settings, key: str, wanted: int, within_s: float) -> tuple[httpx.Response, float]:
    """Poll predict with `key` until it answers `wanted` or `within_s` passed: the last answer and when."""
    started = time.monotonic()
    while True:
        answer = predict(settings, key)
        elapsed = time.monotonic() - started
        if answer.status_code == wanted or elapsed > within_s:
            return answer, elapsed
        time.sleep(0.1)


def logged_keys(settings: Settings, request_id: str, n: int) -> list[str | None]:
    """The `key_id` of the request's rows in the request log, once its `n` rows are written (bounded)."""
    deadline = time.monotonic() + 20
    while True:
        with db.connect(settings) as conn:
            rows = conn.execute("SELECT key_id FROM inference_requests WHERE request_id = %s", (request_id,)).fetchall()
        if len(rows) >= n or time.monotonic() > deadline:
            return [r[0] for r in rows]
        time.sleep(0.2)


def test_a_key_opens_its_pipelines_only_and_the_request_log_names_it(
    keyed: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with scoped_environ(_workspace_env(keyed)):
        a_id, a_key = create_key(capsys, SERVED)
        b_id, b_key = create_key(capsys, OTHER)
        both_id, both_key = create_key(capsys, OTHER, SERVED)
    # a new key opens its pipeline once the replica has reloaded the table (within its interval);
    # the key made last is the one to wait on: a reload between two creations opens only the first
    last, _ = status_becomes(keyed, both_key, 200, within_s=10 * RELOAD_S + 20)
    assert last.status_code == 200, last.text
    opened = predict(keyed, a_key)
    assert opened.status_code == 200, opened.text
    refused = predict(keyed, b_key)  # a live key, of another pipeline
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "forbidden",
        "reason": f"this API key does not open pipeline {SERVED!r}",
        "field": None,
    }
    for path in ("/", "/similar?entity_id=7"):  # every route behind the key, not predict only
        assert httpx.get(endpoint(keyed, SERVED) + path, headers={"x-api-key": b_key}, timeout=30).status_code == 403
    assert httpx.get(endpoint(keyed, SERVED) + "/", headers={"x-api-key": a_key}, timeout=30).status_code == 200
    unknown = predict(keyed, "mlk_" + "x" * 43)
    assert unknown.status_code == 401 and unknown.json()["error"] == "unauthorized"
    bootstrap = predict(keyed, BOOTSTRAP)  # the platform's own key opens every pipeline
    assert bootstrap.status_code == 200
    assert logged_keys(keyed, opened.json()["request_id"], 2) == [a_id, a_id]
    assert logged_keys(keyed, bootstrap.json()["request_id"], 2) == [BOOTSTRAP_ID, BOOTSTRAP_ID]
    assert b_id not in (a_id, both_id)


def test_a_revoked_key_is_refused_within_the_reload_interval(
    keyed: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with scoped_environ(_workspace_env(keyed)):
        key_id, key = create_key(capsys, SERVED, name="to-revoke")
        opened, _ = status_becomes(keyed, key, 200, within_s=10 * RELOAD_S + 20)
        assert opened.status_code == 200, opened.text
        code, out = mlcycle(capsys, "keys", "revoke", key_id, "--actor", "ops-bob")
        assert code == 0 and f"{key_id} revoked" in out, out
        code, out = mlcycle(capsys, "keys", "revoke", key_id)
        assert code == 2 and "was revoked at" in out  # once
    # bounded: a reload interval, and slack for a loaded machine's thread scheduling and HTTP
    refused, elapsed = status_becomes(keyed, key, 401, within_s=RELOAD_S + 10)
    assert refused.status_code == 401, (refused.status_code, elapsed)
    print(f"revoked key refused after {elapsed:.2f} s (reload interval {RELOAD_S} s)")
    assert predict(keyed, BOOTSTRAP).status_code == 200  # nothing else changed


def test_no_key_is_stored_in_clear_and_the_cli_prints_it_once(
    keyed: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with scoped_environ(_workspace_env(keyed)):
        code, created = mlcycle(capsys, "keys", "create", "--pipeline", SERVED, "--name", "shown-once")
        assert code == 0, created
        key_id, secret = created.splitlines()[0].split()[0], created.splitlines()[1]
        assert secret.startswith("mlk_") and len(secret) >= 4 + 43 and created.count(secret) == 1
        listed = [mlcycle(capsys, "keys", "list"), mlcycle(capsys, "keys", "list", "--json")]
        listed.append(mlcycle(capsys, "keys", "list", "--pipeline", SERVED, "--json"))
        listed.append(mlcycle(capsys, "audit", SERVED, "--json"))
    for code, out in listed:
        assert code == 0 and secret not in out and secret[4:20] not in out and key_hash(secret) not in out
    assert key_id in listed[0][1] and "shown-once" in listed[0][1]
    mine = [k for k in json.loads(listed[2][1]) if k["id"] == key_id]
    assert mine and mine[0]["pipelines"] == [SERVED] and mine[0]["created_by"] == os_user()  # no --actor: the OS user
    assert "hash" not in mine[0]
    with db.connect(keyed) as conn:  # every table that could hold it, whole, as text
        stored = [str(r) for r in conn.execute("SELECT t.*::text FROM serving_keys t").fetchall()]
        stored += [str(r) for r in conn.execute("SELECT t.*::text FROM audit_events t").fetchall()]
        digest = conn.execute("SELECT hash FROM serving_keys WHERE id = %s", (key_id,)).fetchone()
    assert stored and not [row for row in stored if secret[4:] in row or secret[10:26] in row]
    assert digest == (key_hash(secret),)


@pytest.fixture
def api(workspace: Settings) -> Iterator[tuple[Any, Settings]]:
    """The platform API in this process, on the real auth manager of a default Airflow (the simple
    one: roles viewer < user < admin), a request's user set by `as_user`."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from plugins.mlcycle_plugin import _api

    app = _api()
    create_auth_manager()
    client = TestClient(app)

    def as_user(name: str, role: str | None) -> None:
        app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username=name, role=role)

    client.as_user = as_user  # type: ignore[attr-defined]
    with scoped_environ(_workspace_env(workspace)):
        yield client, workspace


def test_the_audit_shows_keys_labels_and_triggers_with_their_actors(
    api: tuple[Any, Settings], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from pipelines.local.follow import run_pipeline

    client, settings = api
    pipeline = f"audited_{uuid.uuid4().hex[:6]}"
    small_spec(settings, {"kind": "file", "path": str(tmp_path / "unused.parquet")}, name=pipeline)
    key_id, _ = create_key(capsys, pipeline)
    labels = tmp_path / "labels.csv"
    labels.write_text("entity_id,label\n1,1\n2,0\n")
    code, out = mlcycle(capsys, "labels", "load", "--pipeline", pipeline, str(labels), "--actor", "carol")
    assert code == 0, out

    class Airflow:  # the REST API's side of a trigger (the audit is the real table's)
        url, username = "http://airflow.invalid", "admin"

        def wait_for_dag(self, dag_id: str) -> None:
            assert dag_id == f"{pipeline}_lifecycle"

        def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
            return "manual__cli"

    run_pipeline(Airflow(), settings, pipeline, {"n_trials": 1}, wait=False, say=lambda _: None)  # type: ignore[arg-type]

    client.as_user("alice", "user")
    loaded = client.post(f"/pipelines/{pipeline}/labels", json={"labels": [{"entity_id": 3, "label": 1}]})
    assert loaded.status_code == 201, loaded.text
    client.as_user("nobody", None)  # no role: no read access to the DAG's runs
    denied = client.get(f"/pipelines/{pipeline}/audit")
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    client.as_user("victor", "viewer")
    trail = client.get(f"/pipelines/{pipeline}/audit")
    assert trail.status_code == 200, trail.text
    seen = [(e["actor"], e["action"]) for e in trail.json()["items"]]
    assert seen == [
        ("alice", "labels_loaded"),
        ("admin", "trigger"),
        ("carol", "labels_loaded"),
        ("ops-alice", "key_created"),
    ]
    items = trail.json()["items"]
    assert items[1]["run_id"] == "manual__cli" and items[1]["detail"] == {"conf": {"n_trials": 1}, "via": "cli"}
    assert items[3]["detail"]["key_id"] == key_id and items[2]["detail"]["rows"] == 2
    only = client.get(f"/pipelines/{pipeline}/audit", params={"action": "trigger"}).json()
    assert [e["action"] for e in only["items"]] == ["trigger"] and only["total"] == 1
    code, printed = mlcycle(capsys, "audit", pipeline)
    assert code == 0
    lines = printed.splitlines()
    assert ["alice (user)" in lines[0], "admin (user)  trigger run manual__cli" in lines[1]] == [True, True]
    assert "carol (user)  labels_loaded" in lines[2] and f"key_id={key_id}" in lines[3]
