"""The ecosystem's protocols on the real Serve endpoint: the Open Inference Protocol through the
official `tritonclient.http` (churn's binary champion, and a multiclass wine and a regression
diabetes champion served beside it), and MLflow's `/invocations` against `mlflow models serve` of
the same registered model, each answer compared with `/v1`'s."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pipelines.core.settings import Settings, scoped_environ, spec_for
from pipelines.core.system import executable, private_dir, stop_processes
from pipelines.io import db
from pipelines.io.registry import model_name, seal_version
from pipelines.io.tracking import mlflow_uri, setup_mlflow
from serving.config import VersionConfig
from serving.deploy import connect, deploy, endpoint, haproxy_dir, serve_env, serving_args
from tests.integration.helpers import end_test_serve, run_through, serving_workspace, small_spec
from tests.services import free_port_pairs

pytestmark = pytest.mark.integration

PIPELINE = "churn_oip"
KEY = "oip-key"
LIFECYCLE = ("ingest", "validate", "features", "train", "evaluate", "promote")
FAST = {"n_trials": 1, "max_epochs": 2, "early_stopping_patience": 1, "pruner": "none", "batch_size": 128}
EVAL = {"min_primary": 0.5, "min_improvement": -1.0, "bootstrap_samples": 50, "max_latency_ms_per_row": 50.0}
IDS = list(range(1, 13))
ROWS: list[dict[str, Any]] = []  # raw feature rows of some customers, as the model takes them


@pytest.fixture(scope="module")
def served(platform: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """v1 trained and v2 the same model registered again; Serve routes all traffic to v1 (v2 is
    loaded with weight 0: only a pinned request reaches it)."""
    import mlflow
    import ray

    tmp = tmp_path_factory.mktemp("protocols")
    settings = serving_workspace(platform, tmp)
    small_spec(settings, _source(tmp), name=PIPELINE, training=FAST, evaluation=EVAL)
    assert run_through(settings, "oip-1", LIFECYCLE, PIPELINE)["promote"]["version"] == 1
    setup_mlflow(settings, PIPELINE)
    client = mlflow.MlflowClient()
    v1 = client.get_model_version(model_name(PIPELINE), "1")
    v2 = client.create_model_version(model_name(PIPELINE), str(v1.source), run_id=v1.run_id)
    seal_version(client, model_name(PIPELINE), int(v2.version))
    env = {
        "MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir),
        "MLCYCLE_ARTIFACT_ROOT": str(settings.artifact_root),
        "MLCYCLE_SERVING_API_KEYS": KEY,
        **serve_env(settings, executable("mlcycle-haproxy"), str(tmp)),
    }
    private_dir(haproxy_dir(str(tmp)))
    with scoped_environ(env):
        with scoped_environ({"MLCYCLE_DATABASE_URL": db.enable_serving_role(settings)}):
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="mlcycle")
        try:
            connect(settings)
            versions = [VersionConfig(version=1, weight=100), VersionConfig(version=2, weight=0)]
            deploy(serving_args(spec_for(settings, PIPELINE), versions, model_name(PIPELINE)))
            yield settings
        finally:
            end_test_serve(str(tmp))


def _source(tmp: Path) -> dict[str, Any]:
    from pipelines.ml.datagen import ChurnConfig, generate_churn

    df = generate_churn(ChurnConfig(customers=400, months=8, seed=5))
    path = tmp / "churn.parquet"
    df.to_parquet(path, index=False)
    return {"kind": "file", "path": str(path)}


def _rows(settings: Settings) -> list[dict[str, Any]]:
    """Feature rows of some customers (their latest month), typed as the model's signature wants."""
    if not ROWS:
        import pandas as pd

        spec = spec_for(settings, PIPELINE)
        df = pd.read_parquet(spec.source.path)  # type: ignore[union-attr]
        latest = df.sort_values(spec.entity.timestamp).groupby(spec.entity.join_key).tail(1).head(len(IDS))
        cols = spec.model.numeric_features + spec.model.categorical_features
        for rec in latest[cols].to_dict(orient="records"):
            ROWS.append({c: int(v) if isinstance(v, float) and v.is_integer() else v for c, v in rec.items()})
    return ROWS


def _v1(settings: Settings, instances: list[dict[str, Any]], pipeline: str = PIPELINE) -> list[dict[str, Any]]:
    r = httpx.post(
        f"{endpoint(settings, pipeline)}/predict", json={"instances": instances}, headers={"x-api-key": KEY}, timeout=30
    )
    assert r.status_code == 200, r.text
    return list(r.json()["predictions"])


