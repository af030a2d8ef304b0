"""The typed records of the hot path: what a request carries from the parser to the request log.

    bytes ─► Instance (judged: features within the contract, its place in the request)
          ─► a version answers each with Scored or Refused (or raises FeaturesUnavailable)
          ─► Served (the instance, the version that answered, its Scored result)
          ─► LogRow (one row of `inference_requests`: its fields are the table's columns, in order)

No outcome travels in a dict key: a refused instance is a `Refused`, an online-store outage is an
exception (`serving.online.FeaturesUnavailable`), an instance nobody could score is `None` from
the hedging. Pure: no I/O.
"""

from __future__ import annotations

import math
import operator
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a predict request, judged against the contract."""

    entity_id: str | int
    features: dict[str, Any]
    position: int = 0  # its place in the request (one entity may be asked for twice)
    off_contract: str | None = None  # why it is scored though outside the contract, else None


@dataclass(frozen=True, slots=True)
class Scored:
    """A version's answer for one instance."""

    score: float
    features: dict[str, Any]  # the row the model scored (request-time and online features)
    embedding: np.ndarray | None = None  # the model's `embedding` output for the row, where it has one
    label: str | None = None  # a multiclass model's predicted class (`score` is its probability); a binary
    # model's decision ("1": `score` at or above its threshold, else "0")
    probabilities: dict[str, float] | None = None  # a multiclass model's every class's probability


@dataclass(frozen=True, slots=True)
class Refused:
    """An instance the model cannot score: inputs absent, or values it cannot take (the client's
    fault: a 422, never counted against the version)."""

    absent: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()

    def message(self) -> str:
        """What is wrong, in one line. Pure."""
        parts = [f"missing features {list(self.absent)}"] if self.absent else []
        return "; ".join([*parts, *self.invalid])


Result = Scored | Refused


@dataclass(frozen=True, slots=True)
class Served:
    """An instance the client was answered for: the version that scored it and its result."""

    instance: Instance
    version: int
    result: Scored

    def answer(self) -> dict[str, Any]:
        """The instance's prediction in the response body. Pure."""
        out: dict[str, Any] = {
            "entity_id": self.instance.entity_id,
            "version": self.version,
            "score": self.result.score,
        }
        if self.result.probabilities is not None:  # a multiclass model: its class, and every class's probability
            out["class"] = self.result.label
            out["probabilities"] = self.result.probabilities
        elif self.result.label is not None:  # a binary model: its decision at its own threshold
            out["class"] = int(self.result.label)
        return out


@dataclass(frozen=True, slots=True)
class LogRow:
    """One row of `inference_requests`; the field order is the column order of the COPY."""

    request_id: uuid.UUID
    pipeline: str
    model_version: int
    entity_id: str
    features: dict[str, Any] | str  # JSON text once serialized for the COPY
    score: float | None
    latency_ms: float
    status: str  # ok | error
    error: str | None
    shadow: bool
    created_at: datetime
    predicted_class: str | None = None  # a multiclass model's (with `probabilities`), a binary one's decision
    probabilities: list[float] | None = None  # in the classes' order, as the model answers them
    position: int = 0  # the instance's place in its request
    off_contract: str | None = None  # why a scored instance is outside the contract (feedback skips it)
    key_id: str | None = None  # the serving key that asked (`serving_keys.id`, or `bootstrap`)

    def values(self) -> tuple[Any, ...]:
        """The row as COPY writes it, in `COLUMNS` order. Pure."""
        return _VALUES(self)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LogRow))
_VALUES = operator.attrgetter(*COLUMNS)


def storable_features(features: dict[str, Any]) -> dict[str, Any]:
    """The features as the log stores them: a non-finite number (a NaN from the online store)
    becomes null, as JSON has no NaN. Pure; returns the same dict when nothing changes."""
    for value in features.values():
        if type(value) is float and not math.isfinite(value):
            return {k: None if type(v) is float and not math.isfinite(v) else v for k, v in features.items()}
    return features


def log_row(
    request_id: uuid.UUID,
    pipeline: str,
    version: int,
    inst: Instance,
    result: Scored | None,
    latency_ms: float,
    status: str,
    reason: str | None,
    shadow: bool,
    key_id: str | None = None,
) -> LogRow:
    """The request log's row of one answer: the features the version scored (the request's where
    it scored none), made storable. Pure but for the clock."""
    named = result.probabilities if result is not None else None
    return LogRow(
        request_id=request_id,
        pipeline=pipeline,
        model_version=version,
        entity_id=str(inst.entity_id),
        features=storable_features(result.features if result is not None else inst.features),
        score=result.score if result is not None else None,
        latency_ms=latency_ms,
        status=status,
        error=reason,
        shadow=shadow,
        created_at=datetime.now(UTC),
        predicted_class=result.label if result is not None else None,
        probabilities=list(named.values()) if named else None,
        position=inst.position,
        off_contract=inst.off_contract,
        key_id=key_id,
    )
