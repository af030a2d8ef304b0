"""The endpoint's HTTP shapes, apart from Serve: the request body, its judgement against the
pipeline's contract, the request id, routing by entity, and every error answer (the one shape of
mlcycle's HTTP APIs: `pipelines.core.errors.error_body`). Pure: no I/O, no Ray."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from pipelines.core.errors import error_body, field_path
from serving.config import RETRY_AFTER_S
from serving.contract import Problem, RequestContract, entity_problem
from serving.records import Instance, Refused, Served
from serving.router import version_for


class InstanceBody(BaseModel):
    """One instance as the request's JSON has it (judged into an `Instance` by `judge_instances`)."""

    model_config = ConfigDict(extra="forbid")

    entity_id: StrictStr | StrictInt
    # any JSON value here: the pipeline's contract judges each (`serving.contract`), field by field
    features: dict[str, Any] = Field(default_factory=dict)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[InstanceBody] = Field(min_length=1)


def validation_detail(err: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as `{"field": "instances[0].entity_id", "message": ...}`. Pure."""
    return [{"field": field_path(e["loc"], "<body>"), "message": e["msg"]} for e in err.errors()]


def judge_instances(payload: PredictRequest, contract: RequestContract) -> list[Instance] | list[dict[str, str]]:
    """The instances as the versions take them (judged features, their place, why off the
    contract), or every problem as `{"field", "message"}`. Pure."""
    return judge_rows([(inst.entity_id, inst.features) for inst in payload.instances], contract)


def judge_rows(
    rows: Sequence[tuple[Any, Mapping[str, Any]]], contract: RequestContract
) -> list[Instance] | list[dict[str, str]]:
    """`judge_instances` for `(entity id, features)` rows, whichever protocol carried them. Pure."""
    instances: list[Instance] = []
    problems: list[Problem] = []
    for n, (entity_id, features) in enumerate(rows):
        bad_id = entity_problem(entity_id)
        if bad_id:
            problems.append(Problem(f"instances[{n}].entity_id", f"entity_id: {bad_id}"))
        judged = contract.judge(n, features)
        if isinstance(judged, list):
            problems += judged
        elif not bad_id:
            instances.append(Instance(entity_id, judged.features, n, judged.off_contract))
    if problems:
        return [{"field": p.field, "message": p.message} for p in problems]
    return instances


REQUEST_ID_HEADER = "x-request-id"


def request_id_of(header: str | None) -> uuid.UUID:
    """The request's id: the `x-request-id` it came with when that is a UUID (HAProxy's, or the
    client's own), else a new one. Pure but for the random id."""
    if header and len(header) <= 36:
        try:
            return uuid.UUID(header)
        except ValueError:
            pass
    return uuid.uuid4()


def route(instances: list[Instance], weights: dict[int, float]) -> dict[int, list[Instance]]:
    """The instances each version serves: sticky by entity id. Pure."""
    groups: dict[int, list[Instance]] = {}
    for inst in instances:
        groups.setdefault(version_for(str(inst.entity_id), weights), []).append(inst)
    return groups


def refusal_detail(refused: list[tuple[Instance, Refused]]) -> list[dict[str, str]]:
    """The 422's detail for instances a version refused: each names its instance. Pure."""
    return [{"field": f"instances[{i.position}].features", "message": r.message()} for i, r in refused]


SIMILAR_MAX_K = 100


def similar_query(params: dict[str, str]) -> tuple[str, int] | list[dict[str, str]]:
    """`(entity_id, k)` from a similarity request's query string, or what is wrong with it. Pure."""
    problems = [{"field": name, "message": "unknown parameter"} for name in params if name not in ("entity_id", "k")]
    entity = params.get("entity_id", "").strip()
    if not entity or len(entity) > 256:
        problems.append({"field": "entity_id", "message": "required: the entity's id (1-256 characters)"})
    raw_k = params.get("k", "10")
    k = int(raw_k) if raw_k.isdigit() else 0
    if not 1 <= k <= SIMILAR_MAX_K:
        problems.append({"field": "k", "message": f"an integer from 1 to {SIMILAR_MAX_K}, got {raw_k[:20]!r}"})
    return problems or (entity, k)


def error(
    status: int,
    code: str,
    reason: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An error answer in the one shape of mlcycle's HTTP APIs (`pipelines.core.errors.error_body`). Pure."""
    return JSONResponse(error_body(code, reason, field, **extra), status_code=status, headers=headers)


def invalid(detail: list[dict[str, str]], **extra: Any) -> JSONResponse:
    """A 422 naming every field at fault (`detail`); `reason` and `field` are the first's. Pure."""
    first = detail[0]
    reason = first["message"] if len(detail) == 1 else f"{first['message']} (and {len(detail) - 1} more: see detail)"
    return error(422, "invalid_request", reason, first["field"], detail=detail, **extra)


UNAUTHORIZED = ("unauthorized", "missing or invalid API key: send `x-api-key` or `Authorization: Bearer`")


def forbidden(pipeline: str) -> JSONResponse:
    """The answer to a live key that does not open this pipeline (`mlcycle keys list`). Pure."""
    return error(403, "forbidden", f"this API key does not open pipeline {pipeline!r}")


def overloaded(limit: int) -> JSONResponse:
    """The answer past a replica's capacity: 503 with `Retry-After`, at once. Pure."""
    return error(
        503,
        "overloaded",
        f"this replica holds {limit} requests (serving.max_concurrent_requests); retry after {RETRY_AFTER_S} s",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def features_unavailable(store: str, request_id: str) -> JSONResponse:
    """The answer while the online feature store cannot be read: 503 naming the store (its error
    goes to the replica's log, under the request id), with `Retry-After`; no prediction is made
    with features missing. Pure."""
    reason = f"the online feature store ({store}) could not be read; retry after {RETRY_AFTER_S} s"
    return error(
        503, "features_unavailable", reason, headers={"Retry-After": str(RETRY_AFTER_S)}, request_id=request_id
    )


def database_unavailable(request_id: str) -> JSONResponse:
    """The answer while the platform database cannot be read: 503 with `Retry-After` and the
    request id; the database's error goes to the replica's log, never to the client. Pure."""
    reason = f"the platform database could not be read; retry after {RETRY_AFTER_S} s"
    return error(
        503, "database_unavailable", reason, headers={"Retry-After": str(RETRY_AFTER_S)}, request_id=request_id
    )


def too_large(limit: int) -> JSONResponse:
    """The answer to a body over `serving.max_payload_bytes`. Pure."""
    return error(413, "payload_too_large", f"payload over {limit} bytes (serving.max_payload_bytes)")


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """The request body from its chunks as they arrive, or None as soon as it passes `limit`
    bytes: a chunked body (no Content-Length) over the limit is refused without being read whole."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def v1_answer(request_id: uuid.UUID, served: list[Served]) -> dict[str, Any]:
    """The body of a `/v1` predict's answer. Pure."""
    return {"request_id": str(request_id), "predictions": [s.answer() for s in served]}
