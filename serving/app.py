"""The Ray Serve application of one pipeline: an ingress and one deployment per model version.

    request ─► Ingress (FastAPI: API key, size limit, validation, sticky weighted routing,
               shadow copy, request log off the hot path, Prometheus metrics)
               └─► ModelVersion vN (ONNX Runtime session, @serve.batch, Feast online features)

Two hops only: the ingress routes itself and holds a handle per version. Weights, the shadow
version and batching live in `user_config`, so a canary step changes them through Serve's config
(`reconfigure`, no restart). Build it with `build_app(args)`; `serve run serving.app:build_app
--app-config include/serve/<pipeline>.json` or `serve deploy` take the same arguments.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipelines.core.errors import field_path
from pipelines.core.settings import load_settings
from pipelines.core.spec import spec_for
from pipelines.io.db import database_url
from pipelines.io.featurestore import feature_store
from pipelines.io.registry import champion_version
from pipelines.io.requestlog import ab_results
from pipelines.io.tracking import setup_mlflow
from pipelines.ml.model import onnx_session
from serving.config import ServingArgs, VersionConfig
from serving.router import choose

log = logging.getLogger("mlcycle.serving")
FLUSH_EVERY_S = 0.2
MAX_PENDING_LOG_ROWS = 100_000
AB_REFRESH_S = 10.0
INGRESS_ONGOING = 256


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity_id: str | int
    features: dict[str, float | int | str] = Field(default_factory=dict)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[Instance] = Field(min_length=1)


def validation_detail(err: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as `{"field": "instances[0].entity_id", "message": ...}`. Pure."""
    return [{"field": field_path(e["loc"], "<body>"), "message": e["msg"]} for e in err.errors()]


@serve.deployment
class ModelVersion:
    """One registered model version: ONNX Runtime on raw columns, batched, with online features."""

    def __init__(self, static: dict[str, Any], version: int) -> None:
        import mlflow.onnx

        self.static = static
        self.version = version
        settings = load_settings()
        setup_mlflow(settings, static["pipeline"])
        model = mlflow.onnx.load_model(f"models:/{static['model_name']}/{version}")
        # As many threads as the CPUs Ray gave the replica, at least one.
        self.session = onnx_session(model.SerializeToString(), threads=max(1, round(static["replica_cpus"])))
        self.inputs = [(i.name, i.type) for i in self.session.get_inputs()]
        self.store = None
        if static["online_features"]:
            spec = spec_for(settings, static["pipeline"])
            self._store_ctx = feature_store(spec, settings)
            self.store = self._store_ctx.__enter__()
            self.service = self.store.get_feature_service(spec.features.feature_service)
            self.key_is_int = spec.contract.columns[spec.entity.join_key].dtype == "int"

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.score.set_max_batch_size(int(config["max_batch_size"]))  # type: ignore[attr-defined]
        self.score.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))  # type: ignore[attr-defined]

    def _online(self, entity_ids: list[str | int]) -> list[dict[str, Any]]:
        assert self.store is not None
        key = self.static["entity_key"]
        rows = [{key: int(e) if self.key_is_int else str(e)} for e in entity_ids]
        found = self.store.get_online_features(features=self.service, entity_rows=rows).to_dict()
        return [{f: found[f][i] for f in self.static["features"] if f in found} for i in range(len(rows))]

    async def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        """Scores for the instances, or the features that are missing (the ingress answers 422)."""
        online = self._online([i["entity_id"] for i in instances]) if self.store is not None else None
        rows, missing = [], {}
        for n, inst in enumerate(instances):
            row = {**(online[n] if online else {}), **inst.get("features", {})}
            absent = [name for name, _ in self.inputs if row.get(name) is None]
            if absent:
                missing[str(inst["entity_id"])] = absent
            rows.append(row)
        if missing:
            return {"missing": missing}
        scores = await asyncio.gather(*(self.score(r) for r in rows))
        return {
            "version": self.version,
            "scores": scores,
            "features": [{name: row[name] for name, _ in self.inputs} for row in rows],
        }

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def score(self, rows: list[dict[str, Any]]) -> list[float]:
        feed = {}
        for name, kind in self.inputs:
            values = [r[name] for r in rows]
            if kind == "tensor(string)":
                feed[name] = np.array([str(v) for v in values], dtype=object).reshape(-1, 1)
            else:
                feed[name] = np.array(values, dtype=np.float32).reshape(-1, 1)
        # Off the event loop: a long inference must not stall Serve's health checks and shutdown.
        (scores,) = await asyncio.to_thread(self.session.run, ["score"], feed)
        return [float(s) for s in scores]


