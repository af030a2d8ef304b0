"""The embedded profile's Ray: a local head started by `mlcycle serve start`, on 127.0.0.1.

Ray's workers inherit the environment of `ray start`, so the settings (state dir, pipelines dir)
and the serving API keys reach the replicas. So does a mark made at each start
(`MLCYCLE_RAY_HEAD`, recorded in `<state_dir>/ray-head.mark` with the session `serve start` runs
the head in): `stop` ends the processes that carry this state dir's mark, those of that session and
their descendants (the head, its raylet, agents, workers, Serve's actors and the HAProxy they run),
and no other Ray of the host (`ray stop` would end them all). Without `MLCYCLE_SERVING_API_KEYS` in the
environment, one key is generated into `<state_dir>/serving-api-key` (mode 600) and reused.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from pathlib import Path

from pipelines.core.errors import SettingsError
from pipelines.core.settings import Settings
from pipelines.core.system import (
    executable,
    private_dir,
    private_state_dir,
    secret_file,
    stop_started,
    write_private,
)
from pipelines.io import db
from serving.deploy import connect, haproxy_dir, serve_env

RAY_PORT = 6380
HEAD_MARK = "MLCYCLE_RAY_HEAD"
"""The variable every process of a head this platform started carries in its environment."""


def mark_path(settings: Settings) -> Path:
    return settings.state_path / "ray-head.mark"


def new_mark(settings: Settings) -> str:
    """A fresh mark for a head about to start, recorded (mode 600) for `stop`."""
    mark = f"{settings.state_path}#{secrets.token_hex(8)}"
    write_private(mark_path(settings), json.dumps({"mark": mark, "session": None}))
    return mark


def record_session(settings: Settings, session: int) -> None:
    """Add to the recorded mark the session the head's processes were started in."""
    write_private(mark_path(settings), json.dumps({"mark": recorded_mark(settings), "session": session}))


def recorded(settings: Settings) -> tuple[str | None, int | None]:
    """The mark and the session (where one was made) of the last head this state dir started."""
    path = mark_path(settings)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    return data.get("mark") or None, data.get("session")


def recorded_mark(settings: Settings) -> str | None:
    return recorded(settings)[0]


def ray_port(settings: Settings) -> int:
    """The GCS port of the embedded head: from `MLCYCLE_RAY_ADDRESS` (`host:port`), else 6380."""
    if settings.ray_address and ":" in settings.ray_address:
        return int(settings.ray_address.rsplit(":", 1)[1])
    return RAY_PORT


def api_key(settings: Settings) -> str:
    """The first serving API key: from the environment, else the state dir's (made once)."""
    env = os.environ.get("MLCYCLE_SERVING_API_KEYS", "")
    if env.strip():
        return env.split(",")[0].strip()
    return secret_file(settings.state_path / "serving-api-key", lambda: secrets.token_urlsafe(24))


def ray_running(settings: Settings) -> bool:
    """Whether a Ray head answers on the embedded port: nothing listening there is a quick no
    (`ray status` takes ~40 s to give up on a closed port)."""
    with socket.socket() as probe:
        probe.settimeout(1.0)
        if probe.connect_ex(("127.0.0.1", ray_port(settings))) != 0:
            return False
    ray = executable("ray")
    address = f"127.0.0.1:{ray_port(settings)}"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    status = subprocess.run([str(ray), "status", f"--address={address}"], capture_output=True, timeout=60, env=env)
    return status.returncode == 0


