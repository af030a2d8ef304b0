"""A person steering a served champion, against a real local Ray Serve, the real registry and the
platform database: a rollback under wrk load, an alias moved with the plain MLflow client and
followed by serve-sync, a pinned pipeline's run that keeps its champion."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from itertools import groupby
from typing import Any

import httpx
import pytest

from pipelines.core.settings import Settings, scoped_environ, spec_for
from pipelines.core.system import executable
from pipelines.io import audit, db, steering, vectors
from pipelines.io.registry import CHAMPION, alias_version, model_name, move_alias
from serving.deploy import connect, endpoint, serve_env
from serving.steer import rollback, serve_only, served_versions, sync_champion, wait_serving
from tests import loadgen
from tests.integration.helpers import (
    SHORT_CANARY,
    end_test_serve,
    run_through,
    serving_workspace,
    small_spec,
    step_process,
)
from tests.integration.test_serving import EVAL, FAST, _contract, _source

pytestmark = pytest.mark.integration

PIPELINE = "churn_steer"
KEY = "steer-key-1"
LIFECYCLE = ("ingest", "validate", "features", "train", "evaluate", "promote")
SOURCE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def steered(platform: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Two registered versions of a small churn pipeline (v1 the champion) on a Ray of the test's own."""
    import ray

    tmp = tmp_path_factory.mktemp("steering")
    settings = serving_workspace(platform, tmp)
    SOURCE.update(_source(tmp))
    small_spec(
        settings, SOURCE, name=PIPELINE, training=FAST, evaluation=EVAL, contract=_contract(), canary=SHORT_CANARY
    )
    assert run_through(settings, "steer-1", LIFECYCLE, PIPELINE)["promote"]["version"] == 1
    assert run_through(settings, "steer-2", LIFECYCLE, PIPELINE)["promote"]["version"] == 2
    env = {
        "MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir),
        "MLCYCLE_ARTIFACT_ROOT": str(settings.artifact_root),
        "MLCYCLE_SERVING_API_KEYS": KEY,
        **serve_env(settings, executable("mlcycle-haproxy"), str(tmp)),
    }
    with scoped_environ(env):
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="mlcycle")
        try:
            connect(settings)
            yield settings
        finally:
            end_test_serve(str(tmp))


def _champion(settings: Settings) -> int:
    import mlflow

    return int(alias_version(mlflow.MlflowClient(), model_name(PIPELINE), CHAMPION).version)


def _promote_by_lifecycle(settings: Settings, version: int) -> None:
    """What a passing canary does to the alias (audited with the lifecycle as the actor)."""
    import mlflow

    move_alias(
        settings,
        mlflow.MlflowClient(),
        pipeline=PIPELINE,
        alias=CHAMPION,
        version=version,
        actor=f"{PIPELINE}/test/canary",
        run_id="test",
        reason="canary passed",
    )


def _served_alone(settings: Settings, version: int) -> None:
    serve_only(settings, PIPELINE, version, {"state": "serving", "champion": version})
    wait_serving(settings, PIPELINE, version)


def _answers_in_order(settings: Settings, since: float) -> list[tuple[int, float]]:
    """The logged answers since `since` (epoch s), in the order they arrived: (version, answered at)."""
    time.sleep(1.0)  # the request log flushes every 0.2 s
    with db.connect(settings) as conn:
        rows = conn.execute(
            "SELECT model_version, extract(epoch FROM created_at) FROM inference_requests"
            " WHERE pipeline = %s AND NOT shadow AND created_at >= to_timestamp(%s)"
            " ORDER BY created_at - latency_ms * interval '1 millisecond', created_at",
            (PIPELINE, since),
        ).fetchall()
    return [(int(v), float(t)) for v, t in rows]


def test_a_rollback_under_load_moves_the_champion_back_with_no_failed_request(steered: Settings) -> None:
    """v2 promoted over v1 and served alone; under 16 connections of wrk the rollback moves the
    champion back to v1 (the previous one in the trail), Serve reconfigures in place: no answer but
    200, the logged answers' version switches once (2 -> 1), the audit says who and why, and v1's
    vector space is readable again while v2's is retired."""
    _promote_by_lifecycle(steered, 2)
    for version, state in ((1, "retired"), (2, "ready")):  # as the canary's promotion left them
        vectors.open_space(steered, PIPELINE, version, 4, "cosine", "hnsw", f"steer-{version}", f"m{version}")
        with db.connect(steered) as conn:
            conn.execute(
                "UPDATE vector_spaces SET state = %s WHERE pipeline = %s AND model_version = %s",
                (state, PIPELINE, version),
            )
    _served_alone(steered, 2)
    bodies = [json.dumps({"instances": [{"entity_id": i}]}) for i in range(1, 501)]
    began = time.time()
    seconds = 14.0
    proc, work = loadgen.start(endpoint(steered, PIPELINE) + "/predict", bodies, {"x-api-key": KEY}, 16, seconds)
    time.sleep(4)
    command_at = time.time()
    done = rollback(steered, PIPELINE, None, "alice", "user", "v2 answers badly on the new region")
    returned_at = time.time()
    result = loadgen.finish(proc, work, 16, seconds)

    assert (done["from"], done["to"], done["vector_space"]) == (2, 1, "restored")
    assert (result.non_2xx, result.socket_errors) == (0, 0), result
    answers = _answers_in_order(steered, began)
    runs = [v for v, _ in groupby(v for v, _ in answers)]
    assert runs == [2, 1], f"the version switched more than once: {runs[:20]}"
    last_v2 = max(t for v, t in answers if v == 2)
    assert _champion(steered) == 1
    event = audit.events(steered, PIPELINE, action="rollback")[0]
    assert (event["actor"], event["actor_kind"], event["version"], event["reason"]) == (
        "alice",
        "user",
        1,
        "v2 answers badly on the new region",
    )
    assert event["detail"] == {"alias": "champion", "from_version": 2, "to_version": 1}
    assert vectors.space_info(steered, PIPELINE, 1)["state"] == "ready"  # type: ignore[index]
    assert vectors.space_info(steered, PIPELINE, 2)["state"] == "retired"  # type: ignore[index]
    print(
        "\nMEASURED rollback under 16 connections of wrk: "
        f"command to every request answered by v1 {last_v2 - command_at:.3f} s "
        f"(command returned after {returned_at - command_at:.3f} s, of which Serve {done['serve_s']:.3f} s); "
        f"{result.requests} requests, {result.non_2xx} non-2xx, {result.socket_errors} socket errors, "
        f"p99 {result.p99_ms:.0f} ms, max {result.max_ms:.0f} ms"
    )


