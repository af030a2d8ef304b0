"""Model versions as the ingress calls them: `await version.predict(instances)`.

A `LocalVersion` scores in the calling process: its ONNX Runtime session behind a greedy
batcher, and one online-feature lookup per batch for the instances that did not bring every
feature, awaited on the event loop (`serving.online`); the model runs in a worker thread unless it
is measured to score a batch in a fraction of a millisecond. The ingress holds one per served
version (one hop). A version that needs resources of its own (a GPU replica, another node) runs
as a `ModelVersion` deployment around the same `LocalVersion`, and the ingress calls it through a `RemoteVersion`.

`predict` answers a `Scored` or a `Refused` (`serving.records`) per instance, in order: refused
when an instance lacks features or brings a value the model cannot take (the ingress answers 422:
the client's fault, never the version's). An online-store outage raises `FeaturesUnavailable`.
The model's outputs are read by name (`score`; a multiclass model's `probabilities` and `class`;
`embedding` where it has one); a binary model's decision is `score >= threshold`, the threshold its
graph's metadata records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipelines.core.settings import Settings
from pipelines.io.registry import load_onnx_model
from pipelines.ml.imbalance import session_threshold
from pipelines.ml.model import CLASS, CLASSES_KEY, EMBEDDING, PROBABILITIES, onnx_session
from serving.batching import GreedyBatcher
from serving.online import OnlineFeatures, known
from serving.records import Instance, Refused, Result, Scored

log = logging.getLogger(__name__)


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
    features: dict[str, Any],
    online: dict[str, Any] | None,
    nullable: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], list[str]]:
    """An instance's input row (its own features override the online store's) and the names of
    the inputs missing from it: absent from both, or null where the contract does not allow a
    null (a null of a `nullable` feature is scored as a missing value). Pure."""
    row = {**(online or {}), **features}
    return row, [n for n in names if (row.get(n) is None and n not in nullable) or n not in row]


class Pending:
    """An instance on its way through a batch: the online features attached, or why it cannot be looked up."""

    __slots__ = ("instance", "online", "problem")

    def __init__(self, instance: Instance, online: dict[str, Any] | None = None, problem: str | None = None) -> None:
        self.instance = instance
        self.online = online
        self.problem = problem


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
        # a binary model's decision threshold (its graph's metadata): each answer's `class`
        self.threshold = None if self.classes else session_threshold(session)
        self.wants_embedding: Callable[[int], bool] = lambda version: True  # the ingress: only while a space takes it
        self.online = online
        self.score_s: float | None = None  # moving average of the model's time per batch
        self.outputs = ["score", PROBABILITIES, CLASS] if self.classes else ["score"]
        self.batcher: GreedyBatcher[Pending, Result] = GreedyBatcher(
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
        fallback = gpu_fallback(static.get("gpus", 0.0), session.get_providers())
        if fallback:
            log.warning("v%s: %s", version, fallback)
        return cls(version, session, online, max_batch_size, nullable)

    async def predict(self, instances: list[Instance]) -> list[Result]:
        """A `Scored` or `Refused` per instance, in order; `FeaturesUnavailable` when the online
        store cannot be read."""
        return await self.batcher.submit_many([Pending(i) for i in instances])

    def needs_lookup(self, instance: Instance) -> bool:
        """Whether an instance leaves out a feature (a null sent is a value: the client says it is missing)."""
        return any(f not in instance.features for f in self.names)

    def fast_enough(self, batch: Sequence[Pending]) -> bool:
        """Whether a batch may run on the event loop: a model measured to score a batch well
        under a millisecond (the online lookup is already done, awaited)."""
        return self.score_s is not None and self.score_s <= INLINE_BUDGET_S

    async def attach_online(self, batch: Sequence[Pending]) -> list[Pending]:
        """The batch, the instances that need it with their online features: one lookup."""
        need = [p for p in batch if self.needs_lookup(p.instance)]
        if need and self.online is not None:
            for p in need:  # the client's id, not the store's fault: no lookup, a 422
                p.problem = entity_problem(self.online.key_is_int, p.instance.entity_id)
            need = [p for p in need if p.problem is None]
            found = await self.online.lookup([p.instance.entity_id for p in need]) if need else []
            for p, features in zip(need, found, strict=True):
                p.online = known(features)
        return list(batch)

    def run_batch(self, batch: Sequence[Pending]) -> list[Result]:
        """Score a batch (online features already attached)."""
        results: list[Result] = []
        complete: list[tuple[int, dict[str, Any]]] = []
        for n, p in enumerate(batch):
            if p.problem:
                results.append(Refused(invalid=(p.problem,)))
                continue
            row, absent = merge_features(self.names, p.instance.features, p.online, self.nullable)
            invalid = not_numbers(self.inputs, row)
            results.append(Refused(tuple(absent), tuple(invalid)))
            if not absent and not invalid:
                complete.append((n, {name: row[name] for name in self.names}))
        if complete:
            started = time.perf_counter()
            embed = self.has_embedding and self.wants_embedding(self.version)
            names = [*self.outputs, EMBEDDING] if embed else self.outputs
            out = dict(
                zip(names, self.session.run(names, onnx_feed(self.inputs, [r for _, r in complete])), strict=True)
            )
            took = time.perf_counter() - started
            self.score_s = took if self.score_s is None else 0.9 * self.score_s + 0.1 * took
            scores = np.asarray(out["score"]).reshape(-1)
            for j, (n, row) in enumerate(complete):
                label, named = None, None
                if self.classes:
                    label = str(out[CLASS][j])
                    named = dict(zip(self.classes, map(float, out[PROBABILITIES][j]), strict=True))
                elif self.threshold is not None:
                    label = "1" if scores[j] >= self.threshold else "0"
                vector = out[EMBEDDING][j] if embed else None
                results[n] = Scored(float(scores[j]), row, vector, label, named)
        return results

    def resize(self, max_batch_size: int) -> None:
        self.batcher.max_batch_size = max_batch_size


class RemoteVersion:
    """A version in a deployment of its own, through its Serve handle."""

    def __init__(self, version: int, handle: Any) -> None:
        self.version = version
        self.handle = handle

    async def predict(self, instances: list[Instance]) -> list[Result]:
        out: list[Result] = await self.handle.predict.remote(instances)
        return out
