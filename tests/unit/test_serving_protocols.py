"""The pure conversions of the Open Inference Protocol and MLflow's scoring formats: tensors and
frames to the rows the contract judges, answers to named tensors and predictions, errors in each
protocol's shape."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from serving.contract import FeatureRule, RequestContract
from serving.haproxy import with_open_inference
from serving.mlflow_formats import invocation_rows, mlflow_error, predictions
from serving.oip import ModelShape, ProtocolError, infer_response, infer_rows, model_metadata, protocol_error
from serving.oip_schema import compiled_tensors
from serving.protocols import judged
from serving.records import Instance, Scored, Served

RULES = {
    "tenure": FeatureRule("tenure", "integer", low=0, high=120),
    "charges": FeatureRule("charges", "number", nullable=True),
    "plan": FeatureRule("plan", "category", allowed=frozenset({"basic", "pro"})),
}
CONTRACT = RequestContract(RULES)


def body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def t(name: str, datatype: str, data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape if shape is not None else [len(data)], "data": data}


def rows(raw: bytes) -> list[tuple[Any, dict[str, Any]]]:
    return infer_rows(raw, RULES, "customer_id", 100)[1]


def test_tensors_are_columns_row_i_is_instance_i() -> None:
    sent, got = infer_rows(
        body(
            t("entity_id", "INT64", [7, 8]),
            t("tenure", "INT64", [[3], [4]], [2, 1]),  # [n, 1], nested
            t("charges", "FP32", [1.5, None]),
            t("plan", "BYTES", ["basic", "pro"]),
            id="req-1",
        ),
        RULES,
        "customer_id",
        100,
    )
    assert sent == "req-1"
    assert got == [
        (7, {"tenure": 3, "charges": 1.5, "plan": "basic"}),
        (8, {"tenure": 4, "charges": None, "plan": "pro"}),
    ]
    # the join key names the entity too; no entity tensor leaves the id to the caller
    assert rows(body(t("customer_id", "BYTES", ["a"])))[0] == ("a", {})
    assert rows(body(t("tenure", "INT64", [1])))[0] == (None, {"tenure": 1})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (body(t("tenure", "BYTES", ["3"])), "datatype BYTES, but feature tenure takes a numeric datatype"),
        (body(t("plan", "FP64", [1.0])), "feature plan takes BYTES"),
        (body(t("tenure", "INT64", [1.5])), "INT64 data must be integers"),
        (body(t("charges", "FP64", ["1"])), "FP64 data must be numbers"),
        (body(t("charges", "FP64", [True])), "FP64 data must be numbers"),
        (body(t("plan", "BYTES", [3])), "BYTES data must be strings"),
        (body(t("tenure", "INT64", [1, 2]), t("plan", "BYTES", ["basic"])), "inputs of different lengths [1, 2]"),
        (body(t("tenure", "INT64", [1, 2], [3])), "shape [3] but 2 values"),
        (body(t("tenure", "INT64", [1, 2], [1, 2])), "shape must be [n] or [n, 1]"),
        (body(t("tenure", "INT64", [[1, 2]], [1, 1])), "each row must hold one value"),
        (body(t("nope", "FP64", [1.0])), "unknown input 'nope': the model takes entity_id, charges, plan, tenure"),
        (body(t("tenure", "INT64", [1]), t("tenure", "INT64", [1])), "input 'tenure' is given twice"),
        (body(t("tenure", "COMPLEX", [1])), "datatype 'COMPLEX' is not one of"),
        (body({"name": "tenure", "datatype": "INT64", "shape": [1]}), "the binary tensor extension is not supported"),
        (body(t("entity_id", "FP64", [1.0])), "the entity id is BYTES or INT64"),
        (body(), "'inputs' must be a non-empty list"),
        (b'{"inputs": [{"name": "charges", "datatype": "FP64", "shape": [1], "data": [NaN]}]}', "NaN is not a JSON"),
        (b'{"inputs": [{"name": "charges", "datatype": "FP64", "shape": [1], "data": [-Infinity]}]}', "-Infinity is"),
        (body(t("tenure", "INT64", [1]))[:-1] + b', "parameters": {"p": Infinity}}', "Infinity is not a JSON"),
        (b"[1]", "the body must be a JSON object"),
        (b"{", "the body is not JSON"),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ],
)
def test_bad_tensors_are_refused_with_a_clear_message(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=None) as err:
        rows(raw)
    assert message in str(err.value) and err.value.status == 400


def test_well_formed_tensors_are_read_by_the_compiled_schema_as_the_checks_read_them() -> None:
    raw = body(
        t("entity_id", "INT64", [7, 8]),
        t("tenure", "INT64", [3, 4], [2, 1]),  # [n, 1] with flat data
        t("charges", "FP32", [1, None]),  # an integer in an FP tensor stays an integer, as JSON has it
        {**t("plan", "BYTES", ["basic", "pro"]), "parameters": {"content_type": "str"}},
        id="req-1",
        parameters={"priority": 1, "binary_data_output": False},
        outputs=[{"name": "score", "parameters": {"binary_data": False}}],  # as tritonclient sends them
    )
    assert compiled_tensors(raw) == (
        "req-1",
        [
            ("entity_id", "INT64", [7, 8]),
            ("tenure", "INT64", [3, 4]),
            ("charges", "FP32", [1, None]),
            ("plan", "BYTES", ["basic", "pro"]),
        ],
    )
    assert infer_rows(raw, RULES, "customer_id", 100) == (
        "req-1",
        [(7, {"tenure": 3, "charges": 1, "plan": "basic"}), (8, {"tenure": 4, "charges": None, "plan": "pro"})],
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (body(t("tenure", "INT64", [[3], [4]], [2, 1])), [(None, {"tenure": 3}), (None, {"tenure": 4})]),  # nested
        (body(t("tenure", "BOOL", [True, False])), [(None, {"tenure": 1}), (None, {"tenure": 0})]),
        (body(t("tenure", "INT64", [3.0])), [(None, {"tenure": 3.0})]),  # an integral float
        (body(t("tenure", "INT64", [3]), id=5), [(None, {"tenure": 3})]),  # an id not a string is not echoed
        (body(t("tenure", "INT64", [3]), extension={"x": [1]}), [(None, {"tenure": 3})]),  # another field
        (body(t("plan", "BYTES", ["x\ud800"])), [(None, {"plan": "x\ud800"})]),  # a lone surrogate
    ],
)
def test_what_the_schema_does_not_take_the_python_checks_still_take(raw: bytes, expected: list[Any]) -> None:
    assert compiled_tensors(raw) is None
    assert infer_rows(raw, RULES, "customer_id", 100) == (None, expected)


def test_too_many_instances_are_refused() -> None:
    with pytest.raises(ProtocolError, match="from 1 to 2 instances"):
        infer_rows(body(t("tenure", "INT64", [1, 2, 3])), RULES, "k", 2)


def test_rows_become_the_instances_v1_judges_and_the_contract_still_applies() -> None:
    rid = uuid.UUID(int=5)
    ok = judged([(7, {"tenure": 3}), (None, {"plan": "pro"})], CONTRACT, rid)
    assert ok == [Instance(7, {"tenure": 3}, 0), Instance(f"{rid}/1", {"plan": "pro"}, 1)]
    refused = judged([(7, {"tenure": 500}), (8, {"plan": "gold"})], CONTRACT, rid)
    assert [p["field"] for p in refused] == ["instances[0].features.tenure", "instances[1].features.plan"]  # type: ignore[index]
    assert "above the maximum 120" in refused[0]["message"]  # type: ignore[index]


def served(kind: str) -> list[Served]:
    if kind == "multiclass":
        probs = [{"a": 0.7, "b": 0.3}, {"a": 0.1, "b": 0.9}]
        return [
            Served(Instance(i, {}, i), 2, Scored(max(p.values()), {}, label=max(p, key=p.__getitem__), probabilities=p))
            for i, p in enumerate(probs)
        ]
    return [Served(Instance(i, {}, i), v, Scored(s, {})) for i, (v, s) in enumerate([(1, 0.25), (2, 0.5)])]


def shape(kind: str) -> ModelShape:
    return ModelShape("churn", kind, ("b", "a") if kind == "multiclass" else (), "INT64", RULES)


def test_metadata_names_inputs_by_the_contract_and_outputs_by_task_kind() -> None:
    meta = model_metadata(shape("binary"), [2, 1])
    assert meta["versions"] == ["1", "2"] and meta["name"] == "churn"
    assert meta["inputs"] == [
        {"name": "entity_id", "datatype": "INT64", "shape": [-1]},
        {"name": "tenure", "datatype": "INT64", "shape": [-1]},
        {"name": "charges", "datatype": "FP64", "shape": [-1]},
        {"name": "plan", "datatype": "BYTES", "shape": [-1]},
    ]
    outputs = {k: [o["name"] for o in model_metadata(shape(k), [1])["outputs"]] for k in ("binary", "regression")}
    assert outputs == {"binary": ["score", "version"], "regression": ["value", "version"]}
    multi = model_metadata(shape("multiclass"), [1])["outputs"]
    assert multi[1] == {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]}


def test_answers_are_named_tensors_by_task_kind() -> None:
    out = infer_response(shape("binary"), served("binary"), "rid", None)
    assert out["id"] == "rid" and "model_version" not in out  # two versions answered
    assert out["outputs"] == [
        {"name": "score", "datatype": "FP64", "shape": [2], "data": [0.25, 0.5]},
        {"name": "version", "datatype": "INT64", "shape": [2], "data": [1, 2]},
    ]
    assert infer_response(shape("regression"), served("binary"), "rid", "mine")["outputs"][0]["name"] == "value"
    multi = infer_response(shape("multiclass"), served("multiclass"), "rid", "mine")
    assert multi["id"] == "mine" and multi["model_version"] == "2"
    assert multi["outputs"][0]["data"] == ["a", "b"]
    assert multi["outputs"][1] == {
        "name": "probabilities",
        "datatype": "FP64",
        "shape": [2, 2],
        "data": [0.3, 0.7, 0.9, 0.1],
    }


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_tritonclient_decodes_each_task_kinds_output_tensors(kind: str) -> None:
    """The official client's own decoding of a multiclass and a regression answer (the
    integration test infers from a binary champion through it end to end)."""
    from tritonclient.http import InferResult

    result = InferResult.from_response_body(json.dumps(infer_response(shape(kind), served(kind), "rid", None)))
    if kind == "multiclass":
        assert result.as_numpy("class").tolist() == ["a", "b"]
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (2, 2) and probabilities.tolist() == [[0.3, 0.7], [0.9, 0.1]]  # classes b, a
        assert result.as_numpy("version").tolist() == [2, 2] and result.get_response()["model_version"] == "2"
    else:
        assert result.as_numpy("value").tolist() == [0.25, 0.5] and result.as_numpy("score") is None
        assert result.as_numpy("version").tolist() == [1, 2]


def test_errors_take_each_protocols_shape() -> None:
    detail = [{"field": "instances[0].features.x", "message": "x: bad"}, {"field": "f", "message": "y: bad"}]
    assert protocol_error(422, {"error": "invalid_request", "reason": "x: bad", "detail": detail}) == (
        400,
        {"error": "instances[0].features.x: x: bad; f: y: bad"},
    )
    assert protocol_error(401, {"error": "unauthorized", "reason": "missing key"}) == (401, {"error": "missing key"})
    assert mlflow_error(422, {"reason": "x: bad"}) == (400, {"error_code": "BAD_REQUEST", "message": "x: bad"})
    assert mlflow_error(503, {"reason": "busy"})[1]["error_code"] == "TEMPORARILY_UNAVAILABLE"


FRAME = [{"customer_id": 1, "tenure": 3, "plan": "basic"}, {"customer_id": 2, "tenure": 4, "plan": "pro"}]
EXPECTED = [(1, {"tenure": 3, "plan": "basic"}), (2, {"tenure": 4, "plan": "pro"})]


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["customer_id", "tenure", "plan"], "data": [[1, 3, "basic"], [2, 4, "pro"]]}},
        {"dataframe_records": FRAME},
        {"instances": FRAME},
        {"inputs": {"customer_id": [1, 2], "tenure": [3, 4], "plan": ["basic", "pro"]}},
        {"inputs": FRAME, "params": {"ignored": 1}},
        {"instances": {"customer_id": [1, 2], "tenure": [3, 4], "plan": ["basic", "pro"]}},
    ],
)
def test_the_four_mlflow_formats_read_as_the_same_rows(payload: dict[str, Any]) -> None:
    assert invocation_rows(json.dumps(payload).encode(), "customer_id", 100) == EXPECTED


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"dataframe_records": FRAME, "inputs": {}}, "exactly one of the input fields"),
        ({"data": FRAME}, "exactly one of the input fields"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}, "has 1 values for 2 columns"),
        ({"dataframe_split": {"data": [[1]]}}, "with 'columns' and 'data'"),
        ({"dataframe_records": [1, 2]}, "must be a list of objects"),
        ({"inputs": {"a": [1, 2], "b": [1]}}, "columns of different lengths [1, 2]"),
        ({"instances": []}, "holds no rows"),
        ({"instances": [{"customer_id": 1, "entity_id": 1}]}, "names its entity twice"),
        ({"dataframe_records": [{"tenure": float("nan")}]}, "NaN is not a JSON number"),
        ({"inputs": {"tenure": [float("inf")]}}, "Infinity is not a JSON number"),
    ],
)
def test_bad_frames_are_refused_with_a_clear_message(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        invocation_rows(json.dumps(payload).encode(), "customer_id", 100)
    assert message in str(err.value)


def test_predictions_are_what_the_pyfunc_returns() -> None:
    assert predictions(served("binary"), ()) == {"predictions": [0.25, 0.5]}
    # a multiclass model's pyfunc answers each row's probabilities, in the contract's class order
    assert predictions(served("multiclass"), ("b", "a")) == {"predictions": [[0.3, 0.7], [0.9, 0.1]]}


def test_haproxy_answers_the_servers_routes_and_sends_a_models_to_its_pipeline() -> None:
    config = "frontend http_frontend\n    bind 127.0.0.1:8000\nbackend http-churn\n    server SERVE_REPLICA_1 x:1\n"
    out = with_open_inference(config, "1.2")
    assert with_open_inference(out, "1.2") == out  # once
    assert r"replace-path ^/v2/models/([^/]+)(/.*)?$ /v1/pipelines/\1/v2/models/\1\2" in out
    assert '{\\"ready\\":true}" if { path /v2/health/ready } { nbsrv(http-churn) ge 1 }' in out
    assert out.index("status 503") > out.index("nbsrv(http-churn)")  # not ready only when no app has a replica up
    assert '\\"version\\":\\"1.2\\"' in out and "{ path /v2/health/live }" in out


def test_the_hot_paths_refusals_are_reshaped_into_each_protocol_once() -> None:
    from serving.http import invalid, overloaded
    from serving.protocols import reshaped

    refused = invalid([{"field": "instances[0].features.tenure", "message": "tenure: not a number ('x')"}])
    mlflow = reshaped(refused, mlflow_error)
    assert mlflow.status_code == 400
    assert json.loads(bytes(mlflow.body)) == {"error_code": "BAD_REQUEST", "message": "tenure: not a number ('x')"}
    busy = reshaped(overloaded(4), protocol_error)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "holds 4 requests" in json.loads(bytes(busy.body))["error"]
