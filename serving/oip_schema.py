"""The Open Inference Protocol's `infer` request as a compiled pydantic schema: what most clients
send (flat `data` of FP*, INT*/UINT* or BYTES tensors, each element of its tensor's datatype, a
JSON `null` where a value is missing) is parsed and type-checked by pydantic-core in one pass,
with no Python per element. Anything else is for `serving.oip`'s Python checks, which take the
rest of the protocol (nested data, BOOL, an integral float for an INT tensor, fields of other
extensions) and word what they refuse. Pure.

Every object is closed (`extra="forbid"`) and every number finite, so a body this schema takes
holds nothing the Python checks would refuse but what `serving.oip` checks after it (names,
shapes against lengths, the contract's types): NaN or an infinity anywhere is left to them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic reads this one's on Python 3.11

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Parameter = StrictStr | StrictBool | StrictInt | Finite
Parameters = dict[str, Parameter]
CLOSED = ConfigDict(extra="forbid")


class _Tensor(TypedDict):
    __pydantic_config__ = CLOSED  # type: ignore[misc]
    name: Annotated[StrictStr, Field(min_length=1)]
    shape: list[StrictInt]
    parameters: NotRequired[Parameters]


class _Real(_Tensor):
    datatype: Literal["FP16", "FP32", "FP64"]
    data: list[StrictInt | Finite | None]


class _Integral(_Tensor):
    datatype: Literal["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
    data: list[StrictInt | None]


class _Text(_Tensor):
    datatype: Literal["BYTES"]
    data: list[StrictStr | None]


class _Output(TypedDict):
    __pydantic_config__ = CLOSED  # type: ignore[misc]
    name: StrictStr
    parameters: NotRequired[Parameters]


class _InferRequest(TypedDict):
    __pydantic_config__ = CLOSED  # type: ignore[misc]
    id: NotRequired[StrictStr]
    parameters: NotRequired[Parameters]
    inputs: Annotated[list[Annotated[_Real | _Integral | _Text, Field(discriminator="datatype")]], Field(min_length=1)]
    outputs: NotRequired[list[_Output]]


INFER_REQUEST: TypeAdapter[Any] = TypeAdapter(_InferRequest)


def compiled_tensors(body: bytes) -> tuple[str | None, list[tuple[str, str, list[Any]]]] | None:
    """The request's `id` and its `(name, datatype, values)` tensors, each `[n]` or `[n, 1]` with
    its `n` values; None for a body the schema does not take (the Python checks read it). Pure."""
    try:
        request = INFER_REQUEST.validate_json(body)
    except (ValidationError, ValueError):
        return None
    tensors = []
    for t in request["inputs"]:
        shape, data = t["shape"], t["data"]
        n = len(data)
        if shape != [n] and shape != [n, 1]:
            return None
        tensors.append((t["name"], t["datatype"], data))
    return request.get("id"), tensors
