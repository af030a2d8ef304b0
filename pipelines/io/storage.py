"""One small storage adapter for run-scoped artifacts, on a local path or on S3.

Keys are relative, `/`-separated paths such as `churn/<run_id>/ingest/snapshot.parquet`. Every
write is atomic: a local write goes to a temporary name in the same directory and is renamed; an
S3 write is one PUT or one completed multipart upload, so a reader sees the whole object or none.
A retried step therefore never sees half a file.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from pipelines.core.errors import SettingsError
from pipelines.core.settings import Settings

if TYPE_CHECKING:
    import pandas as pd


Stats = list[tuple[str, int, datetime]]
"""`(key, bytes, last modified)` of objects."""


def run_key(pipeline: str, run_id: str, step: str, name: str) -> str:
    """The key of one artifact of one step of one run. Pure."""
    return f"{pipeline}/{run_id}/{step}/{name}"


def _check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts):
        raise ValueError(f"invalid storage key {key!r}: relative, no '.' or '..' segments")
    return key


class Storage(Protocol):
    """Where artifacts live. `uri()` names an object so other tools (Feast, MLflow) can read it."""

    def uri(self, key: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> str: ...
    def write_stream(self, key: str, stream: BinaryIO) -> str: ...
    def download(self, key: str, path: Path) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def stat(self, prefix: str) -> Stats: ...
    def delete(self, keys: Sequence[str]) -> None: ...


class LocalStorage:
    """Artifacts under a local directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> str:
        return self.write_stream(key, io.BytesIO(data))

    def write_stream(self, key: str, stream: BinaryIO) -> str:
        """The object from a stream, copied a buffer at a time (memory holds no whole file)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                shutil.copyfileobj(stream, fh, 1 << 20)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(path)

    def download(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.endswith(".tmp")
        )

    def stat(self, prefix: str) -> Stats:
        """`(key, bytes, last modified)` of every object under `prefix`."""
        out = []
        for key in self.list(prefix):
            st = self._path(key).stat()
            out.append((key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return out

    def delete(self, keys: Sequence[str]) -> None:
        """Remove objects (a missing one is no error), then the folders they leave empty."""
        parents: set[Path] = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parents.update(p for p in path.parents if p.is_relative_to(self.root) and p != self.root)
        for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


class S3Storage:
    """Artifacts under `s3://bucket/prefix` (any S3 API: AWS, SeaweedFS, MinIO).

    The client is created lazily; credentials come from the standard AWS environment variables.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region)
        return self._client

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def read_bytes(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        data: bytes = body.read()
        return data

    def write_bytes(self, key: str, data: bytes) -> str:
        # upload_fileobj switches to multipart above 8 MiB; the object appears only on completion.
        return self.write_stream(key, io.BytesIO(data))

    def write_stream(self, key: str, stream: BinaryIO) -> str:
        """The object from a stream, uploaded in parts (memory holds a part, not the file)."""
        self.client.upload_fileobj(stream, self.bucket, self._key(key))
        return self.uri(key)

    def download(self, key: str, path: Path) -> None:
        self.client.download_file(self.bucket, self._key(key), str(path))

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) if prefix else self.prefix
        strip = f"{self.prefix}/" if self.prefix else ""
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            out += [o["Key"][len(strip) :] for o in page.get("Contents", [])]
        return sorted(out)

    def stat(self, prefix: str) -> Stats:
        """`(key, bytes, last modified)` of every object under `prefix`."""
        full = self._key(prefix) if prefix else self.prefix
        strip = f"{self.prefix}/" if self.prefix else ""
        out: Stats = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            out += [(o["Key"][len(strip) :], int(o["Size"]), o["LastModified"]) for o in page.get("Contents", [])]
        return sorted(out)

    def delete(self, keys: Sequence[str]) -> None:
        """Remove objects, 1,000 per request (S3's limit); a missing one is no error."""
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
            if answer.get("Errors"):
                raise OSError(f"S3 refused to delete {len(answer['Errors'])} object(s): {answer['Errors'][:3]}")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`). Pure."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if len(bucket) < 3:
        raise ValueError(f"invalid S3 bucket in {uri!r}: at least 3 characters")
    return bucket, key


def open_storage(settings: Settings) -> Storage:
    """The artifact storage of this installation."""
    root = settings.artifact_uri
    if root.startswith("s3://"):
        bucket, prefix = parse_s3_uri(root)
        return S3Storage(bucket, prefix, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
    if "://" in root:
        raise SettingsError(f"MLCYCLE_ARTIFACT_ROOT: unsupported scheme in {root!r} (a path or s3://)")
    return LocalStorage(root)


# ------------------------------------------------------------------------- typed helpers
def json_default(obj: Any) -> Any:
    """JSON for numpy scalars and arrays (as Python values) and anything else (as text)."""
    item = getattr(obj, "tolist", None)
    return item() if callable(item) else str(obj)


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (numpy's too) as None: JSON has no such numbers, and
    PostgreSQL's jsonb and Airflow's XCom refuse them (a step's outputs must be recordable). Pure."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    item = getattr(obj, "tolist", None)  # numpy scalars and arrays
    return finite_json(item()) if callable(item) and not isinstance(obj, str | bytes) else obj


def to_json(obj: Any, *, indent: int | None = None) -> str:
    return json.dumps(obj, indent=indent, sort_keys=True, default=json_default)


@contextmanager
def local_file(storage: Storage, key: str) -> Iterator[Path]:
    """A path on this machine to read an object from (seekable, as Parquet needs): the object's own
    file in a local storage, a temporary download of it (removed afterwards) from S3."""
    if isinstance(storage, LocalStorage):
        yield storage._path(key)
        return
    with tempfile.TemporaryDirectory(prefix="mlcycle-object-") as tmp:
        path = Path(tmp) / PurePosixPath(key).name
        storage.download(key, path)
        yield path


def upload_file(storage: Storage, key: str, path: Path) -> str:
    """A local file written as an object, streamed."""
    with path.open("rb") as fh:
        return storage.write_stream(key, fh)


def write_json(storage: Storage, key: str, obj: Any) -> str:
    return storage.write_bytes(key, to_json(obj, indent=2).encode())


def read_json(storage: Storage, key: str) -> Any:
    return json.loads(storage.read_bytes(key))


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """Deterministic Parquet bytes of a frame (same frame, same bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


def write_parquet(storage: Storage, key: str, df: pd.DataFrame) -> str:
    return storage.write_bytes(key, parquet_bytes(df))


def read_parquet(storage: Storage, key: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(key))).to_pandas()