def test_an_alias_moved_with_the_plain_mlflow_client_is_followed_and_audited_as_external(steered: Settings) -> None:
    """Someone moves `champion` in MLflow (its UI, its client): one pass of serve-sync (what
    `mlcycle serve sync --watch` does every interval) records it as an external move and Serve
    answers with that version; the next pass changes nothing."""
    import mlflow

    _promote_by_lifecycle(steered, 1)
    _served_alone(steered, 1)
    mlflow.MlflowClient().set_registered_model_alias(model_name(PIPELINE), CHAMPION, "2")
    assert served_versions(steered, PIPELINE) == [1]

    said = sync_champion(steered, PIPELINE)
    assert said == "followed the champion alias to v2 (moved outside mlcycle)"
    wait_serving(steered, PIPELINE, 2, timeout_s=30)
    with httpx.Client(base_url=endpoint(steered, PIPELINE), headers={"x-api-key": KEY}, timeout=30) as c:
        answer = c.post("/predict", json={"instances": [{"entity_id": 7}]}).json()
    assert answer["predictions"][0]["version"] == 2
    event = audit.events(steered, PIPELINE, action="external_alias")[0]
    assert (event["actor"], event["actor_kind"], event["version"]) == ("mlflow", "external", 2)
    assert event["detail"] == {"alias": "champion", "from_version": 1, "to_version": 2}
    assert steering.last_recorded_champion(steered, PIPELINE) == 2  # the trail says so too
    assert sync_champion(steered, PIPELINE) == "running"
    assert len(audit.events(steered, PIPELINE, action="external_alias")) == 1


def test_a_pinned_pipelines_run_trains_and_evaluates_and_ends_with_the_champion_unchanged(steered: Settings) -> None:
    """Pinned by alice: a lifecycle run (the real step commands; the canary as its own process, as
    a task runs it) registers its version as challenger, and the canary ends skipped saying who
    pinned, when and why; the champion is the one pinned; `mlcycle status` shows it all."""
    from pipelines.io.runs import run_steps
    from pipelines.io.status import pipeline_status, render_status

    champion = _champion(steered)
    pin = steering.pin(steered, PIPELINE, "alice", "user", "release freeze until Monday")
    try:
        out = run_through(steered, "steer-pinned", LIFECYCLE, PIPELINE)
        challenger = out["promote"]["version"]
        assert challenger not in (1, 2)
        said = f"{pin.line()}: v{challenger} stays challenger, v{champion} stays champion"
        assert out["promote"]["pinned"] == said
        proc = step_process(
            steered, "canary", "--pipeline", PIPELINE, "--run-id", "steer-pinned", stderr=subprocess.PIPE
        )
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 100, err[-2000:]
        assert f"mlcycle: skipped: {said}" in err  # the task log
        assert _champion(steered) == champion
        canary = [r for r in run_steps(steered, PIPELINE, "steer-pinned") if r.step == "canary"][-1]
        assert (canary.status, canary.outputs["reason"]) == ("skipped", said)
        status = pipeline_status(steered, PIPELINE)
        assert status["runs"][0]["outcome"] == f"champion kept: {said}"
        assert status["pin"]["by"] == "alice" and status["pin"]["reason"] == "release freeze until Monday"
        assert "pin        pinned by alice at" in render_status(status)
        assert spec_for(steered, PIPELINE).name == PIPELINE
    finally:
        steering.unpin(steered, PIPELINE, "alice", "user", "freeze over")
    steered_by = [
        (e["action"], e["actor"], e["reason"]) for e in audit.events(steered, PIPELINE) if "pin" in e["action"]
    ]
    assert steered_by[:2] == [("unpin", "alice", "freeze over"), ("pin", "alice", "release freeze until Monday")]