def head_command(
    settings: Settings, block: bool = False, metrics_port: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """`ray start --head` of the embedded head and its environment (the settings and the serving
    keys reach the replicas through it; the platform database as the serving role, which cannot
    write MLflow's tables); `block` keeps it in the foreground (under supervisord). The state dir
    and HAProxy's folder are made private first: Ray would make the folder readable by all."""
    private_state_dir(settings.state_path)
    private_dir(haproxy_dir(str(settings.state_path)))
    key = api_key(settings)
    env = {
        **os.environ,
        "MLCYCLE_DATABASE_URL": db.serving_database_url(settings),
        "MLCYCLE_SERVING_API_KEYS": os.environ.get("MLCYCLE_SERVING_API_KEYS") or key,
        "MLCYCLE_STATE_DIR": str(settings.state_path),
        **serve_env(settings, executable("mlcycle-haproxy"), str(settings.state_path)),
        "RAY_AUTH_MODE": "token",
        HEAD_MARK: new_mark(settings),
    }
    if settings.pipelines_dir:
        env["MLCYCLE_PIPELINES_DIR"] = str(settings.pipelines_dir)
    argv = [
        executable("ray"),
        "start",
        "--head",
        f"--port={ray_port(settings)}",
        "--num-cpus=4",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
    ]
    if metrics_port is not None:  # where Prometheus scrapes it (`mlcycle up` with Prometheus)
        argv.append(f"--metrics-export-port={metrics_port}")
    # Token authentication: make the token (~/.ray/auth_token) the head and clients share.
    subprocess.run(
        [executable("ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60
    )
    return [*argv, "--block"] if block else argv, env


def clear_leftovers(settings: Settings) -> None:
    """Before a supervised head starts: what a head that was killed hard left behind (its GCS on
    the port, Serve's HAProxy on the HTTP port) is stopped. A stopped head leaves its HAProxy too:
    Ray kills the actor that ran it, not HAProxy, which went on holding the HTTP port with the
    dead head's routes."""
    if ray_running(settings):
        stop(settings)
    else:
        stop_haproxy(str(haproxy_dir(str(settings.state_path))), remove=True)


def start(settings: Settings) -> str:
    """Start the local Ray head (if none runs) and Serve's HTTP proxy; returns the API key."""
    key = api_key(settings)
    if not ray_running(settings):
        start_head(settings)

    connect(settings.model_copy(update={"ray_address": f"127.0.0.1:{ray_port(settings)}"}))
    return key


def start_head(settings: Settings) -> None:
    """`ray start --head` of the embedded head, its processes marked and in a session of their own
    (the head's daemons stay in it when `ray start` exits, so `stop` finds them even where one
    blanks its environment and its parent is gone)."""
    argv, env = head_command(settings)
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        record_session(settings, proc.pid)
        try:
            _, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SettingsError(f"`ray start` failed ({proc.returncode}): {stderr[-2000:]}")


def stop(settings: Settings) -> int:
    """Stop the Ray head this state directory started (every process carrying its mark: GCS,
    raylet, workers, Serve's actors) and the HAProxy Serve ran for it, which a killed proxy actor
    leaves holding the HTTP port; never another Ray of the host. Returns how many processes
    carried the mark (0: none, or a head started before heads were marked, which `ray stop` on
    its own address must end)."""
    mark, session = recorded(settings)
    stopped = stop_started(HEAD_MARK, mark, session) if mark else 0
    stop_haproxy(str(haproxy_dir(str(settings.state_path))), remove=not ray_running(settings))
    return stopped


def stop_haproxy(config_dir: str, remove: bool = False) -> int:
    """Terminate the HAProxy processes whose config lies in `config_dir`; with `remove` (the
    caller knows no Ray head of it runs, which would start HAProxy there again), then remove the
    folder (a subfolder per HAProxy Serve ever started: its config and admin socket) where it is
    this user's own folder, not a link. Returns how many processes there were."""
    import psutil  # heavy: only `serve stop` needs it

    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "haproxy" and any(arg.startswith(config_dir + os.sep) for arg in cmdline):
            proc.terminate()
            found.append(proc)
    _, alive = psutil.wait_procs(found, timeout=10)
    for proc in alive:
        proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=5)
    if remove and not alive:
        remove_own_dir(Path(config_dir))
    return len(found)


def remove_own_dir(path: Path) -> bool:
    """Remove a folder and what it holds where it is a folder of this user's (never through a
    link: `shutil.rmtree` refuses one, and walks by file descriptors); whether it went."""
    import shutil
    import stat

    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()