def _triton(settings: Settings) -> Any:
    import tritonclient.http as triton

    return triton.InferenceServerClient(url=f"{settings.serve_host}:{settings.serve_port}", network_timeout=30)


def _entity_input(ids: list[int]) -> Any:
    import tritonclient.http as triton

    tensor = triton.InferInput("entity_id", [len(ids)], "INT64")
    tensor.set_data_from_numpy(np.array(ids, dtype=np.int64), binary_data=False)
    return tensor


def test_tritonclient_reads_metadata_and_infers_as_v1_answers(served: Settings) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client, auth = _triton(served), {"x-api-key": KEY}
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "mlcycle"
    assert client.is_model_ready(PIPELINE, headers=auth)
    meta = client.get_model_metadata(PIPELINE, headers=auth)
    spec = spec_for(served, PIPELINE)
    assert meta["versions"] == ["1", "2"]
    inputs = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert inputs["entity_id"] == "INT64"
    assert {n: inputs[n] for n in spec.model.categorical_features} == dict.fromkeys(
        spec.model.categorical_features, "BYTES"
    )
    assert set(inputs) == {"entity_id", *spec.model.numeric_features, *spec.model.categorical_features}
    assert [o["name"] for o in meta["outputs"]] == ["score", "version"]

    # entity ids only: the features from the online store, as /v1 reads them
    asked = [triton.InferRequestedOutput("score", binary_data=False)]
    result = client.infer(PIPELINE, [_entity_input(IDS)], headers=auth, outputs=asked)
    expected = [p["score"] for p in _v1(served, [{"entity_id": i} for i in IDS])]
    np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=1e-9)
    assert result.get_response()["model_version"] == "1"

    # every feature as a tensor, as /v1 takes them in the request
    rows = _rows(served)
    tensors = [_entity_input(IDS)]
    for name in spec.model.numeric_features + spec.model.categorical_features:
        values = [r[name] for r in rows]
        text = name in spec.model.categorical_features
        tensor = triton.InferInput(name, [len(values)], "BYTES" if text else "FP64")
        tensor.set_data_from_numpy(np.array(values, dtype=object if text else np.float64), binary_data=False)
        tensors.append(tensor)
    result = client.infer(PIPELINE, tensors, headers=auth, outputs=asked)
    expected = [
        p["score"] for p in _v1(served, [{"entity_id": i, "features": r} for i, r in zip(IDS, rows, strict=True)])
    ]
    np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=1e-9)

    with pytest.raises(InferenceServerException, match="unauthorized|API key"):
        client.infer(PIPELINE, [_entity_input(IDS)], outputs=asked)
    with pytest.raises(InferenceServerException, match="unknown input 'nope'"):
        client.infer(
            PIPELINE,
            [
                _entity_input(IDS),
                triton.InferInput("nope", [1], "FP64").set_data_from_numpy(np.array([1.0]), binary_data=False),
            ],
            headers=auth,
        )


def test_a_named_version_answers_though_it_takes_no_traffic(served: Settings) -> None:
    client, auth = _triton(served), {"x-api-key": KEY}
    result = client.infer(PIPELINE, [_entity_input(IDS)], model_version="2", headers=auth)
    assert result.get_response()["model_version"] == "2"
    assert set(result.as_numpy("version").tolist()) == {2}
    routed = client.infer(PIPELINE, [_entity_input(IDS)], headers=auth)  # weight 0: never routed to
    assert set(routed.as_numpy("version").tolist()) == {1}
    # the same registered model: the same scores
    np.testing.assert_allclose(result.as_numpy("score"), routed.as_numpy("score"), rtol=1e-9)
    missing = httpx.post(
        f"http://{served.serve_host}:{served.serve_port}/v2/models/{PIPELINE}/versions/9/infer",
        json={"inputs": []},
        headers={"x-api-key": KEY},
        timeout=30,
    )
    assert missing.status_code == 404 and "version '9' is not served" in missing.json()["error"]


KINDS = {"wine_oip": "wine", "diabetes_oip": "diabetes"}  # a multiclass and a regression champion