app = FastAPI(title="mlcycle serving")


@serve.deployment
@serve.ingress(app)
class Ingress:
    """HTTP in, routing, shadowing, logging. `user_config` holds the whole `ServingArgs`."""

    def __init__(self, static: dict[str, Any], **versions: DeploymentHandle[Any]) -> None:
        from ray.serve import metrics

        self.args: ServingArgs  # set by reconfigure(), which Serve calls before any request
        self.handles = {int(name.removeprefix("v")): h for name, h in versions.items()}
        keys = os.environ.get(static["api_keys_env"], "")
        self.api_keys = {k.strip() for k in keys.split(",") if k.strip()}
        if not self.api_keys:
            log.warning("%s is empty: every predict request is refused", static["api_keys_env"])
        self.pending: list[tuple[Any, ...]] = []
        self.flusher: asyncio.Task[None] | None = None
        self.dropped = 0
        self.requests = metrics.Counter(
            "mlcycle_requests",
            description="predictions served",
            tag_keys=("pipeline", "version", "status", "shadow"),  # type: ignore[arg-type]
        )
        self.latency = metrics.Histogram(
            "mlcycle_latency_ms",
            description="prediction latency (ms)",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
            tag_keys=("pipeline", "version"),  # type: ignore[arg-type]
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        new = ServingArgs.model_validate(config)
        unknown = set(new.weights()) - set(self.handles)
        if unknown:
            raise ValueError(f"weights name versions without a deployment: {sorted(unknown)}")
        self.args = new

    # ------------------------------------------------------------------------------ endpoints
    @app.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(self) -> dict[str, Any]:
        return {"status": "ready", "versions": sorted(self.handles)}

    @app.get("/")
    async def info(self) -> dict[str, Any]:
        return {
            "pipeline": self.args.pipeline,
            "model": self.args.model_name,
            "versions": [v.model_dump() for v in self.args.versions],
            "weights": self.args.weights(),
            "shadow": self.args.shadow(),
            "canary": self.args.canary,
            "request_log": {"pending": len(self.pending), "dropped": self.dropped},
            "ab": await self._ab(),
        }

    async def _ab(self) -> dict[str, Any] | None:
        """The A/B result on labels that have arrived, recomputed at most every AB_REFRESH_S."""
        pair = self.args.ab_pair()
        if pair is None:
            return None
        cached = getattr(self, "_ab_cache", None)
        if cached and cached[0] == pair and time.monotonic() - cached[1] < AB_REFRESH_S:
            return cached[2]  # type: ignore[no-any-return]

        try:
            result = await asyncio.to_thread(ab_results, load_settings(), self.args.pipeline, *pair)
        except Exception as err:
            log.exception("A/B results failed")
            result = {"status": "error", "reason": repr(err)[:300]}
        self._ab_cache = (pair, time.monotonic(), result)
        return result

    @app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not key or key not in self.api_keys:
            return JSONResponse({"error": "missing or invalid API key"}, status_code=401)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.args.max_payload_bytes:
            return JSONResponse({"error": f"payload over {self.args.max_payload_bytes} bytes"}, status_code=413)
        body = await request.body()
        if len(body) > self.args.max_payload_bytes:
            return JSONResponse({"error": f"payload over {self.args.max_payload_bytes} bytes"}, status_code=413)
        try:
            payload = PredictRequest.model_validate_json(body)
        except ValidationError as err:
            return JSONResponse({"error": "invalid request", "detail": validation_detail(err)}, status_code=422)
        if len(payload.instances) > self.args.max_instances:
            return JSONResponse(
                {
                    "error": "invalid request",
                    "detail": [{"field": "instances", "message": f"at most {self.args.max_instances} instances"}],
                },
                status_code=422,
            )

        request_id = uuid.uuid4()
        instances = [i.model_dump() for i in payload.instances]
        weights = self.args.weights()
        groups: dict[int, list[int]] = {}
        for n, inst in enumerate(instances):
            groups.setdefault(choose(str(inst["entity_id"]), weights), []).append(n)
        calls = {v: self.handles[v].predict.remote([instances[n] for n in idx]) for v, idx in groups.items()}
        shadow = self.args.shadow()
        if shadow is not None and shadow in self.handles:
            shadow_call = self.handles[shadow].predict.remote(instances)
            asyncio.get_running_loop().create_task(self._shadow(shadow, shadow_call, instances, request_id, started))
        results: list[dict[str, Any] | None] = [None] * len(instances)
        for version, idx in groups.items():
            answered, out = await self._answer(
                version, calls[version], [instances[n] for n in idx], request_id, started
            )
            if out is None:
                return JSONResponse(
                    {"error": "no model version could answer", "request_id": str(request_id)}, status_code=503
                )
            if "missing" in out:
                detail = [
                    {"field": f"instances[entity_id={e}].features", "message": f"missing features {m}"}
                    for e, m in out["missing"].items()
                ]
                return JSONResponse({"error": "invalid request", "detail": detail}, status_code=422)
            for j, n in enumerate(idx):
                results[n] = {"entity_id": instances[n]["entity_id"], "version": answered, "score": out["scores"][j]}
                instances[n]["_features"] = out["features"][j]
        elapsed = (time.perf_counter() - started) * 1000
        for n, result in enumerate(results):
            assert result is not None
            self._log(request_id, result["version"], instances[n], result["score"], elapsed, "ok", None, False)
        for version in {r["version"] for r in results if r is not None}:
            tags = {"pipeline": self.args.pipeline, "version": str(version)}
            served = sum(1 for r in results if r is not None and r["version"] == version)
            self.requests.inc(served, tags={**tags, "status": "ok", "shadow": "false"})
            self.latency.observe(elapsed, tags=tags)
        return JSONResponse({"request_id": str(request_id), "predictions": results})

    async def _answer(
        self, version: int, call: Any, instances: list[dict[str, Any]], request_id: uuid.UUID, started: float
    ) -> tuple[int, dict[str, Any] | None]:
        """The version's answer, hedged. If it raises, or has not answered within
        `request_timeout_s`, the fallback version is asked too and the first good answer before
        `request_deadline_s` wins (a late answer from the version itself still counts). A version
        that raised or lost the race is logged with an error against it (the canary reads that),
        so clients do not pay for a bad canary, nor for a busy moment of the champion. Returns
        the version that answered and its output (None: nobody could)."""
        timeout, began = self.args.request_timeout_s, time.monotonic()
        primary = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({primary}, timeout=timeout)
        if done and primary.exception() is None:
            return version, primary.result()
        reason = "timeout" if not done else repr(primary.exception())[:500]
        racing = {primary: version} if not done else {}
        fallback = self.args.fallback(version)
        if fallback is not None and fallback in self.handles:
            racing[asyncio.ensure_future(self.handles[fallback].predict.remote(instances))] = fallback
        winner: tuple[int, dict[str, Any]] | None = None
        deadline = began + self.args.request_deadline_s
        while racing and winner is None and time.monotonic() < deadline:
            finished, _ = await asyncio.wait(racing, timeout=deadline - time.monotonic(), return_when="FIRST_COMPLETED")
            for task in finished:
                answered = racing.pop(task)
                if task.exception() is None and winner is None:
                    winner = (answered, task.result())
                elif task.exception() is not None and answered != version:
                    log.warning("fallback version %s failed too: %r", answered, task.exception())
        for task in racing:
            task.cancel()
        if winner is None or winner[0] != version:
            self._failed(request_id, version, instances, started, reason)
        return winner if winner is not None else (version, None)

    def _failed(
        self, request_id: uuid.UUID, version: int, instances: list[dict[str, Any]], started: float, reason: str
    ) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        for inst in instances:
            self._log(request_id, version, inst, None, elapsed, "error", reason, False)
        self.requests.inc(
            len(instances),
            tags={"pipeline": self.args.pipeline, "version": str(version), "status": "error", "shadow": "false"},
        )

    # ------------------------------------------------------------------------- off the hot path
    async def _shadow(
        self, version: int, call: Any, instances: list[dict[str, Any]], request_id: uuid.UUID, started: float
    ) -> None:
        try:
            out = await call
            status, error = "ok", None
        except Exception as err:
            out, status, error = {}, "error", repr(err)[:500]
        elapsed = (time.perf_counter() - started) * 1000
        scores = out.get("scores") or [None] * len(instances)
        feats = out.get("features") or [{}] * len(instances)
        if "missing" in out:
            status, error = "error", f"missing features {out['missing']}"
        for inst, score, f in zip(instances, scores, feats, strict=True):
            self._log(request_id, version, {**inst, "_features": f}, score, elapsed, status, error, True)
        self.requests.inc(
            len(instances),
            tags={"pipeline": self.args.pipeline, "version": str(version), "status": status, "shadow": "true"},
        )

    def _log(
        self,
        request_id: uuid.UUID,
        version: int,
        inst: dict[str, Any],
        score: float | None,
        latency_ms: float,
        status: str,
        error: str | None,
        shadow: bool,
    ) -> None:
        if not self.args.log_requests:
            return
        if len(self.pending) >= MAX_PENDING_LOG_ROWS:
            self.pending.pop(0)
            self.dropped += 1
        features = inst.get("_features") or inst.get("features") or {}
        self.pending.append(
            (
                request_id,
                self.args.pipeline,
                version,
                str(inst["entity_id"]),
                json.dumps(features, default=str),
                score,
                latency_ms,
                status,
                error,
                shadow,
            )
        )
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while self.pending:
            await asyncio.sleep(FLUSH_EVERY_S)
            batch, self.pending = self.pending, []
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception:
                log.exception("request log write failed; %d rows kept for the next flush", len(batch))
                self.pending = batch + self.pending
                await asyncio.sleep(1.0)

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        import psycopg

        if not hasattr(self, "_db_url"):
            self._db_url = database_url(load_settings())
        with psycopg.connect(self._db_url) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO inference_requests (request_id, pipeline, model_version, entity_id, features, score,"
                " latency_ms, status, error, shadow) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                rows,
            )

    async def flush(self) -> int:
        """Write what is pending now (for tests and shutdown); returns the rows written."""
        batch, self.pending = self.pending, []
        if batch:
            await asyncio.to_thread(self._write, batch)
        return len(batch)


def build_app(args: dict[str, Any]) -> Any:
    """The application for `args` (a `ServingArgs` dict): `serve run serving.app:build_app`."""
    parsed = ServingArgs.model_validate(args)
    if not parsed.versions:
        champion = VersionConfig(version=champion_version(load_settings(), parsed.pipeline), weight=100.0)
        parsed = parsed.model_copy(update={"versions": [champion]})
    # Constructor arguments never change with weights or batching (a change there would restart
    # replicas); what does change is `user_config`, applied by `reconfigure` in place.
    static = parsed.model_dump(
        include={"pipeline", "model_name", "entity_key", "features", "api_keys_env", "online_features", "replica_cpus"}
    )
    batching = parsed.model_dump(include={"max_batch_size", "batch_wait_timeout_s"})
    options = {"ray_actor_options": {"num_cpus": parsed.replica_cpus}, "num_replicas": parsed.replicas}
    # Serve's default of 5 ongoing requests per replica would cap every batch at 5 and queue the
    # rest behind the proxy's backoff: a version admits two full batches, the (async) ingress many.
    per_version = max(16, 2 * parsed.max_batch_size)
    versions = {
        f"v{v.version}": ModelVersion.options(  # type: ignore[attr-defined]
            name=f"model_v{v.version}", user_config=batching, max_ongoing_requests=per_version, **options
        ).bind(static, v.version)
        for v in parsed.versions
    }
    ingress = Ingress.options(  # type: ignore[attr-defined]
        name="ingress", user_config=parsed.model_dump(mode="json"), max_ongoing_requests=INGRESS_ONGOING, **options
    )
    return ingress.bind(static, **versions)
