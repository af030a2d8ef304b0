"""The ecosystem's protocols on the endpoint, as thin routes over the `/v1` hot path: the Open
Inference Protocol (`serving.oip`: KServe v2 model metadata, readiness and `infer`) and MLflow's
scoring protocol (`serving.mlflow_formats`: `POST /invocations`). Each parses its body into the
same `Instance` objects a `/v1` predict judges against the contract, then goes through the same
`Ingress.serve_request` (the key, the size limit, the bound on requests in flight, routing and
hedging, the request log and metrics), and writes the answer and any error in its own shape.

HAProxy sends `/v2/models/<pipeline>/...` to the pipeline's application as
`/v1/pipelines/<pipeline>/v2/models/<pipeline>/...` and answers `/v2`, `/v2/health/live` and
`/v2/health/ready` itself (`serving.haproxy.with_open_inference`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pipelines.core.settings import Settings, spec_for
from serving.config import ServingArgs
from serving.contract import RequestContract
from serving.http import error, invalid, judge_rows
from serving.mlflow_formats import invocation_rows, mlflow_error, predictions
from serving.oip import ModelShape, ProtocolError, Rows, infer_response, infer_rows, model_metadata, model_shape
from serving.oip import protocol_error as oip_error
from serving.records import Instance, Served

router = APIRouter()
Parse = Callable[[bytes, uuid.UUID], "list[Instance] | JSONResponse"]
Answer = Callable[[uuid.UUID, list[Served]], dict[str, Any]]
Shape = Callable[[int, dict[str, Any]], tuple[int, dict[str, str]]]


def judged(rows: Rows, contract: RequestContract, request_id: uuid.UUID) -> list[Instance] | list[dict[str, str]]:
    """The rows as judged instances, as `/v1` judges its body; a row without an entity id is named
    `<request id>/<row>` (routed and logged under that). Pure."""
    return judge_rows([(f"{request_id}/{i}" if e is None else e, f) for i, (e, f) in enumerate(rows)], contract)


def reshaped(response: Response, shape: Shape) -> Response:
    """An error answer of the hot path in a protocol's shape (headers such as Retry-After kept);
    a success as it is. Pure."""
    if response.status_code < 400:
        return response
    status, body = shape(response.status_code, json.loads(bytes(response.body)))
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after", "x-request-id")}
    return JSONResponse(body, status_code=status, headers=headers)


class ProtocolRoutes:
    """The routes of both protocols, mixed into `serving.app.Ingress`."""

    settings: Settings
    args: ServingArgs
    static: dict[str, Any]
    contract: RequestContract
    versions: dict[int, Any]
    serve_request: Callable[..., Awaitable[Response]]
    _authorize: Callable[[Request], JSONResponse | str]
    _shape: ModelShape | None = None

    def model_shape(self) -> ModelShape:
        if self._shape is None:
            self._shape = model_shape(spec_for(self.settings, self.static["pipeline"]), self.contract.rules)
        return self._shape

    def _parser(self, rows_of: Callable[[bytes], tuple[Any, Rows]]) -> Parse:
        """The body's judged instances, or the refusal in mlcycle's shape (`reshaped` turns it into
        the protocol's)."""

        def parse(raw: bytes, request_id: uuid.UUID) -> list[Instance] | JSONResponse:
            try:
                _, rows = rows_of(raw)
            except ProtocolError as err:
                return error(err.status, "invalid_request", str(err))
            instances = judged(rows, self.contract, request_id)
            if instances and isinstance(instances[0], dict):
                return invalid(instances)
            return instances  # type: ignore[return-value]

        return parse

    def _known(self, request: Request, model: str, version: str | None = None) -> JSONResponse | None:
        """404 in the protocol's shape unless `model` (and `version`) are served here, to a key of this pipeline."""
        denied = self._authorize(request)
        if isinstance(denied, JSONResponse):
            return reshaped(denied, oip_error)  # type: ignore[return-value]
        if model != self.static["pipeline"]:
            return JSONResponse({"error": f"model '{model[:80]}' is not served here"}, status_code=404)
        if version is not None and (not version.isdigit() or int(version) not in self.versions):
            served = ", ".join(str(v) for v in sorted(self.versions))
            return JSONResponse({"error": f"version '{version[:20]}' is not served (served: {served})"}, 404)
        return None

    @router.get("/v2/models/{model}")
    @router.get("/v2/models/{model}/versions/{version}")
    def oip_metadata(self, request: Request, model: str, version: str | None = None) -> Response:
        refused = self._known(request, model, version)
        if refused is not None:
            return refused
        return JSONResponse(model_metadata(self.model_shape(), [int(version)] if version else list(self.versions)))

    @router.get("/v2/models/{model}/ready")
    @router.get("/v2/models/{model}/versions/{version}/ready")
    def oip_ready(self, request: Request, model: str, version: str | None = None) -> Response:
        refused = self._known(request, model, version)
        return refused if refused is not None else JSONResponse({"name": model, "ready": True})

    @router.post("/v2/models/{model}/infer")
    @router.post("/v2/models/{model}/versions/{version}/infer")
    async def oip_infer(self, request: Request, model: str, version: str | None = None) -> Response:
        refused = self._known(request, model, version)
        if refused is not None:
            return refused
        shape, contract = self.model_shape(), self.contract
        sent: list[str | None] = [None]

        def rows_of(raw: bytes) -> tuple[Any, Rows]:
            sent[0], rows = infer_rows(raw, contract.rules, self.static["entity_key"], self.max_instances())
            return sent[0], rows

        def answer(request_id: uuid.UUID, served: list[Served]) -> dict[str, Any]:
            return infer_response(shape, served, str(request_id), sent[0])

        pinned = int(version) if version else None
        return reshaped(await self.serve_request(request, self._parser(rows_of), answer, pinned), oip_error)

    @router.post("/invocations")
    async def invocations(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if content_type != "application/json":
            reason = f"this endpoint takes application/json only (dataframe_split, ...), got {content_type[:60]!r}"
            return JSONResponse({"error_code": "BAD_REQUEST", "message": reason}, status_code=415)
        classes = self.model_shape().classes if self.model_shape().kind == "multiclass" else ()

        def rows_of(raw: bytes) -> tuple[Any, Rows]:
            return None, invocation_rows(raw, self.static["entity_key"], self.max_instances())

        parse = self._parser(rows_of)
        response = await self.serve_request(request, parse, lambda _, served: predictions(served, classes))
        return reshaped(response, mlflow_error)

    def max_instances(self) -> int:
        return self.args.max_instances