@pytest.fixture(scope="module")
def kinds(served: Settings) -> Settings:
    """The bundled wine (multiclass) and diabetes (regression) pipelines, each trained fast (one
    linear trial) through the lifecycle to a champion, served beside churn in the same Serve."""
    import yaml

    from pipelines.core.settings import PROJECT_DIR

    assert served.pipelines_dir is not None
    for name, bundled in KINDS.items():
        spec = yaml.safe_load((PROJECT_DIR / "include" / "pipelines" / f"{bundled}.yaml").read_text())
        spec["name"] = name
        spec["model"]["kind"] = "linear"
        spec["training"].update(n_trials=1, time_budget_s=30, pruner="none")
        spec["evaluation"].update({**EVAL, "min_primary": None, "beat_baseline": False})  # any champion
        spec["serving"] = {}
        (served.pipelines_dir / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        assert run_through(served, f"{name}-1", LIFECYCLE, name)["promote"]["version"] == 1
        deploy(serving_args(spec_for(served, name), [VersionConfig(version=1, weight=100)], model_name(name)))
    return served


@pytest.mark.parametrize("name", list(KINDS))
def test_tritonclient_reads_a_multiclass_and_a_regression_champions_tensors_as_v1_answers(
    kinds: Settings, name: str
) -> None:
    """Entity ids alone (the features from the online store): the named output tensors of each
    task kind, read by the official client, equal `/v1`'s answers for the same entities."""
    client, auth, ids = _triton(kinds), {"x-api-key": KEY}, [1, 2, 3, 4, 5]
    meta = client.get_model_metadata(name, headers=auth)
    expected = _v1(kinds, [{"entity_id": i} for i in ids], name)
    result = client.infer(name, [_entity_input(ids)], headers=auth)
    if KINDS[name] == "wine":
        classes = spec_for(kinds, name).classes
        assert [o["name"] for o in meta["outputs"]] == ["class", "probabilities", "version"]
        assert meta["outputs"][1]["shape"] == [-1, len(classes)] == [-1, 3]
        assert result.as_numpy("class").tolist() == [p["class"] for p in expected]
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (len(ids), 3)
        np.testing.assert_allclose(probabilities, [[p["probabilities"][c] for c in classes] for p in expected])
    else:
        assert [o["name"] for o in meta["outputs"]] == ["value", "version"]
        np.testing.assert_allclose(result.as_numpy("value"), [p["score"] for p in expected], rtol=1e-9)
    assert result.as_numpy("version").tolist() == [1] * len(ids)


@pytest.fixture(scope="module")
def mlflow_server(served: Settings) -> Iterator[str]:
    """`mlflow models serve` of the registered v1, on a port of the test's own."""
    (port,) = free_port_pairs(1)
    cmd = [executable("mlflow"), "models", "serve", "-m", f"models:/{model_name(PIPELINE)}/1"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri(served), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-2000:]  # type: ignore[union-attr]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        stop_processes([proc])


def _formats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    columns = list(rows[0])
    return {
        "dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]},
        "dataframe_records": rows,
        "instances": rows,
        "inputs": {c: [r[c] for r in rows] for c in columns},
    }


@pytest.mark.parametrize("kind", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_invocations_answer_as_mlflow_models_serve(served: Settings, mlflow_server: str, kind: str) -> None:
    body = {kind: _formats(_rows(served))[kind]}
    theirs = httpx.post(mlflow_server, json=body, timeout=60)
    assert theirs.status_code == 200, theirs.text
    ours = httpx.post(f"{endpoint(served, PIPELINE)}/invocations", json=body, headers={"x-api-key": KEY}, timeout=30)
    assert ours.status_code == 200, ours.text
    assert list(ours.json()) == ["predictions"]
    np.testing.assert_allclose(ours.json()["predictions"], theirs.json()["predictions"], rtol=1e-5, atol=1e-6)


def test_invocations_with_entity_ids_alone_read_the_online_store_as_v1(served: Settings) -> None:
    url = f"{endpoint(served, PIPELINE)}/invocations"
    body = {"dataframe_split": {"columns": ["customer_id"], "data": [[i] for i in IDS]}}
    ours = httpx.post(url, json=body, headers={"x-api-key": KEY}, timeout=30)
    assert ours.status_code == 200, ours.text
    expected = [p["score"] for p in _v1(served, [{"entity_id": i} for i in IDS])]
    np.testing.assert_allclose(ours.json()["predictions"], expected, rtol=1e-9)
    bad = httpx.post(url, json={"dataframe_records": [{"tenure_months": "x"}]}, headers={"x-api-key": KEY}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error_code"] == "BAD_REQUEST", bad.text
    assert "tenure_months" in bad.json()["message"]
    denied = httpx.post(url, json=body, timeout=30)
    assert denied.status_code == 401 and denied.json()["error_code"] == "UNAUTHENTICATED"
