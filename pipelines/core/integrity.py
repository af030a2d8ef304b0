"""Artifact integrity: the sha256 of an artifact recorded when it is written and checked before it
is read, so a file swapped in storage is refused, never loaded. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pipelines.core.errors import ArtifactRefused


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(data: bytes, expected: str | None, name: str) -> bytes:
    """`data` when its sha256 is `expected`; `ArtifactRefused` naming `name` otherwise (or when no
    digest was recorded for it)."""
    if expected is None:
        raise ArtifactRefused(
            f"{name}: no sha256 was recorded when it was written (an artifact of an older version, or one "
            "not written by an mlcycle step): refused; run the step that writes it again"
        )
    actual = sha256_hex(data)
    if actual != expected:
        raise ArtifactRefused(
            f"{name}: its sha256 is {actual}, not the {expected} recorded when it was written "
            "(changed or swapped in storage): refused"
        )
    return data


def check_files(actual: Mapping[str, str], recorded: Mapping[str, str], name: str) -> None:
    """Every file of a model (relative path -> sha256) as recorded at registration: none missing,
    none changed, none added. `ArtifactRefused` naming `name` and the files otherwise."""
    changed = sorted(p for p in recorded if p in actual and actual[p] != recorded[p])
    missing = sorted(set(recorded) - set(actual))
    added = sorted(set(actual) - set(recorded))
    found = (("changed", changed), ("missing", missing), ("added", added))
    problems = "; ".join(f"{label} {files}" for label, files in found if files)
    if problems:
        raise ArtifactRefused(f"{name}: its files differ from those recorded at registration ({problems}): refused")
