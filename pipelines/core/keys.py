"""Serving keys per pipeline: what a key is, how it is stored and how a presented one is judged. Pure
but for the random secret.

A key is a 256-bit random secret (`mlk_` + 43 URL-safe characters), shown once when it is made.
The platform keeps only its SHA-256 (a fast hash is right for a high-entropy secret: there is no
dictionary to try), its id, a label and the pipelines it opens. A serving replica holds the live
keys as a dict from hash to `Grant` and judges a request with one hash and one dict lookup; the
bootstrap keys of `MLCYCLE_SERVING_API_KEYS` are grants of every pipeline, under the id
`bootstrap`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipelines.core.errors import InvalidArgument
from pipelines.core.spec.base import _NAME

BOOTSTRAP_ID = "bootstrap"
"""The key id the request log records for a key of `MLCYCLE_SERVING_API_KEYS`."""
PREFIX = "mlk_"
SECRET_BYTES = 32  # 256 bits
NAME_RE = re.compile(r"^[\w .:@/-]{0,80}$")
PIPELINE_RE = re.compile(_NAME)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a live key opens: its id, and its pipelines (None: every pipeline, the bootstrap key)."""

    key_id: str
    pipelines: frozenset[str] | None
    digest: str = ""  # the key's hash, compared again in constant time after the lookup


def new_secret() -> str:
    """A fresh key: 256 random bits, URL-safe."""
    return PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def new_key_id() -> str:
    """A key's public id (what lists, logs and revokes name it by); nothing of the secret."""
    return "key_" + secrets.token_hex(6)


def key_hash(secret: str) -> str:
    """The stored form of a key: its SHA-256, hex. Pure."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_request(name: str, pipelines: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    """A key's label and pipelines as given to `keys create`, checked (sorted, no duplicates). Pure."""
    wanted = tuple(sorted(set(pipelines)))
    if not wanted:
        raise InvalidArgument("a key opens at least one pipeline (--pipeline)")
    bad = [p for p in wanted if not PIPELINE_RE.match(p)]
    if bad:
        raise InvalidArgument(f"not a pipeline name: {bad[0]!r}")
    if not NAME_RE.match(name):
        raise InvalidArgument("a key's --name is at most 80 letters, digits, spaces or . : @ / - _")
    return name, wanted


def grants(bootstrap: Iterable[str], rows: Iterable[tuple[str, str, Iterable[str]]]) -> dict[str, Grant]:
    """The live keys of a replica: the bootstrap secrets (every pipeline) and the table's
    unrevoked `(id, hash, pipelines)` rows, by hash. Pure."""
    table = {h: Grant(key_id, frozenset(pipes), h) for key_id, h, pipes in rows}
    for secret in bootstrap:
        digest = key_hash(secret)
        table[digest] = Grant(BOOTSTRAP_ID, None, digest)
    return table


def bootstrap_secrets(value: str) -> list[str]:
    """The bootstrap keys of a comma-separated `MLCYCLE_SERVING_API_KEYS`. Pure."""
    return [k.strip() for k in value.split(",") if k.strip()]


def judge(table: Mapping[str, Grant], presented: str, pipeline: str) -> tuple[int, str | None]:
    """`(200, key id)` for a live key that opens `pipeline`; `(403, key id)` for a live key of
    other pipelines; `(401, None)` for no key, an unknown or a revoked one. One hash, one dict
    lookup, and the digests compared in constant time. Pure."""
    if not presented:
        return 401, None
    digest = key_hash(presented)
    grant = table.get(digest)
    if grant is None or not hmac.compare_digest(grant.digest, digest):
        return 401, None
    if grant.pipelines is not None and pipeline not in grant.pipelines:
        return 403, grant.key_id
    return 200, grant.key_id
