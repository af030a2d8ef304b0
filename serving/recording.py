"""What the ingress records off the hot path: the request log's rows and the metrics of answered,
failed and shadowed instances (mixed into `serving.app.Ingress`, which holds the recorder)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from serving.config import ServingArgs
from serving.keys import KeyRing
from serving.records import Instance, Refused, Result, Scored, Served, log_row
from serving.telemetry import Recorder


class Recording:
    """The request log and metrics of the ingress's answers."""

    args: ServingArgs
    keys: KeyRing
    recorder: Recorder
    versions: dict[int, Any]

    def _record(self, request_id: uuid.UUID, served: list[Served], started: float) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        counts: dict[int, int] = {}
        for s in served:
            self._log(request_id, s.version, s.instance, s.result, elapsed, "ok", None, False)
            counts[s.version] = counts.get(s.version, 0) + 1
            # dual write: the entity's vector in the space of the version that scored it, while it has one
            if s.result.embedding is not None and self.recorder.log.takes_vectors(s.version):
                self.recorder.log.add_vector(s.version, str(s.instance.entity_id), s.result.embedding)
        for version, n in counts.items():
            self.recorder.metrics.count(version, n, "ok", False)
            self.recorder.metrics.observe(version, elapsed)
        self.recorder.touch()

    def _failed(
        self, request_id: uuid.UUID, version: int, instances: list[Instance], started: float, reason: str
    ) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        for inst in instances:
            self._log(request_id, version, inst, None, elapsed, "error", reason, False)
        self.recorder.metrics.count(version, len(instances), "error", False)
        self.recorder.touch()

    async def _shadow(self, version: int, instances: list[Instance], request_id: uuid.UUID, started: float) -> None:
        """The shadow version's answers, logged and never returned; a refusal or a failure is an
        error against it."""
        results: list[Result | None]
        try:
            results, failure = list(await self.versions[version].predict(instances)), None
        except Exception as err:
            results, failure = [None] * len(instances), repr(err)[:500]
        elapsed = (time.perf_counter() - started) * 1000
        bad = 0
        for inst, result in zip(instances, results, strict=True):
            if isinstance(result, Scored):
                self._log(request_id, version, inst, result, elapsed, "ok", None, True)
                continue
            bad += 1
            reason = result.message() if isinstance(result, Refused) else failure
            self._log(request_id, version, inst, None, elapsed, "error", reason, True)
        if bad < len(instances):
            self.recorder.metrics.count(version, len(instances) - bad, "ok", True)
        if bad:
            self.recorder.metrics.count(version, bad, "error", True)
        self.recorder.touch()

    def _log(
        self,
        request_id: uuid.UUID,
        version: int,
        inst: Instance,
        result: Scored | None,
        latency_ms: float,
        status: str,
        reason: str | None,
        shadow: bool,
    ) -> None:
        """Queue the request log's row: the features the version scored (the request's where it
        scored none), made storable (a NaN from the online store is logged as null)."""
        if not self.args.log_requests:
            return
        pipeline, key_id = self.args.pipeline, self.keys.asking.get()
        row = log_row(request_id, pipeline, version, inst, result, latency_ms, status, reason, shadow, key_id)
        self.recorder.log.add(row)
