"""Model versions as the ingress calls them: `await version.predict(instances)`.

A `LocalVersion` scores in the calling process: its ONNX Runtime session behind a greedy
batcher, and one online-feature lookup per batch for the instances that did not bring every
feature, awaited on the event loop (`serving.online`); the model runs in a worker thread unless it
is measured to score a batch in a fraction of a millisecond. The ingress holds one per served
version (one hop). A version that needs resources of its own (a GPU replica, another node) runs
as a `ModelVersion` deployment around the same `LocalVersion`, and the ingress calls it through a `RemoteVersion`.

`predict` answers `{"version", "scores", "features"}` (and `"embeddings"`, the rows' vectors, for
a model with an `embedding` output: the ingress writes them into the version's vector space; and
`"classes"` and `"probabilities"`, each row's class and `{class: probability}`, for a multiclass
model), or
`{"missing": {entity: [features]}, "invalid": {entity: [reasons]}}` when some instance lacks
features or brings a value that is no number for a numeric input (the ingress answers 422: the
client's fault, never the version's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.core.settings import Settings
from pipelines.io.registry import load_onnx_model
from pipelines.ml.model import CLASS, CLASSES_KEY, EMBEDDING, PROBABILITIES, onnx_session
from serving.batching import GreedyBatcher
from serving.online import OnlineFeatures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    score: float
    features: dict[str, Any]
    embedding: np.ndarray | None = None  # the model's `embedding` output for the row, where it has one
    label: str | None = None  # a multiclass model's predicted class (`score` is its probability)
    probabilities: dict[str, float] | None = None  # and every class's probability


@dataclass(frozen=True)
class Missing:
    """An instance the model cannot score: inputs absent, or values that are no number."""

    absent: list[str]
    invalid: list[str] = field(default_factory=list)


def entity_problem(key_is_int: bool, entity_id: str | int) -> str | None:
    """Why an entity id cannot be looked up under an integer join key, or None. Pure."""
    if not key_is_int or isinstance(entity_id, int):
        return None
    try:
        int(str(entity_id))
    except ValueError:
        return f"entity_id: not an integer ({entity_id!r})"
    return None


def not_numbers(inputs: Sequence[tuple[str, str]], row: dict[str, Any]) -> list[str]:
    """Why the numeric inputs of a row cannot be fed ('x: not a number ...'), none if they can: a
    number (not a boolean, not a string) or null. The ingress has judged request-time features
    against the contract already; this guards what the online store returned. Pure."""
    bad = []
    for name, kind in inputs:
        value = row.get(name)
        if kind == "tensor(string)" or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            bad.append(f"{name}: not a number ({value!r})")
    return bad


def onnx_feed(inputs: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """ONNX Runtime's feed for rows of raw columns: one [n, 1] tensor per input, strings for
    `tensor(string)` inputs, float32 otherwise. A null is fed as every family was trained to
    read a missing value: NaN for a number, the empty string for a category (unseen). Pure."""
    feed = {}
    for name, kind in inputs:
        values = [r[name] for r in rows]
        if kind == "tensor(string)":
            feed[name] = np.array(["" if v is None else str(v) for v in values], dtype=object).reshape(-1, 1)
        else:
            feed[name] = np.array(values, dtype=np.float32).reshape(-1, 1)  # None reads as NaN
    return feed


def gpu_fallback(gpus: float, providers: list[str]) -> str | None:
    """Why a replica given a GPU scores on the CPU, or None. Pure."""
    if gpus <= 0 or (providers and providers[0] == "CUDAExecutionProvider"):
        return None
    return (
        f"serving.gpus is {gpus:g} but ONNX Runtime scores with {providers[0] if providers else 'no provider'}: "
        "scoring on the CPU (install onnxruntime-gpu, the `gpu` image variant, on GPU workers)"
    )


def merge_features(
    names: Sequence[str],
    instance: dict[str, Any],
    online: dict[str, Any] | None,
    nullable: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], list[str]]:
    """An instance's input row (its own features override the online store's) and the names of
    the inputs missing from it: absent from both, or null where the contract does not allow a
    null (a null of a `nullable` feature is scored as a missing value). Pure."""
    row = {**(online or {}), **instance.get("features", {})}
    return row, [n for n in names if (row.get(n) is None and n not in nullable) or n not in row]


def answer(version: int, results: Sequence[Scored | Missing], instances: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The reply of `predict` from per-instance results. Pure."""
    refused = {str(i["entity_id"]): r for i, r in zip(instances, results, strict=True) if isinstance(r, Missing)}
    if refused:
        return {
            "missing": {e: r.absent for e, r in refused.items() if r.absent},
            "invalid": {e: r.invalid for e, r in refused.items() if r.invalid},
        }
    scored = [r for r in results if isinstance(r, Scored)]
    out = {"version": version, "scores": [r.score for r in scored], "features": [r.features for r in scored]}
    if scored and scored[0].embedding is not None:
        out["embeddings"] = [r.embedding for r in scored]
    if scored and scored[0].label is not None:
        out["classes"] = [r.label for r in scored]
        out["probabilities"] = [r.probabilities for r in scored]
    return out


def model_classes(session: Any) -> list[str]:
    """A multiclass model's class names, in the order of its `probabilities` (its metadata);
    empty for any other model."""
    import json

    if CLASS not in {o.name for o in session.get_outputs()}:
        return []
    return list(json.loads(session.get_modelmeta().custom_metadata_map[CLASSES_KEY]))


