"""The request bodies the serving benches send: the same rows as `/v1` predicts, MLflow's
`dataframe_records`, Open Inference Protocol tensors and `/invocations` frames."""

from __future__ import annotations

import json
from typing import Any

Rows = list[dict[str, Any]]


def ours_bodies(ids: list[Any], rows: Rows | None) -> list[str]:
    if rows is None:
        return [json.dumps({"instances": [{"entity_id": i}]}) for i in ids]
    return [json.dumps({"instances": [{"entity_id": i, "features": r}]}) for i, r in zip(ids, rows, strict=True)]


def mlflow_bodies(rows: Rows) -> list[str]:
    # The registered model's pyfunc takes a DataFrame of raw columns with the contract's types
    # (its signature), as MLflow's scoring server's `dataframe_records` carries it.
    # (an integral float reads as the `long` an int column's signature wants; a double takes it too)
    def typed(v: Any) -> Any:
        return int(v) if isinstance(v, float) and v.is_integer() else v

    return [json.dumps({"dataframe_records": [{c: typed(v) for c, v in r.items()}]}) for r in rows]


def oip_bodies(ids: list[Any], rows: Rows) -> list[str]:
    """One instance per request, one tensor per feature (the entity id too), as `/v2/.../infer` takes it."""

    def tensor(name: str, value: Any) -> dict[str, Any]:
        datatype = "BYTES" if isinstance(value, str) else "INT64" if isinstance(value, int) else "FP64"
        return {"name": name, "datatype": datatype, "shape": [1], "data": [value]}

    return [
        json.dumps({"inputs": [tensor("entity_id", i), *(tensor(c, v) for c, v in r.items())]})
        for i, r in zip(ids, rows, strict=True)
    ]


def invocation_bodies(ids: list[Any], rows: Rows) -> list[str]:
    """One row per request in MLflow's `dataframe_records`, with its entity id, as `/invocations` takes it."""
    return [json.dumps({"dataframe_records": [{"entity_id": i, **r}]}) for i, r in zip(ids, rows, strict=True)]
