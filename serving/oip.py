"""The Open Inference Protocol (KServe v2, REST) of the endpoint, apart from Serve: model metadata
from the pipeline's contract, named input tensors turned into the same `Instance` objects a `/v1`
predict makes, the answers as named output tensors, and errors in the protocol's shape
(`{"error": "..."}`). Pure: no I/O, no Ray.

Inputs are columnar: row `i` of every tensor is instance `i`; a tensor is `[n]` or `[n, 1]`, its
`data` flat (row-major) or nested. `entity_id` (or the entity's join key) names each instance and
is all an instance needs where the features are read from the online store; a feature's tensor
carries that feature for every instance (a JSON `null` where the contract lets it be missing).
The binary tensor extension is not taken: `data` is JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json

from serving.contract import FeatureRule
from serving.oip_schema import compiled_tensors
from serving.records import Served

ENTITY = "entity_id"
NUMERIC = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
)
INTEGRAL = frozenset(t for t in NUMERIC if t.startswith(("INT", "UINT", "BOOL")))
DATATYPES = NUMERIC | {"BYTES"}
RULE_DATATYPE = {"number": "FP64", "integer": "INT64", "category": "BYTES"}
PLATFORM = "mlcycle_onnx"


class ProtocolError(ValueError):
    """A request the protocol refuses: its message is the answer's `error`, `status` its code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelShape:
    """What the metadata says of a pipeline's model: its kind of answer and its inputs."""

    name: str
    kind: str  # binary | multiclass | regression
    classes: tuple[str, ...]
    entity_datatype: str  # INT64 or BYTES
    rules: Mapping[str, FeatureRule]


def model_shape(spec: Any, rules: Mapping[str, FeatureRule]) -> ModelShape:
    """The metadata's view of a pipeline (`PipelineSpec`) whose request contract is `rules`. Pure."""
    key = spec.contract.columns.get(spec.entity.join_key)
    entity = "INT64" if key is not None and key.dtype in ("int", "bool") else "BYTES"
    return ModelShape(spec.name, spec.label.kind, tuple(spec.classes), entity, rules)


