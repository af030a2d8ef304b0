"""Shadow runs (`canary.mode: shadow`) of the churn pipeline on a real local Ray Serve, with the
real canary step: the champion answers every client while the challenger's copies are logged,
then the comparison report and its decision (promote, or reject with the champion untouched)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.core.settings import Settings, scoped_environ
from pipelines.core.system import executable
from pipelines.io import audit, db
from pipelines.io.registry import model_name
from serving.deploy import connect, endpoint, serve_env
from tests.integration.helpers import end_test_serve, run, run_through, serving_workspace, small_spec

pytestmark = pytest.mark.integration

PIPELINE = "churn_shadow"
RUN = "shadow-1"
KEY = "shadow-key"
LIFECYCLE = ("ingest", "validate", "features", "train", "evaluate", "promote")
FAST = {"n_trials": 1, "max_epochs": 2, "early_stopping_patience": 1, "pruner": "none", "batch_size": 128}
SHADOW = {
    "mode": "shadow",
    "shadow_requests": 60,  # the window ends after 60 shadow answers ...
    "shadow_hours": 0.05,  # ... or 3 minutes: bounded either way
    "min_requests": 30,
    "max_error_rate": 0.05,
    "max_p99_latency_ms": 30000,  # wide on purpose: a loaded 2-core machine (see SHORT_CANARY)
    "max_score_shift": 0.3,
    "min_agreement": 0.9,
}


@pytest.fixture(scope="module")
def shadowed(platform: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The churn pipeline trained once and its first model served as champion by the canary step."""
    import ray

    from pipelines.ml.datagen import ChurnConfig, generate_churn

    tmp = tmp_path_factory.mktemp("shadow")
    settings = serving_workspace(platform, tmp)
    path = tmp / "churn.parquet"
    generate_churn(ChurnConfig(customers=400, months=6, seed=7)).to_parquet(path, index=False)
    evaluation = {"min_primary": 0.55, "min_improvement": -0.5, "bootstrap_samples": 50}
    small_spec(
        settings,
        {"kind": "file", "path": str(path)},
        name=PIPELINE,
        training=FAST,
        evaluation=evaluation,
        canary=SHADOW,
    )
    assert run_through(settings, RUN, LIFECYCLE, PIPELINE)["promote"]["version"] == 1
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
            assert run(settings, "canary", RUN, pipeline=PIPELINE)["outcome"] == "deployed"  # v1 is champion
            yield settings
        finally:
            end_test_serve(str(tmp))


def _register(settings: Settings, flip: bool, reason: str) -> int:
    """A challenger from the champion's ONNX graph: the same scores, or (`flip`) 1 - score."""
    import mlflow
    import mlflow.onnx
    from onnx import TensorProto, helper

    from pipelines.io.registry import CHALLENGER, move_alias, seal_version
    from pipelines.io.tracking import setup_mlflow

    setup_mlflow(settings, PIPELINE)
    model = mlflow.onnx.load_model(f"models:/{model_name(PIPELINE)}@champion")
    if flip:
        g = model.graph
        for node in g.node:
            node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
        g.initializer.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
        g.node.append(helper.make_node("Sub", ["one", "score_raw"], ["score"]))
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name=reason):
        info = mlflow.onnx.log_model(model, name="model")
    version = int(client.create_model_version(model_name(PIPELINE), info.model_uri).version)
    seal_version(client, model_name(PIPELINE), version)  # as promote does: serving loads sealed versions only
    move_alias(
        settings, client, pipeline=PIPELINE, alias=CHALLENGER, version=version, actor="test", run_id=RUN, reason=reason
    )
    return version


