"""MLflow's scoring protocol (`mlflow models serve`'s `POST /invocations`), apart from Serve: the
four JSON input formats as rows of named values, the answer as `{"predictions": ...}` the way
MLflow's scoring server writes what the registered pyfunc returns (each instance's score or
predicted value; a multiclass model's class probabilities, in the contract's class order), and
errors in its shape (`{"error_code": "BAD_REQUEST", "message": ...}`). Pure: no I/O, no MLflow.

    {"dataframe_split": {"columns": [...], "data": [[...], ...]}}    pandas' `split` orient
    {"dataframe_records": [{"column": value, ...}, ...]}             pandas' `records` orient
    {"instances": [{"column": value, ...}, ...]}  or columnar        TF serving's row format
    {"inputs": {"column": [values], ...}}  or records                TF serving's columnar format

A row that names its entity (`entity_id` or the join key) and no feature is scored with its
features read from the online store, as a `/v1` predict is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from serving.oip import ENTITY, ProtocolError, Rows, error_reason, loads
from serving.records import Served

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def _records(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ProtocolError(f"'{where}' must be a list of objects (one per row)")
    return value


def _columnar(value: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    columns = {k: v if isinstance(v, list) else [v] for k, v in value.items()}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ProtocolError(f"'{where}': columns of different lengths {sorted(lengths)}")
    (n,) = lengths
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def _split(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list) or "data" not in value:
        raise ProtocolError("'dataframe_split' must be an object with 'columns' and 'data'")
    columns, data = value["columns"], value["data"]
    if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
        raise ProtocolError("'dataframe_split.data' must be a list of rows (lists)")
    for i, row in enumerate(data):
        if len(row) != len(columns):
            raise ProtocolError(f"'dataframe_split.data[{i}]' has {len(row)} values for {len(columns)} columns")
    return [dict(zip(columns, row, strict=True)) for row in data]


def frame_rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a scoring request in any of the four formats; raises `ProtocolError`. Pure."""
    present = [f for f in FORMATS if f in payload]
    if len(present) != 1:
        raise ProtocolError(
            f"the input must be a JSON object with exactly one of the input fields {', '.join(FORMATS)}; "
            f"got {sorted(str(k) for k in payload)[:8]}"
        )
    (kind,) = present
    value = payload[kind]
    if kind == "dataframe_split":
        rows = _split(value)
    elif kind == "dataframe_records":
        rows = _records(value, kind)
    else:
        rows = _columnar(value, kind) if isinstance(value, dict) else _records(value, kind)
    if not rows:
        raise ProtocolError(f"'{kind}' holds no rows")
    return rows


def invocation_rows(body: bytes, entity_key: str, max_instances: int) -> Rows:
    """`(entity id or None, features)` per row of an `/invocations` body. Pure."""
    rows = frame_rows(loads(body))
    if len(rows) > max_instances:
        raise ProtocolError(f"at most {max_instances} rows per request, got {len(rows)}")
    out: Rows = []
    for row in rows:
        keys = [k for k in (ENTITY, entity_key) if k in row]
        if len(keys) > 1:
            raise ProtocolError(f"a row names its entity twice ({ENTITY} and {entity_key})")
        entity = row[keys[0]] if keys else None
        out.append((entity, {k: v for k, v in row.items() if k not in keys}))
    return out


def predictions(served: Sequence[Served], classes: Sequence[str]) -> dict[str, Any]:
    """`{"predictions": [...]}` as MLflow's scoring server answers for the registered pyfunc: a score
    (or value) per row, or a multiclass model's probabilities per row in class order. Pure."""
    if served and served[0].result.probabilities is not None:
        order = list(classes) or sorted(served[0].result.probabilities)
        return {"predictions": [[(s.result.probabilities or {}).get(c, 0.0) for c in order] for s in served]}
    return {"predictions": [s.result.score for s in served]}


def mlflow_error(status: int, body: Mapping[str, Any]) -> tuple[int, dict[str, str]]:
    """An answer of mlcycle's error shape in MLflow's scoring server's: 400 `BAD_REQUEST` for a
    request it refuses (422 here), the status kept otherwise. Pure."""
    reason = error_reason(body)
    if status in (400, 422):
        return 400, {"error_code": "BAD_REQUEST", "message": reason}
    codes = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST", 413: "BAD_REQUEST"}
    return status, {"error_code": codes.get(status, "TEMPORARILY_UNAVAILABLE"), "message": reason}
