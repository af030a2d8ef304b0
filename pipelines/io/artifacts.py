"""Model artifacts in the run's storage with their sha256 in the platform database: recorded when
a step writes one (`write_artifact`), checked before a step reads one (`read_artifact`; a trial's
checkpoint and model keep theirs in the trial's attributes, `read_checked`). Whoever
can write the bucket cannot make a step load bytes it did not write: a changed, swapped or
unrecorded artifact is refused (`ArtifactRefused`, exit 3)."""

from __future__ import annotations

from pipelines.core.integrity import check_digest, sha256_hex
from pipelines.core.settings import Settings
from pipelines.io.db import connect
from pipelines.io.storage import Storage


def write_artifact(settings: Settings, storage: Storage, key: str, data: bytes) -> str:
    """Write `data` at `key` and record its sha256 (after the write: a write that fails leaves the
    digest of the last complete one). Returns the artifact's URI."""
    uri = storage.write_bytes(key, data)
    with connect(settings) as conn:
        conn.execute(
            "INSERT INTO artifact_digests (key, sha256, bytes) VALUES (%s, %s, %s)"
            " ON CONFLICT (key) DO UPDATE SET sha256 = excluded.sha256, bytes = excluded.bytes, written_at = now()",
            (key, sha256_hex(data), len(data)),
        )
    return uri


def recorded_digest(settings: Settings, key: str) -> str | None:
    with connect(settings) as conn:
        row = conn.execute("SELECT sha256 FROM artifact_digests WHERE key = %s", (key,)).fetchone()
    return str(row[0]) if row else None


def read_artifact(settings: Settings, storage: Storage, key: str) -> bytes:
    """The artifact at `key`, once its bytes match the sha256 recorded when it was written."""
    return read_checked(storage, key, recorded_digest(settings, key))


def read_checked(storage: Storage, key: str, expected: str | None) -> bytes:
    """The artifact at `key`, once its bytes match `expected` (a sha256 recorded out of the
    storage's reach: the platform database, a trial's attributes); `ArtifactRefused` naming it otherwise."""
    return check_digest(storage.read_bytes(key), expected, storage.uri(key))
