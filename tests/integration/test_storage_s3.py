"""The S3 path of the storage adapter against a real S3 API (SeaweedFS) on 127.0.0.1."""

from __future__ import annotations

import os

import boto3
import pytest
from botocore.exceptions import ClientError

from pipelines.core.settings import Settings
from pipelines.io.storage import (
    S3Storage,
    local_file,
    open_storage,
    read_json,
    read_parquet,
    upload_file,
    write_json,
    write_parquet,
)
from tests.services import S3Server

pytestmark = pytest.mark.integration


def _storage(s3: S3Server, prefix: str) -> S3Storage:
    storage = open_storage(Settings(artifact_root=f"s3://{s3.bucket}/{prefix}", s3_endpoint_url=s3.endpoint))
    assert isinstance(storage, S3Storage)
    return storage


def test_round_trip_and_listing(s3: S3Server, churn_df) -> None:  # type: ignore[no-untyped-def]
    st = _storage(s3, "roundtrip")
    assert not st.exists("churn/r1/ingest/manifest.json")
    uri = write_json(st, "churn/r1/ingest/manifest.json", {"rows": 3})
    assert uri == f"s3://{s3.bucket}/roundtrip/churn/r1/ingest/manifest.json"
    assert st.exists("churn/r1/ingest/manifest.json")
    assert read_json(st, "churn/r1/ingest/manifest.json") == {"rows": 3}
    write_parquet(st, "churn/r1/ingest/snapshot.parquet", churn_df)
    assert read_parquet(st, "churn/r1/ingest/snapshot.parquet").equals(churn_df)
    assert st.list("churn/r1") == ["churn/r1/ingest/manifest.json", "churn/r1/ingest/snapshot.parquet"]


def test_large_objects_go_up_in_parts(s3: S3Server) -> None:
    st = _storage(s3, "multipart")
    data = os.urandom(20 * 1024 * 1024)  # above boto3's 8 MiB multipart threshold
    st.write_bytes("big.bin", data)
    head = st.client.head_object(Bucket=s3.bucket, Key="multipart/big.bin")
    assert "-" in head["ETag"]  # a multipart ETag: <md5>-<parts>
    assert st.read_bytes("big.bin") == data


def test_a_file_streams_up_and_reads_back_as_a_local_file(s3: S3Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A batch partition's way with objects: a local file uploaded as a stream, an object read
    back through a temporary local copy that is gone afterwards."""
    st = _storage(s3, "streams")
    src = tmp_path / "part.bin"
    src.write_bytes(os.urandom(9 * 1024 * 1024))
    assert upload_file(st, "churn/r1/batch/part-0.bin", src) == f"s3://{s3.bucket}/streams/churn/r1/batch/part-0.bin"
    with local_file(st, "churn/r1/batch/part-0.bin") as path:
        assert path.read_bytes() == src.read_bytes() and path != src
    assert not path.exists()


def test_wrong_credentials_are_refused(s3: S3Server) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id="intruder",
        aws_secret_access_key="wrong-secret",
        region_name="us-east-1",
    )
    st = S3Storage(s3.bucket, "refused", client=client)
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        st.write_bytes("x", b"data")
