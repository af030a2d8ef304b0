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
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.system import stop_processes


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Ports below Linux's ephemeral range (32768-60999), so that neither p nor p + 10000 can be taken
# by an outgoing connection between the check and the server's bind, and above Ray's worker ports
# (10002-19999).
PORTS = range(20000, 32768 - 10000)


def free_port_pairs(n: int) -> list[int]:
    """`n` distinct free ports p whose gRPC companions p + 10000 are free too (SeaweedFS's
    convention)."""
    import random

    rng = random.Random()
    picked: list[int] = []
    for _ in range(1000):
        p = rng.choice(PORTS)
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
    ports: dict[str, int] = field(default_factory=dict)  # MASTER, VOLUME, FILER, S3


@contextmanager
def seaweedfs(
    data_dir: Path, bucket: str = "mlcycle-test", attempts: int = 3, extra_env: dict[str, str] | None = None
) -> Iterator[S3Server]:
    """SeaweedFS with its S3 API on 127.0.0.1, credentials required, started by the Compose
    stack's own script once it takes a write (a bucket answers before a volume server has
    joined). A start that does not get there is tried again on other ports; the error holds each
    start's log."""
    access, secret = "mlcycle-access", "mlcycle-secret-key-for-tests"
    failures: list[str] = []
    for attempt in range(1, attempts + 1):
        workdir = data_dir / f"start-{attempt}"
        workdir.mkdir(parents=True, exist_ok=True)
        ports = dict(zip(("MASTER", "VOLUME", "FILER", "S3"), free_port_pairs(4), strict=True))
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "S3_BUCKET": bucket,
            "WEED": str(Path(sys.executable).parent / "weed"),
            "WEED_DIR": str(workdir),
            "WEED_IP": "127.0.0.1",
            "WEED_BIND": "127.0.0.1",
            **{f"WEED_{name}_PORT": str(port) for name, port in ports.items()},
            **(extra_env or {}),
        }
        endpoint = f"http://127.0.0.1:{ports['S3']}"
        log_path = workdir / "weed.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            ["bash", str(SEAWEEDFS_SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            failure = _wait_for_writes(endpoint, access, secret, bucket, proc)
            if failure is None:
                yield S3Server(endpoint, access, secret, bucket, ports)
                return
            failures.append(f"start {attempt} (ports {ports}): {failure}\n{log_path.read_text()[-3000:]}")
        finally:
            stop_processes([proc], 30)
            log.close()
    raise RuntimeError("SeaweedFS did not take a write:\n" + "\n".join(failures))


SEAWEEDFS_SCRIPT = Path(__file__).resolve().parents[1] / "include" / "stack" / "seaweedfs.sh"


def _wait_for_writes(
    endpoint: str, access: str, secret: str, bucket: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0
) -> str | None:
    """None once `bucket` exists and takes an object, else why not."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"seaweedfs.sh exited with {proc.returncode}"
        try:
            client.head_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key=".mlcycle-probe", Body=b"ready")
            client.delete_object(Bucket=bucket, Key=".mlcycle-probe")
            return None
        except Exception as err:  # not up yet
            last = err
            time.sleep(0.3)
    return f"not ready after {timeout_s}s: {last}"


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