def tensor(name: str, datatype: str, shape: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def output_specs(shape: ModelShape) -> list[dict[str, Any]]:
    """The output tensors of a model of this kind (every answer also names the version). Pure."""
    if shape.kind == "multiclass":
        outs = [tensor("class", "BYTES", [-1]), tensor("probabilities", "FP64", [-1, len(shape.classes)])]
    elif shape.kind == "regression":
        outs = [tensor("value", "FP64", [-1])]
    else:
        outs = [tensor("score", "FP64", [-1])]
    return [*outs, tensor("version", "INT64", [-1])]


def model_metadata(shape: ModelShape, versions: Sequence[int]) -> dict[str, Any]:
    """`GET /v2/models/{name}`: the versions served, the inputs (the entity id, then one tensor per
    feature, typed by the contract) and the outputs. Pure."""
    inputs = [tensor(ENTITY, shape.entity_datatype, [-1])]
    inputs += [tensor(name, RULE_DATATYPE[rule.kind], [-1]) for name, rule in shape.rules.items()]
    return {
        "name": shape.name,
        "versions": [str(v) for v in sorted(versions)],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": output_specs(shape),
    }


def _flat(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise ProtocolError(f"input '{name}': data must be a JSON array")
    if all(isinstance(row, list) for row in data) and data:
        if any(len(row) != 1 for row in data):
            raise ProtocolError(f"input '{name}': each row must hold one value (shape [n] or [n, 1])")
        return [row[0] for row in data]
    return data


def _rows(item: Mapping[str, Any]) -> tuple[str, str, list[Any]]:
    """`(name, datatype, values)` of one input tensor, its shape checked against its data. Pure."""
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError("every input needs a 'name'")
    datatype, shape = item.get("datatype"), item.get("shape") or []
    if datatype not in DATATYPES:
        raise ProtocolError(f"input '{name}': datatype {datatype!r} is not one of {', '.join(sorted(DATATYPES))}")
    if "data" not in item:
        raise ProtocolError(f"input '{name}': no 'data' (the binary tensor extension is not supported)")
    ok_shape = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    if not ok_shape or not isinstance(shape, list) or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise ProtocolError(f"input '{name}': shape must be [n] or [n, 1], got {shape!r}")
    values = _flat(item["data"], name)
    if len(values) != shape[0]:
        raise ProtocolError(f"input '{name}': shape {shape} but {len(values)} values")
    return name, datatype, values


def _value(name: str, datatype: str, value: Any) -> Any:
    """One element as the contract judges it (None stays None: the contract decides). Pure."""
    kind = type(value)  # the common cases decide on the type alone
    if (kind is float and datatype.startswith("FP")) or (kind is str and datatype == "BYTES"):
        return value
    if value is None:
        return None
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise ProtocolError(f"input '{name}': BYTES data must be strings, got {value!r:.40}")
        return value
    if isinstance(value, bool):
        if datatype != "BOOL":
            raise ProtocolError(f"input '{name}': {datatype} data must be numbers, got {value!r}")
        return int(value)
    if not isinstance(value, int | float):
        raise ProtocolError(f"input '{name}': {datatype} data must be numbers, got {value!r:.40}")
    if datatype in INTEGRAL and not float(value).is_integer():
        raise ProtocolError(f"input '{name}': {datatype} data must be integers, got {value!r}")
    return value


def _check_type(name: str, datatype: str, rule: FeatureRule) -> None:
    wants_text = rule.kind == "category"
    if wants_text != (datatype == "BYTES"):
        want = "BYTES" if wants_text else "a numeric datatype (FP64, FP32, INT64, ...)"
        raise ProtocolError(f"input '{name}': datatype {datatype}, but feature {name} takes {want}")


Rows = list[tuple[Any, dict[str, Any]]]
"""`(entity id or None, features)` per instance, in the request's order."""
Tensor = tuple[str, str, list[Any]]
"""`(name, datatype, values)` of one input tensor, its shape checked."""


def infer_rows(body: bytes, rules: Mapping[str, FeatureRule], entity_key: str, max_instances: int) -> tuple[Any, Rows]:
    """The request's `id` (None without one) and its rows; raises `ProtocolError` for anything the
    protocol or the contract's types refuse. Pure.

    A well-formed request (flat data of FP*, INT*/UINT* or BYTES tensors, elements of their
    datatype, nothing else in it but the protocol's `id`, `parameters` and `outputs`) is parsed
    and type-checked by pydantic-core (`serving.oip_schema`) with no Python per element; any other
    is parsed again with Python's checks, which take what the schema did not (nested data, BOOL, an
    integral float for an INT tensor, other fields) and name the first fault of what they refuse."""
    compiled = compiled_tensors(body)
    if compiled is not None:
        sent, tensors = compiled
        columns, entity = _columns(tensors, rules, entity_key, typed=True)
    else:
        payload = loads(body)
        inputs = payload.get("inputs")
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
            raise ProtocolError("'inputs' must be a non-empty list of tensors")
        columns, entity = _columns((_rows(item) for item in inputs), rules, entity_key, typed=False)
        sent = payload.get("id")
    lengths = {len(v) for v in columns.values()} | ({len(entity)} if entity is not None else set())
    if len(lengths) != 1:
        raise ProtocolError(f"inputs of different lengths {sorted(lengths)}: row i of each is instance i")
    (n,) = lengths
    if not 1 <= n <= max_instances:
        raise ProtocolError(f"from 1 to {max_instances} instances per request, got {n}")
    ids = entity if entity is not None else [None] * n
    names = list(columns)
    features = [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)] if names else None
    rows = [(ids[i], features[i] if features is not None else {}) for i in range(n)]
    return sent if isinstance(sent, str) else None, rows


def _columns(
    tensors: Iterable[Tensor], rules: Mapping[str, FeatureRule], entity_key: str, typed: bool
) -> tuple[dict[str, list[Any]], list[Any] | None]:
    """Each feature's values and the entity ids (None without them), tensor by tensor; `typed`:
    the elements were checked against their datatype already. Pure."""
    columns: dict[str, list[Any]] = {}
    entity: list[Any] | None = None
    entity_names = (ENTITY, entity_key)
    for name, datatype, values in tensors:
        rule = rules.get(name)
        if rule is not None and name not in columns and name not in entity_names:  # a feature, first seen
            if (rule.kind == "category") != (datatype == "BYTES"):
                _check_type(name, datatype, rule)
            columns[name] = values if typed else [_value(name, datatype, v) for v in values]
            continue
        if name in columns or (name in entity_names and entity is not None):
            raise ProtocolError(f"input '{name}' is given twice")
        if name not in entity_names:
            raise ProtocolError(f"unknown input '{name}': the model takes {ENTITY}, {', '.join(sorted(rules))}")
        if datatype not in ("BYTES", "INT64", "INT32", "UINT32", "UINT64"):
            raise ProtocolError(f"input '{name}': the entity id is BYTES or INT64, got {datatype}")
        entity = values if typed else [_value(name, datatype, v) for v in values]
    return columns, entity


def loads(body: bytes) -> dict[str, Any]:
    """The request's JSON object; NaN and infinities are refused (not JSON). Pure.

    pydantic-core's parser reads what is valid (it refuses NaN and infinities too); Python's
    `json` reads again what it refused, to name the fault."""
    try:
        payload = from_json(body, allow_inf_nan=False)
    except ValueError:
        payload = _loads_slowly(body)
    if not isinstance(payload, dict):
        raise ProtocolError("the body must be a JSON object")
    return payload


def _loads_slowly(body: bytes) -> Any:
    def refuse(token: str) -> Any:
        raise ProtocolError(f"{token} is not a JSON number: send finite numbers")

    try:
        return json.loads(body, parse_constant=refuse)
    except ProtocolError:
        raise
    except ValueError as err:
        raise ProtocolError(f"the body is not JSON: {err}") from None
    except RecursionError:
        raise ProtocolError("the body is nested too deeply") from None


def infer_response(shape: ModelShape, served: Sequence[Served], request_id: str, sent_id: str | None) -> dict[str, Any]:
    """The answer's named tensors, row i for instance i; `model_version` where one version
    answered every instance. Pure."""
    n = len(served)
    versions = [s.version for s in served]
    outs: list[dict[str, Any]] = []
    if shape.kind == "multiclass":
        classes = list(shape.classes) or sorted(served[0].result.probabilities or {})
        probs = [(s.result.probabilities or {}).get(c, 0.0) for s in served for c in classes]
        outs.append({**tensor("class", "BYTES", [n]), "data": [s.result.label for s in served]})
        outs.append({**tensor("probabilities", "FP64", [n, len(classes)]), "data": probs})
    else:
        name = "value" if shape.kind == "regression" else "score"
        outs.append({**tensor(name, "FP64", [n]), "data": [s.result.score for s in served]})
    outs.append({**tensor("version", "INT64", [n]), "data": versions})
    body: dict[str, Any] = {"model_name": shape.name, "id": sent_id or request_id}
    if len(set(versions)) == 1:
        body["model_version"] = str(versions[0])
    body["outputs"] = outs
    return body


def error_reason(body: Mapping[str, Any]) -> str:
    """The one line of an answer of mlcycle's error shape (`error`, `reason`, `detail`): every
    field at fault where several are. Pure."""
    reason = str(body.get("reason") or body.get("error") or "error")
    detail = body.get("detail")
    if isinstance(detail, list) and len(detail) > 1:
        reason = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in detail if isinstance(d, dict))
    return reason


def protocol_error(status: int, body: Mapping[str, Any]) -> tuple[int, dict[str, str]]:
    """An answer of mlcycle's error shape in the protocol's: `{"error": "<reason>"}`, 400 for a
    request the contract refuses (422). Pure."""
    return (400 if status == 422 else status), {"error": error_reason(body)}
