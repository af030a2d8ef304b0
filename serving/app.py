"""The Ray Serve application of one pipeline: one hop from HTTP to the model.

    request ─► HAProxy (Serve's ingress proxy) ─► Ingress replica
               API key, size limit, validation, sticky weighted routing, shadow copy, hedging
               └─► the versions it routes to, in the same process: an ONNX Runtime session each,
                   greedy batches, one online-feature lookup per batch awaited on the loop
               request log and metrics recorded in memory, flushed off the request path (with the
               scored entities' embeddings, into each version's vector space)
    GET /similar ─► the champion's vector space in PostgreSQL + pgvector (`pipelines.io.vectors`)

The versions, their weights, the shadow and batching live in `user_config`: a canary step
changes them through Serve's config and `reconfigure` loads a new version beside the running
ones before it takes traffic, with no restart and no request lost. With
`serving.version_deployments`, each version is a deployment of its own instead (its own
resources: a GPU replica, another node) and the ingress calls it through its handle; the canary
works the same. Build it with `build_app(args)`: `serve run serving.app:build_app` or `serve
deploy include/serve/serve.yaml` take the same arguments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipelines.core.errors import redact
from pipelines.core.settings import load_settings
from pipelines.io.db import database_url
from pipelines.io.registry import champion_version
from pipelines.io.requestlog import ab_results
from pipelines.io.servingargs import Published
from pipelines.io.vectors import NotInSpace, SpaceError
from serving.binds import bind_replica_grpc
from serving.config import ServingArgs, VersionConfig
from serving.deployments import ModelVersion, deployment_plan, online_features, static_contract
from serving.follow import ArgsFollower, newer_published
from serving.http import (
    REQUEST_ID_HEADER,
    UNAUTHORIZED,
    PredictRequest,
    database_unavailable,
    error,
    features_unavailable,
    forbidden,
    invalid,
    judge_instances,
    overloaded,
    read_limited,
    refusal_detail,
    request_id_of,
    route,
    similar_query,
    too_large,
    v1_answer,
    validation_detail,
)
from serving.keys import KeyRing
from serving.online import FeaturesUnavailable, OnlineFeatures
from serving.protocols import Answer, Parse, ProtocolRoutes
from serving.protocols import router as protocol_router
from serving.recording import Recording
from serving.records import Instance, Refused, Result, Scored, Served
from serving.similarity import SimilarReader
from serving.telemetry import RayMetrics, Recorder
from serving.versions import LocalVersion, RemoteVersion

log = logging.getLogger("mlcycle.serving")
FOLLOW_TIMEOUT_S = 600.0  # a published generation's versions load within this, or it failed
AB_REFRESH_S = 10.0
OUTAGE_LOG_EVERY_S = 10


app = FastAPI(title="mlcycle serving")
app.include_router(protocol_router)  # the Open Inference Protocol and MLflow's /invocations


@serve.deployment
@serve.ingress(app)
class Ingress(ProtocolRoutes, Recording):
    """HTTP in, routing, shadowing, hedging, recording. `user_config` holds the whole `ServingArgs`."""

    def __init__(self, static: dict[str, Any], **handles: DeploymentHandle[Any]) -> None:
        self.settings = load_settings()
        bind_replica_grpc(self.settings.serve_host)  # nothing calls the ingress but HTTP
        self.static = static
        self.args: ServingArgs  # set by reconfigure(), which Serve calls before any request
        self.contract = static_contract(static, self.settings)
        self.remote = {
            int(name.removeprefix("v")): RemoteVersion(int(name.removeprefix("v")), h) for name, h in handles.items()
        }
        self.versions: dict[int, LocalVersion | RemoteVersion] = dict(self.remote)
        self.online: OnlineFeatures | None = None
        self.loading = asyncio.Lock()
        bootstrap = os.environ.get(static["api_keys_env"], "")  # the platform's keys: every pipeline
        self.keys = KeyRing(bootstrap, lambda: database_url(self.settings), self.settings.serving_keys_reload_s)
        self.keys.start()  # the table now, then reloaded in a thread: a request never waits on the database
        self.recorder = Recorder(static["pipeline"], lambda: database_url(self.settings), RayMetrics())
        self._ab_cache: tuple[tuple[int, int], float, dict[str, Any]] | None = None
        self.inflight = 0  # predict requests admitted and not yet answered (the event loop's only)
        self.similar_reads = SimilarReader(
            lambda: database_url(self.settings), static["pipeline"], static["model_name"]
        )
        self._outage_logged = 0.0  # an outage's cause is logged once per OUTAGE_LOG_EVERY_S, not per request
        self.loop: asyncio.AbstractEventLoop | None = None
        replica = serve.get_replica_context().replica_id.unique_id
        self.follower = ArgsFollower(static["pipeline"], replica, lambda: database_url(self.settings), self._follow)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply new arguments, from Serve (`user_config`: a deploy that changed the layout, a
        replica's start) or from the published row the replica follows (`serving.follow`): a newer
        generation wins. Versions new to this replica are loaded first (in a thread, while the
        current ones keep serving), then versions, weights and batching switch at once."""
        new = ServingArgs.model_validate(config)
        if self.loop is None:  # a replica's start: the arguments Serve holds may be older than the row
            self.loop = asyncio.get_running_loop()
            new = await asyncio.to_thread(newer_published, new, lambda: database_url(self.settings))
        current = getattr(self, "args", None)
        if current is not None and new.generation < current.generation:
            log.info("generation %s from Serve is older than the %s served: kept", new.generation, current.generation)
            return
        await self._apply(new)
        self.follower.follow(new.layout, new.generation)

    def _follow(self, published: Published) -> str:
        """Apply a published generation (called in the follower's thread); "" or why it failed."""
        config = {**published.args, "generation": published.generation, "layout": published.layout}
        if self.loop is None:  # the thread starts after the first reconfigure sets it
            return "the replica has not started"
        try:
            asyncio.run_coroutine_threadsafe(self.reconfigure(config), self.loop).result(timeout=FOLLOW_TIMEOUT_S)
        except Exception as err:
            return redact(f"{type(err).__name__}: {err}")[:500]
        return ""

    async def _apply(self, new: ServingArgs) -> None:
        wanted = {v.version for v in new.versions}
        async with self.loading:
            if self.static.get("version_deployments"):
                unknown = wanted - set(self.remote)
                if unknown:
                    raise ValueError(f"weights name versions without a deployment: {sorted(unknown)}")
                self.recorder.log.watch_spaces = True  # whether a remote version embeds is not known here
                self.args = new
                return
            if self.static["online_features"] and self.online is None:
                self.online = await asyncio.to_thread(online_features, self.static, self.settings)
            versions = dict(self.versions)
            for version in sorted(wanted - set(versions)):
                versions[version] = await asyncio.to_thread(
                    LocalVersion.load,
                    self.settings,
                    self.static,
                    version,
                    self.online,
                    new.max_batch_size,
                    self.contract.nullable,
                )
                log.info("loaded %s v%s", self.static["model_name"], version)
            for v in versions.values():
                if isinstance(v, LocalVersion):
                    v.resize(new.max_batch_size)
                    v.wants_embedding = self.recorder.log.takes_vectors
            embedding = {v for v, m in versions.items() if isinstance(m, LocalVersion) and m.has_embedding}
            if embedding - set(self.versions):  # a new version may have a space: queue its vectors until a write says
                self.recorder.log.spaces = None
            self.recorder.log.watch_spaces = bool(embedding & wanted)
            self.versions = {v: versions[v] for v in wanted}
            self.args = new

    # ------------------------------------------------------------------------------ endpoints
    @app.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(self, request: Request) -> dict[str, Any]:
        """Ready, to anyone (a kubelet's probe sends no key); the versions loaded only with a key
        of this pipeline."""
        if isinstance(self._authorize(request), JSONResponse):
            return {"status": "ready"}
        return {"status": "ready", "versions": sorted(self.versions), "generation": self.args.generation}

    @app.get("/")
    async def info(self, request: Request) -> Any:
        """Versions, weights, the canary's state and the A/B result: behind the API key, like predict."""
        denied = self._authorize(request)
        if isinstance(denied, JSONResponse):
            return denied
        return {
            "pipeline": self.args.pipeline,
            "model": self.args.model_name,
            "versions": [v.model_dump() for v in self.args.versions],
            "weights": self.args.weights(),
            "shadow": self.args.shadow(),
            "canary": self.args.canary,
            "generation": self.args.generation,
            "request_log": {
                "pending": len(self.recorder.log.pending),
                "dropped": self.recorder.log.dropped,
                "dead_letters": self.recorder.log.dead_letters,
            },
            "batching": {v: m.batcher.stats() for v, m in self.versions.items() if isinstance(m, LocalVersion)},
            "ab": await self._ab(),
        }

    async def _ab(self) -> dict[str, Any] | None:
        """The A/B result on labels that have arrived, recomputed at most every AB_REFRESH_S."""
        pair = self.args.ab_pair()
        if pair is None:
            return None
        cached = self._ab_cache
        if cached and cached[0] == pair and time.monotonic() - cached[1] < AB_REFRESH_S:
            return cached[2]
        try:
            result = await asyncio.to_thread(
                ab_results, self.settings, self.args.pipeline, *pair, roles=self.args.ab_roles()
            )
        except Exception as err:
            log.exception("A/B results failed")
            # the class only: a message may name the server's paths or database (the replica's log has it)
            result = {"status": "error", "reason": f"the A/B result could not be computed ({type(err).__name__})"}
        self._ab_cache = (pair, time.monotonic(), result)
        return result

    @app.get("/similar")
    async def similar(self, request: Request, entity_id: str = "", k: str = "10") -> JSONResponse:
        """The `k` (1-100, default 10) entities nearest `entity_id` in the vector space of the
        version the `champion` alias names (resolved in the database for each request), with that
        version and the space's distance; nearest first."""
        denied = self._authorize(request)
        if isinstance(denied, JSONResponse):
            return denied
        query = similar_query(dict(request.query_params))
        if isinstance(query, list):
            return invalid(query)
        try:
            found = await asyncio.to_thread(self.similar_reads.read, *query)
        except NotInSpace as err:
            return error(404, "not_in_space", str(err), "entity_id")
        except SpaceError as err:
            return error(404, "no_vector_space", str(err))
        except (psycopg.OperationalError, PoolTimeout) as err:
            request_id = str(request_id_of(request.headers.get(REQUEST_ID_HEADER)))
            log.warning("request %s: the platform database could not be read: %s", request_id, redact(str(err)))
            return database_unavailable(request_id)
        return JSONResponse({"entity_id": query[0], "k": query[1], **found})

    @app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        return await self.serve_request(request, lambda raw, _: self._parse(raw), v1_answer)

    async def serve_request(
        self, request: Request, parse: Parse, answer: Answer, pinned: int | None = None
    ) -> JSONResponse:
        """The hot path of every protocol: the key, the size limit, the bound on requests in flight,
        then `parse` (the body as judged instances, or the answer refusing it), routing (to
        `pinned` alone where given: no weights, no fallback), hedging, recording, and `answer`."""
        started = time.perf_counter()
        key_id = self._refuse(request)
        if isinstance(key_id, JSONResponse):
            return key_id
        self.keys.asking.set(key_id)  # this request's tasks (its versions, its shadow) log it
        limit = self.args.max_concurrent_requests
        if self.inflight >= limit:  # a bounded queue: shed at once, the admitted keep their latency
            self.recorder.metrics.count(0, 1, "shed", False)
            self.recorder.touch()
            return overloaded(limit)
        self.inflight += 1
        try:
            return await self._predict(request, started, parse, answer, pinned)
        finally:
            self.inflight -= 1

    async def _predict(
        self, request: Request, started: float, parse: Parse, answer: Answer, pinned: int | None
    ) -> JSONResponse:
        raw = await read_limited(request.stream(), self.args.max_payload_bytes)
        if raw is None:
            return too_large(self.args.max_payload_bytes)
        args, sent_id = self.args, request.headers.get(REQUEST_ID_HEADER)
        request_id = request_id_of(sent_id)
        instances = parse(raw, request_id)
        if isinstance(instances, JSONResponse):
            return instances
        if pinned is not None and pinned not in self.versions:
            return error(404, "version_not_served", f"version {pinned} is not served", request_id=str(request_id))
        groups = {pinned: instances} if pinned is not None else route(instances, args.weights())
        shadow = args.shadow()
        if shadow is not None and shadow in self.versions:
            asyncio.get_running_loop().create_task(self._shadow(shadow, instances, request_id, started))
        try:
            answers = await asyncio.gather(
                *(self._answer(v, group, request_id, started, pinned is None) for v, group in groups.items())
            )
        except FeaturesUnavailable as down:  # the online store is down: nothing is scored, no version blamed
            self.recorder.metrics.count(0, len(instances), "unavailable", False)
            self.recorder.touch()
            if time.monotonic() - self._outage_logged > OUTAGE_LOG_EVERY_S:
                self._outage_logged = time.monotonic()
                log.warning("request %s (and those of the next %ss): %s", request_id, OUTAGE_LOG_EVERY_S, down)
            return features_unavailable(down.store, str(request_id))
        served: list[Served] = []
        refused: list[tuple[Instance, Refused]] = []
        for group, (answered, results) in zip(groups.values(), answers, strict=True):
            if results is None:
                reason = "no model version could answer in time (serving.request_deadline_s); retry"
                return error(503, "no_answer", reason, request_id=str(request_id))
            for inst, result in zip(group, results, strict=True):
                if isinstance(result, Scored):
                    served.append(Served(inst, answered, result))
                else:
                    refused.append((inst, result))
        if refused:  # the client's fault: 422, and nothing against the version
            detail = refusal_detail(sorted(refused, key=lambda ir: ir[0].position))
            return invalid(detail, request_id=str(request_id))
        served.sort(key=lambda s: s.instance.position)
        self._record(request_id, served, started)
        # Serve echoes the id the request came with (HAProxy's UUID); behind another proxy an id
        # that is no UUID was replaced here, and the answer says which one was logged
        headers = None if (sent_id or "").lower() == str(request_id) else {REQUEST_ID_HEADER: str(request_id)}
        return JSONResponse(answer(request_id, served), headers=headers)

    def _authorize(self, request: Request) -> JSONResponse | str:
        """The id of the request's key; 401 without a live key, 403 for a key of other pipelines."""
        key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        status, key_id = self.keys.judge(key, self.static["pipeline"])
        if status == 403:
            return forbidden(self.static["pipeline"])
        return key_id if status == 200 and key_id else error(401, *UNAUTHORIZED)

    def _refuse(self, request: Request) -> JSONResponse | str:
        """The request's key id; else its key's refusal, or 413 when the declared body is over the limit."""
        key_id = self._authorize(request)
        if isinstance(key_id, JSONResponse):
            return key_id
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.args.max_payload_bytes:
            return too_large(self.args.max_payload_bytes)
        return key_id

    def _parse(self, body: bytes) -> list[Instance] | JSONResponse:
        """The request's instances, judged against the contract, or the answer refusing it."""
        try:
            payload = PredictRequest.model_validate_json(body)
        except ValidationError as err:
            return invalid(validation_detail(err))
        if len(payload.instances) > self.args.max_instances:
            detail = [{"field": "instances", "message": f"at most {self.args.max_instances} instances"}]
            return invalid(detail)
        judged = judge_instances(payload, self.contract)
        if judged and isinstance(judged[0], dict):
            return invalid(judged)
        return judged  # type: ignore[return-value]

    async def _answer(
        self, version: int, instances: list[Instance], request_id: uuid.UUID, started: float, hedge: bool = True
    ) -> tuple[int, list[Result] | None]:
        """The version's answer, hedged. If it raises, or has not answered within
        `request_timeout_s`, the fallback version is asked too and the first good answer before
        `request_deadline_s` wins (a late answer from the version itself still counts). A version
        that raised or lost the race is logged with an error against it (the canary reads that),
        so clients do not pay for a bad canary, nor for a busy moment of the champion. Returns
        the version that answered and its results (None: nobody could); raises
        `FeaturesUnavailable` when the online store could not be read (the fallback reads the
        same store)."""
        args, began = self.args, time.monotonic()
        primary = asyncio.ensure_future(self.versions[version].predict(instances))
        done, _ = await asyncio.wait({primary}, timeout=args.request_timeout_s)
        failed = primary.exception() if done else None
        if done and failed is None:
            return version, primary.result()
        if isinstance(failed, FeaturesUnavailable):
            raise failed
        reason = "timeout" if not done else repr(failed)[:500]
        racing = {primary: version} if not done else {}
        fallback = args.fallback(version) if hedge else None  # a pinned version answers alone
        if fallback is not None and fallback in self.versions:
            racing[asyncio.ensure_future(self.versions[fallback].predict(instances))] = fallback
        winner: tuple[int, list[Result]] | None = None
        store_down: FeaturesUnavailable | None = None
        deadline = began + args.request_deadline_s
        while racing and winner is None and time.monotonic() < deadline:
            finished, _ = await asyncio.wait(racing, timeout=deadline - time.monotonic(), return_when="FIRST_COMPLETED")
            for task in finished:
                answered = racing.pop(task)
                failure = task.exception()
                if failure is None and winner is None:
                    winner = (answered, task.result())
                elif isinstance(failure, FeaturesUnavailable):
                    store_down = failure
                elif failure is not None and answered != version:
                    log.warning("fallback version %s failed too: %r", answered, failure)
        for task in racing:
            task.cancel()
        if winner is None and store_down is not None:
            raise store_down
        if winner is None or winner[0] != version:
            self._failed(request_id, version, instances, started, reason)
        return winner if winner is not None else (version, None)

    async def flush(self) -> int:
        """Write what is pending now (for tests and shutdown); returns the rows written."""
        return await self.recorder.flush()

    async def __del__(self) -> None:
        """Serve's graceful shutdown of this replica (a scale-down, a restart): its own queue is written first."""
        self.follower.stop()
        await self.recorder.close()


def build_app(args: dict[str, Any]) -> Any:
    """The application for `args` (a `ServingArgs` dict): `serve run serving.app:build_app`."""
    parsed = ServingArgs.model_validate(args)
    if not parsed.versions:
        champion = VersionConfig(version=champion_version(load_settings(), parsed.pipeline), weight=100.0)
        parsed = parsed.model_copy(update={"versions": [champion]})
    plan = deployment_plan(parsed)
    static, version, options = plan["static"], plan["version"], plan["options"]
    handles = {
        f"v{number}": ModelVersion.options(  # type: ignore[attr-defined]
            name=f"model_v{number}",
            version=f"{version}-v{number}",
            _internal=True,
            user_config={"max_batch_size": parsed.max_batch_size},
            max_ongoing_requests=ongoing,
            **options,
        ).bind(static, number, parsed.max_batch_size)
        for number, ongoing in plan["version_deployments"].items()
    }
    ingress = Ingress.options(  # type: ignore[attr-defined]
        name="ingress",
        version=version,
        _internal=True,  # Serve's own flag for setting `version`, which serve.run honours
        user_config=parsed.model_dump(mode="json"),
        max_ongoing_requests=plan["ingress_ongoing"],
        **options,
    )
    return ingress.bind(static, **handles)