class Clients:
    """Single-entity requests in a thread, bounded in count and time: each answer's request id and
    version, and the failures."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.done = settings, threading.Event()
        self.answers: dict[str, int] = {}
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        url = endpoint(self.settings, PIPELINE)
        with httpx.Client(base_url=url, headers={"x-api-key": KEY}, timeout=30) as c:
            deadline, sent = time.monotonic() + 200, 0
            while not self.done.is_set() and time.monotonic() < deadline and sent < 5000:
                r = c.post("/predict", json={"instances": [{"entity_id": sent % 300 + 1}]})
                sent += 1
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                body = r.json()
                self.answers[body["request_id"]] = body["predictions"][0]["version"]
                time.sleep(0.01)

    def __enter__(self) -> Clients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(60)


def _shadowed_requests(settings: Settings, version: int) -> set[str]:
    with db.connect(settings) as conn:
        rows = conn.execute(
            "SELECT DISTINCT request_id::text FROM inference_requests WHERE pipeline = %s AND shadow"
            " AND model_version = %s",
            (PIPELINE, version),
        ).fetchall()
    return {r[0] for r in rows}


def _report(settings: Settings) -> dict[str, Any]:
    folder = Path(str(settings.artifact_root), PIPELINE, RUN, "canary")
    assert (folder / "report.html").read_text().startswith("<!doctype html>")
    assert (folder / "report.png").stat().st_size > 1000
    report: dict[str, Any] = json.loads((folder / "report.json").read_text())
    return report


def _champion(settings: Settings) -> int:
    import mlflow

    from pipelines.io.registry import alias_version

    return int(alias_version(mlflow.MlflowClient(), model_name(PIPELINE), "champion").version)


def test_a_faithful_challenger_shadows_the_champion_and_is_promoted(shadowed: Settings) -> None:
    import mlflow

    challenger = _register(shadowed, flip=False, reason="the champion's graph again")
    with Clients(shadowed) as clients:
        out = run(shadowed, "canary", RUN, pipeline=PIPELINE)
    assert clients.failures == []
    copied = _shadowed_requests(shadowed, challenger)
    assert len(copied) >= SHADOW["shadow_requests"]
    # every request the shadow answered was answered to the client by the champion
    answered = {rid: v for rid, v in clients.answers.items() if rid in copied}
    assert len(answered) >= SHADOW["shadow_requests"] and set(answered.values()) == {1}

    report = _report(shadowed)
    assert report["decision"] == out["decision"]
    assert report["mode"] == "shadow" and report["window"]["ended_by"] == "shadow_requests"
    assert report["decision"] == "promote" and report["outcome"] == "promoted", report["reasons"]
    comp = report["comparison"]
    assert comp["agreement"] == 1.0 and comp["psi"] == pytest.approx(0.0, abs=1e-6)
    assert comp["shadow_error_rate"] == 0.0 and comp["shadow"]["p99_ms"] > 0 and comp["champion"]["p50_ms"] > 0
    assert _champion(shadowed) == challenger  # moved through the registry, audited
    (event,) = audit.events(shadowed, PIPELINE, action="shadow_decision", limit=1)
    assert (event["actor_kind"], event["version"], event["detail"]["decision"]) == ("lifecycle", challenger, "promote")
    tag = mlflow.MlflowClient().get_model_version(model_name(PIPELINE), str(challenger)).tags["mlcycle.shadow"]
    assert json.loads(tag)["decision"] == "promote"


def test_a_challenger_that_disagrees_is_rejected_and_the_champion_keeps_serving(shadowed: Settings) -> None:
    from pipelines.steps.canary import CanaryRolledBack

    champion = _champion(shadowed)
    flipped = _register(shadowed, flip=True, reason="a release that scores 1 - p")
    with Clients(shadowed) as clients, pytest.raises(CanaryRolledBack, match="rejected after its shadow run"):
        run(shadowed, "canary", RUN, pipeline=PIPELINE)
    assert clients.failures == []
    assert set(clients.answers.values()) == {champion}  # the shadow never answered a client
    report = _report(shadowed)
    assert report["decision"] == "reject" and report["outcome"] == "rejected"
    # 1 - p: the classes flip and the mean moves; the canary's shift gate or the agreement says so
    assert report["comparison"]["agreement"] < 0.9 and report["comparison"]["psi"] > 0.25
    assert "canary.max_score_shift" in report["reason"] or "canary.min_agreement" in report["reason"]
    assert _champion(shadowed) == champion
    with httpx.Client(base_url=endpoint(shadowed, PIPELINE), headers={"x-api-key": KEY}, timeout=30) as c:
        info = c.get("/").json()
    assert info["weights"] == {str(champion): 100.0} and info["shadow"] is None
    (event,) = audit.events(shadowed, PIPELINE, action="shadow_decision", limit=1)
    assert (event["version"], event["detail"]["decision"]) == (flipped, "reject")


def test_a_pin_set_while_the_shadow_runs_holds_the_promotion_it_earned(shadowed: Settings) -> None:
    """A faithful challenger passes its shadow window, but the pipeline was pinned meanwhile (an
    incident freeze): the champion alias does not move, the challenger keeps its alias, Serve serves
    the champion alone, and the step ends skipped saying who pinned it."""
    import mlflow

    from pipelines.core.errors import StepSkipped
    from pipelines.io import steering
    from pipelines.io.registry import alias_version

    champion = _champion(shadowed)
    challenger = _register(shadowed, flip=False, reason="a release cut during the freeze")
    info = f"{endpoint(shadowed, PIPELINE)}/"
    pinned = threading.Event()

    def pin_once_shadowed() -> None:  # bounded: the window is at most SHADOW's 3 minutes
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if httpx.get(info, headers={"x-api-key": KEY}, timeout=30).json().get("shadow") == challenger:
                steering.pin(shadowed, PIPELINE, "oncall", "user", "incident 42: freeze")
                pinned.set()
                return
            time.sleep(0.2)

    pinner = threading.Thread(target=pin_once_shadowed)
    try:
        with Clients(shadowed) as clients:
            pinner.start()
            with pytest.raises(StepSkipped, match=r"pinned by oncall .*: incident 42: freeze: .* stays challenger"):
                run(shadowed, "canary", RUN, pipeline=PIPELINE)
        pinner.join(60)
        assert pinned.is_set() and clients.failures == []
        report = _report(shadowed)
        assert (report["decision"], report["outcome"]) == ("promote", "held"), report["reason"]
        assert _champion(shadowed) == champion
        held = alias_version(mlflow.MlflowClient(), model_name(PIPELINE), "challenger")
        assert held is not None and int(held.version) == challenger
        with httpx.Client(base_url=endpoint(shadowed, PIPELINE), headers={"x-api-key": KEY}, timeout=30) as c:
            now = c.get("/").json()
        assert now["weights"] == {str(champion): 100.0} and now["shadow"] is None
    finally:
        pinner.join(60)
        if steering.current_pin(shadowed, PIPELINE) is not None:
            steering.unpin(shadowed, PIPELINE, "oncall", "user", "freeze over")
