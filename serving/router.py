"""Weighted, sticky routing by a hash of the entity id. Pure.

Each entity maps to a fixed point in [0, 1). Versions own consecutive intervals, the newest
first, so when a canary's weight grows from 5 % to 25 % the entities already on it stay on it.
"""

from __future__ import annotations

import hashlib


def bucket(entity_id: str, salt: str = "") -> float:
    """A stable point in [0, 1) for an entity."""
    digest = hashlib.blake2b(f"{salt}:{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def version_for(entity_id: str, weights: dict[int, float], salt: str = "") -> int:
    """The version that serves an entity, given percentage weights per version."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        raise ValueError("no version has traffic")
    point = bucket(entity_id, salt) * total
    edge = 0.0
    ordered = sorted(((v, w) for v, w in weights.items() if w > 0), key=lambda vw: -vw[0])
    for version, weight in ordered:
        edge += weight
        if point < edge:
            return version
    return ordered[-1][0]
