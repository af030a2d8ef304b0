"""Real services for the integration tests, started on 127.0.0.1 and stopped afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipelines.core.system import stop_processes


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(n: int, start: int = 20000) -> list[int]:
    """`n` distinct free ports p whose gRPC companions p + 10000 are free too (SeaweedFS's
    convention)."""
    import random

    rng = random.Random()
    picked: list[int] = []
    for _ in range(1000):
        p = rng.randrange(start, 30000)
        if p not in picked and _free(p) and _free(p + 10000):
            picked.append(p)
            if len(picked) == n:
                return picked
    raise RuntimeError("no free port pairs")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str


@contextmanager
def seaweedfs(data_dir: Path, bucket: str = "mlcycle-test") -> Iterator[S3Server]:
    """SeaweedFS (`weed mini`) with its S3 API on 127.0.0.1, credentials required."""
    weed = Path(sys.executable).parent / "weed"
    names = ("master", "volume", "filer", "s3", "admin", "webdav")
    ports = dict(zip(names, free_port_pairs(len(names)), strict=True))
    access, secret = "mlcycle-access", "mlcycle-secret-key-for-tests"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret, "S3_BUCKET": bucket}
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(weed),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-debug.port=0",
    ]
    argv += [f"-{name}.port={port}" for name, port in ports.items()]
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        _wait_for_bucket(endpoint, access, secret, bucket, proc, data_dir / "weed.log")
        yield S3Server(endpoint, access, secret, bucket)
    finally:
        stop_processes([proc], 15)
        log.close()


def _wait_for_bucket(
    endpoint: str,
    access: str,
    secret: str,
    bucket: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = 60.0,
) -> None:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret, region_name="us-east-1"
    )
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            client.head_bucket(Bucket=bucket)
            return
        except Exception as err:  # not up yet
            last = err
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout_s}s: {last}\n{log.read_text()[-3000:]}")


def docker_engine_running() -> bool:
    """A Docker client on PATH whose engine answers."""
    return (
        shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )


def ray_listeners(gcs_port: int) -> list[tuple[str, str, int]]:
    """(process, address, port) of every listening TCP socket of the Ray instance whose GCS is on
    `gcs_port`: its gcs_server and raylets (found by the port on their command line) and all their
    descendants (workers, Serve's proxy and its HAProxy, the dashboard agent)."""
    import psutil

    roots = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if any(f":{gcs_port}" in part or part == f"--gcs_server_port={gcs_port}" for part in (p.info["cmdline"] or []))
    ]
    procs = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in procs:
            out.append((procs[conn.pid].name(), conn.laddr.ip, conn.laddr.port))
    return sorted(set(out))