INLINE_BUDGET_S = 0.0005
"""A batch whose model has scored in less than this (on average) runs on the event loop."""


class LocalVersion:
    """One registered version scored in this process."""

    def __init__(
        self,
        version: int,
        session: Any,
        online: OnlineFeatures | None,
        max_batch_size: int,
        nullable: frozenset[str] = frozenset(),
    ) -> None:
        self.version = version
        self.nullable = nullable  # the features whose null the model scores (the contract's `nullable`)
        self.session = session
        self.inputs = [(i.name, i.type) for i in session.get_inputs()]
        self.names = [name for name, _ in self.inputs]
        self.has_embedding = any(o.name == EMBEDDING for o in session.get_outputs())
        self.classes = model_classes(session)
        self.wants_embedding: Callable[[int], bool] = lambda version: True  # the ingress: only while a space takes it
        self.online = online
        self.score_s: float | None = None  # moving average of the model's time per batch
        self.batcher: GreedyBatcher[dict[str, Any], Scored | Missing] = GreedyBatcher(
            self.run_batch, max_batch_size, inline=self.fast_enough, prepare=self.attach_online if online else None
        )

    @classmethod
    def load(
        cls,
        settings: Settings,
        static: dict[str, Any],
        version: int,
        online: OnlineFeatures | None,
        max_batch_size: int,
        nullable: frozenset[str] = frozenset(),
    ) -> LocalVersion:
        """Load the version's ONNX model from the registry (blocking: call it in a thread), with as
        many ONNX Runtime threads as the CPUs the replica was given, at least one."""
        model = load_onnx_model(settings, static["pipeline"], static["model_name"], version)
        session = onnx_session(model, threads=max(1, round(static["replica_cpus"])))
        fallback = gpu_fallback(static.get("replica_gpus", 0.0), session.get_providers())
        if fallback:
            log.warning("v%s: %s", version, fallback)
        return cls(version, session, online, max_batch_size, nullable)

    async def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        return answer(self.version, await self.batcher.submit_many(instances), instances)

    def needs_lookup(self, instance: dict[str, Any]) -> bool:
        """Whether an instance leaves out a feature (a null sent is a value: the client says it is missing)."""
        features = instance.get("features", {})
        return any(f not in features for f in self.names)

    def fast_enough(self, instances: Sequence[dict[str, Any]]) -> bool:
        """Whether a batch may run on the event loop: a model measured to score a batch well
        under a millisecond (the online lookup is already done, awaited)."""
        return self.score_s is not None and self.score_s <= INLINE_BUDGET_S

    async def attach_online(self, instances: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The instances, those that need it with their online features (`"online"`): one lookup."""
        need = [n for n, i in enumerate(instances) if self.needs_lookup(i)]
        out = list(instances)
        if need and self.online is not None:
            problems = {n: entity_problem(self.online.key_is_int, instances[n]["entity_id"]) for n in need}
            for n, problem in problems.items():
                if problem:  # the client's id, not the store's fault: no lookup, a 422
                    out[n] = {**instances[n], "entity_problem": problem}
            need = [n for n in need if not problems[n]]
            found = await self.online.lookup([instances[n]["entity_id"] for n in need]) if need else []
            for n, features in zip(need, found, strict=True):
                out[n] = {**instances[n], "online": features}
        return out

    def run_batch(self, instances: Sequence[dict[str, Any]]) -> list[Scored | Missing]:
        """Score a batch (online features already attached)."""
        results: list[Scored | Missing] = []
        complete: list[tuple[int, dict[str, Any]]] = []
        for n, inst in enumerate(instances):
            if inst.get("entity_problem"):
                results.append(Missing([], [inst["entity_problem"]]))
                continue
            row, absent = merge_features(self.names, inst, inst.get("online"), self.nullable)
            invalid = not_numbers(self.inputs, row)
            results.append(Missing(absent, invalid))
            if not absent and not invalid:
                complete.append((n, {name: row[name] for name in self.names}))
        if complete:
            started = time.perf_counter()
            outputs = ["score", PROBABILITIES, CLASS] if self.classes else ["score"]
            embed = self.has_embedding and self.wants_embedding(self.version)
            feed = onnx_feed(self.inputs, [row for _, row in complete])
            scores, *rest = self.session.run([*outputs, EMBEDDING] if embed else outputs, feed)
            took = time.perf_counter() - started
            self.score_s = took if self.score_s is None else 0.9 * self.score_s + 0.1 * took
            for j, ((n, row), score) in enumerate(zip(complete, scores, strict=True)):
                label, named = None, None
                if self.classes:  # rest: probabilities, class (then the embedding)
                    label, named = str(rest[1][j]), dict(zip(self.classes, map(float, rest[0][j]), strict=True))
                vector = rest[-1][j] if embed else None
                results[n] = Scored(float(np.asarray(score).reshape(-1)[0]), row, vector, label, named)
        return results

    def resize(self, max_batch_size: int) -> None:
        self.batcher.max_batch_size = max_batch_size


class RemoteVersion:
    """A version in a deployment of its own, through its Serve handle."""

    def __init__(self, version: int, handle: Any) -> None:
        self.version = version
        self.handle = handle

    async def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = await self.handle.predict.remote(instances)
        return out
