"""SeaweedFS as the Compose stack runs it: JWT-signed volume and filer access.

The stack's script started with the JWT keys the Compose service sets (security.toml's keys, from
the environment): the S3 API (which signs its own tokens) reads and writes as before, while a
write or read straight to the filer or a volume server without a signed token is refused.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.services import S3Server, seaweedfs

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yaml"


def _jwt_env() -> dict[str, str]:
    """The JWT variables of the Compose service, each with a fresh key."""
    env = yaml.safe_load(COMPOSE.read_text())["services"]["seaweedfs"]["environment"]
    names = [k for k in env if k.startswith("WEED_JWT_")]
    assert len(names) == 4, names  # volume and filer, writes and reads
    return {k: secrets.token_urlsafe(32) for k in names}


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs-jwt"), extra_env=_jwt_env()) as server:
        yield server


def _status(url: str, method: str, body: bytes | None = None) -> int:
    import httpx

    return httpx.request(method, url, content=body, timeout=10).status_code


def test_s3_reads_and_writes_while_unsigned_filer_and_volume_access_is_refused(signed: S3Server) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=signed.endpoint,
        aws_access_key_id=signed.access_key,
        aws_secret_access_key=signed.secret_key,
        region_name="us-east-1",
    )
    s3.put_object(Bucket=signed.bucket, Key="run/model.bin", Body=b"w" * 300_000)
    assert s3.get_object(Bucket=signed.bucket, Key="run/model.bin")["Body"].read() == b"w" * 300_000
    upload = s3.create_multipart_upload(Bucket=signed.bucket, Key="run/big.bin")
    part = s3.upload_part(
        Bucket=signed.bucket, Key="run/big.bin", PartNumber=1, UploadId=upload["UploadId"], Body=b"p" * 1024
    )
    s3.complete_multipart_upload(
        Bucket=signed.bucket,
        Key="run/big.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert s3.head_object(Bucket=signed.bucket, Key="run/big.bin")["ContentLength"] == 1024

    filer = f"http://127.0.0.1:{signed.ports['FILER']}/buckets/{signed.bucket}"
    assert _status(f"{filer}/run/model.bin", "PUT", b"swapped") == 401  # no swapped artifact
    assert _status(f"{filer}/run/model.bin", "GET") == 401
    assert s3.get_object(Bucket=signed.bucket, Key="run/model.bin")["Body"].read() == b"w" * 300_000
    master = f"http://127.0.0.1:{signed.ports['MASTER']}"
    import httpx

    assigned = httpx.get(f"{master}/dir/assign", timeout=10).json()
    assert _status(f"http://{assigned['url']}/{assigned['fid']}", "PUT", b"planted") == 401
