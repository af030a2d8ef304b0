"""`mlcycle up | down | ps`: the embedded platform as long-running services on 127.0.0.1.

    PostgreSQL (+ pgvector)   the platform database; Airflow's metadata in its `airflow` database
    airflow-api-server        the Airflow UI, the REST API v2 and the mlcycle plugin (:8080)
    airflow-scheduler         LocalExecutor: every task is the step's pod command as a process
    airflow-dag-processor     parses dags/
    airflow-triggerer         deferrable tasks, Asset watchers
    mlflow                    the MLflow UI and tracking server on the platform database (:5000)
    ray                       the Ray head; Serve's HTTP proxy answers on :8000
    serve-sync                serves every pipeline's champion where Serve serves none (a fresh
                              or restarted head, a pipeline that just got its first champion)
    prometheus, statsd-exporter, alertmanager   where installed (pipelines/local/monitoring.py)

The services run under supervisord (a real process supervisor: a service that dies is started
again; one log file per service under `<state>/platform/logs/`; it talks to `mlcycle` through a
Unix socket of mode 700, never TCP). supervisord runs `mlcycle up --exec NAME`, which builds the
service's environment from the settings and `exec`s it, so no secret is written into its config.
PostgreSQL is the embedded server of the state directory (its own daemon); `ps` shows it too and
`down` stops it with the rest. The data stays in the state directory.

`up` is idempotent: it starts what is not running, rewrites the config when it changed, and
waits until every service answers its health check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

from pipelines.core.errors import SettingsError
from pipelines.core.settings import Settings, pipeline_names
from pipelines.core.system import executable, private_state_dir, secret_file, write_private
from pipelines.io import db, mlflow_auth
from pipelines.io.clientenv import tracking_server_url
from pipelines.io.tracking import server_command
from pipelines.local.follow import say_now
from pipelines.local.local_airflow import AirflowClient, passwords_file, read_password, services_env
from pipelines.local.monitoring import alertmanager_argv, alertmanager_binary, prometheus_binary, write_configs
from serving import embedded
from serving.deploy import endpoint, haproxy_dir

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
SERVE_SYNC_INTERVAL_S = 10


@dataclass(frozen=True)
class Service:
    name: str
    url: str | None  # what a person opens; None for a background service
    priority: int = 500  # supervisord starts lower numbers first


def services(settings: Settings, prometheus: bool = False, alertmanager: bool = False) -> list[Service]:
    """The supervised services of the embedded platform (with Prometheus and the StatsD bridge of
    Airflow's metrics where Prometheus is installed, Alertmanager where it is). Pure."""
    airflow = f"http://127.0.0.1:{settings.airflow_port}"
    out = [Service("ray", f"http://{settings.serve_host}:{settings.serve_port}", 100)]
    if prometheus:
        out.append(Service("statsd-exporter", None, 150))
    out += [Service(f"airflow-{c}", airflow if c == "api-server" else None, 200) for c in AIRFLOW_COMPONENTS]
    out += [Service("mlflow", f"http://127.0.0.1:{settings.mlflow_port}", 300), Service("serve-sync", None, 900)]
    if alertmanager:
        out.append(Service("alertmanager", f"http://127.0.0.1:{settings.alertmanager_port}", 940))
    if prometheus:
        out.append(Service("prometheus", f"http://127.0.0.1:{settings.prometheus_port}", 950))
    return out


def platform_dir(settings: Settings) -> Path:
    return settings.state_path / "platform"


AIRFLOW_DB_OPTIONS = "options=-cidle_in_transaction_session_timeout=60s"
"""Every Airflow session ends after 60 s idle inside a transaction. A scheduler killed inside its
critical section leaves its transaction open, holding the pool rows' lock: its LocalExecutor
workers, forked from it, keep its database socket, so PostgreSQL never sees the client go, and
the restarted scheduler could never queue a task again. The timeout frees the lock within a
minute (Airflow holds no transaction idle for long)."""


def airflow_db_url(libpq_url: str, dbname: str = "airflow", driver: str = "psycopg") -> str:
    """The SQLAlchemy URL (psycopg 3; `psycopg_async` for async engines) of database `dbname` on
    the server of a libpq URL, with `AIRFLOW_DB_OPTIONS`. Pure."""
    info = conninfo_to_dict(libpq_url)
    user = quote(str(info.get("user") or "postgres"), safe="")
    password = quote(str(info.get("password") or ""), safe="")
    host = str(info.get("host") or "127.0.0.1")
    port = str(info.get("port") or 5432)
    if host.startswith("/"):  # a Unix socket directory goes in the query
        where = f"@/{dbname}?host={quote(host, safe='/')}&port={port}&"
    else:
        where = f"@{host}:{port}/{dbname}?"
    return f"postgresql+{driver}://{user}:{password}{where}{AIRFLOW_DB_OPTIONS}"


def supervisord_conf(
    settings: Settings, mlcycle: str, env: Mapping[str, str], prometheus: bool = False, alertmanager: bool = False
) -> str:
    """supervisord's config: its Unix socket (mode 700), one program per service running
    `mlcycle up --exec NAME`, restarted whenever it exits, killed with its process group, its
    output in `logs/NAME.log`. `env` (non-secret settings) is every program's environment. Pure."""
    home = platform_dir(settings)

    def value(v: str) -> str:  # supervisord expands %(name)s: escape the percent sign
        return v.replace("%", "%%")

    environment = ",".join(f'{k}="{value(v)}"' for k, v in sorted(env.items()))
    lines = [
        "; written by `mlcycle up`; edits are overwritten",
        "[unix_http_server]",
        f"file={home / 'supervisor.sock'}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={home / 'logs' / 'supervisord.log'}",
        f"pidfile={home / 'supervisord.pid'}",
        f"directory={settings.project_dir}",
        "logfile_maxbytes=10MB",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{home / 'supervisor.sock'}",
    ]
    for svc in services(settings, prometheus, alertmanager):
        lines += [
            "",
            f"[program:{svc.name}]",
            f"command={value(mlcycle)} up --exec {svc.name}",
            f"priority={svc.priority}",
            "autostart=true",
            "autorestart=true",
            "startsecs=3",
            "startretries=1000",
            "stopasgroup=true",
            "killasgroup=true",
            # `ray start --block` takes its time to stop its children: the group is killed sooner
            f"stopwaitsecs={10 if svc.name == 'ray' else 30}",
            "redirect_stderr=true",
            f"stdout_logfile={home / 'logs' / svc.name}.log",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
            f"environment={environment}",
        ]
    return "\n".join(lines) + "\n"


def parse_status(text: str) -> dict[str, dict[str, str]]:
    """`supervisorctl status` lines -> {name: {"state", "detail"}}. Pure."""
    out = {}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[1].isupper():
            out[parts[0]] = {"state": parts[1], "detail": parts[2] if len(parts) > 2 else ""}
    return out


# ------------------------------------------------------------------------- the services' commands
def base_env(settings: Settings, alertmanager: bool = False) -> dict[str, str]:
    """The non-secret settings every service gets (supervisord's config holds these); with
    `alertmanager`, the tasks send their events to the one `mlcycle up` runs (unless set)."""
    env = {"MLCYCLE_STATE_DIR": str(settings.state_path), "MLCYCLE_PROFILE": settings.profile, "RAY_AUTH_MODE": "token"}
    if settings.pipelines_dir:
        env["MLCYCLE_PIPELINES_DIR"] = str(settings.pipelines_dir)
    for name in ("airflow_port", "mlflow_port", "serve_port"):
        env[f"MLCYCLE_{name.upper()}"] = str(getattr(settings, name))
    env["MLCYCLE_MLFLOW_UI_URL"] = tracking_server_url(settings)  # the tasks' MLflow links: this server
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    if alertmanager and not settings.alertmanager_url:
        env["MLCYCLE_ALERTMANAGER_URL"] = f"http://127.0.0.1:{settings.alertmanager_port}"
    return env


def airflow_service_env(settings: Settings, database_url: str, statsd: bool = False) -> dict[str, str]:
    """The Airflow services' environment (and that of the tasks they run): the embedded Airflow of
    `services_env` with its metadata in PostgreSQL and one api-server worker (2 cores); with
    `statsd`, its metrics go to the StatsD bridge that Prometheus scrapes."""
    env = services_env(settings, settings.airflow_port)
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db_url(database_url),
            # Airflow's async engine would default to asyncpg; psycopg 3 does both
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": airflow_db_url(database_url, driver="psycopg_async"),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": "4",
            # a scheduler killed hard leaves its running tasks orphaned: the new one resets them
            # (they run again) at its next orphan check, every 30 s here (default 300 s); a task
            # without heartbeats is failed (and retried) after a minute (default 300 s)
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        }
    )
    if statsd:
        env.update(
            {
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(settings.statsd_udp_port),
                "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
            }
        )
    return env


def service_argv(settings: Settings, name: str, database_url: str) -> tuple[list[str], dict[str, str]]:
    """What `mlcycle up --exec NAME` execs, and its environment."""
    prometheus = prometheus_binary()
    if name.startswith("airflow-"):
        component = name.removeprefix("airflow-")
        args = ["--skip-serve-logs"] if component in ("scheduler", "triggerer") else []
        return [executable("airflow"), component, *args], airflow_service_env(
            settings, database_url, statsd=prometheus is not None
        )
    if name == "mlflow":
        argv = server_command(settings, "127.0.0.1", settings.mlflow_port)
        # MLflow 3's job runner (GenAI jobs: a Huey consumer per job kind) is not used here
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.update(mlflow_auth.server_env(settings, database_url, platform_dir(settings)))
        return [executable("mlflow"), *argv[1:], "--workers", "1"], env
    if name == "ray":
        metrics = settings.ray_metrics_port if prometheus else None
        return embedded.head_command(settings, block=True, metrics_port=metrics)
    if name == "serve-sync":
        mlcycle = executable("mlcycle")
        return [mlcycle, "serve", "sync", "--watch", str(SERVE_SYNC_INTERVAL_S)], dict(os.environ)
    if name == "statsd-exporter":
        ports = ["--udp-port", str(settings.statsd_udp_port), "--http-port", str(settings.statsd_http_port)]
        return [executable("mlcycle"), "statsd-exporter", "--host", "127.0.0.1", *ports], dict(os.environ)
    if name == "prometheus" and prometheus is not None:
        home = platform_dir(settings)
        return [
            prometheus,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={settings.state_path / 'prometheus'}",
            "--storage.tsdb.retention.time=15d",
            f"--web.listen-address=127.0.0.1:{settings.prometheus_port}",
        ], dict(os.environ)
    alertmanager = alertmanager_binary()
    if name == "alertmanager" and alertmanager is not None:
        return alertmanager_argv(settings, alertmanager, platform_dir(settings)), dict(os.environ)
    known = [s.name for s in services(settings, prometheus is not None, alertmanager is not None)]
    raise SettingsError(f"no service {name!r}; the services are {known}")


def exec_service(settings: Settings, name: str) -> None:
    """Replace this process with the service (supervisord's program command)."""
    if name == "ray":  # before its command: that records the new head's mark, and this stops the old one's
        embedded.clear_leftovers(settings)  # a head that died hard leaves its GCS holding the port
    argv, env = service_argv(settings, name, db.database_url(settings))
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


# ------------------------------------------------------------------------------------ control
class Platform:
    """supervisord and the services of one state directory."""

    def __init__(self, settings: Settings) -> None:
        if settings.profile != "embedded":
            raise SettingsError("`mlcycle up` runs the embedded platform; a cluster runs the Helm chart")
        self.settings = settings
        self.home = platform_dir(settings)
        self.conf = self.home / "supervisord.conf"
        self.airflow_url = f"http://127.0.0.1:{settings.airflow_port}"
        self.prometheus = prometheus_binary() is not None
        self.alertmanager = alertmanager_binary() is not None

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        argv = [executable("supervisorctl"), "-c", str(self.conf), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check)

    def supervisor_running(self) -> bool:
        return self.conf.exists() and self.ctl("pid").stdout.strip().isdigit()

    def status(self) -> dict[str, dict[str, str]]:
        return parse_status(self.ctl("status").stdout) if self.supervisor_running() else {}

    def passwords_file(self) -> Path:
        return passwords_file(self.settings)

    def client(self) -> AirflowClient:
        return AirflowClient(self.airflow_url, read_password(self.passwords_file()))

    # -------------------------------------------------------------------------------- up
    def up(self, timeout: float = 600, say: Callable[[str], None] = say_now) -> dict[str, dict[str, Any]]:
        started = time.monotonic()
        private_state_dir(self.settings.state_path)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        url = db.database_url(self.settings)
        applied = db.migrate(self.settings)
        db.enable_serving_role(self.settings)  # the Ray head's replicas connect as that role
        say(
            f"==> PostgreSQL (+ pgvector) in {db.pgdata_path(self.settings)}"
            + (f"; {applied} migrations" if applied else "")
        )
        ensure_database(url, "airflow")
        env = airflow_service_env(self.settings, url)  # makes the Airflow secrets once (mode 600)
        secret_file(self.settings.state_path / "serving-api-key", lambda: secrets.token_urlsafe(24))
        say("==> Airflow metadata: `airflow db migrate` on the `airflow` database")
        subprocess.run([executable("airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=900)
        common = base_env(self.settings, self.alertmanager)
        conf = supervisord_conf(self.settings, executable("mlcycle"), common, self.prometheus, self.alertmanager)
        changed = not self.conf.exists() or self.conf.read_text() != conf
        if changed:
            write_private(self.conf, conf)
        reconfigured = write_configs(self.settings, self.home, self.prometheus, self.alertmanager)
        if not self.supervisor_running():
            say(f"==> supervisord ({self.conf})")
            subprocess.run([executable("supervisord"), "-c", str(self.conf)], check=True, timeout=60)
        else:
            if changed:
                self.ctl("reread", check=True)
                self.ctl("update", check=True)
            self.ctl("start", "all")
            for name in reconfigured:  # new rules, receivers
                self.ctl("restart", name)
        say("==> waiting for every service to answer")
        health = self.wait_healthy(timeout)
        say(f"==> up in {time.monotonic() - started:.0f}s")
        return health

    def wait_healthy(self, timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if all(h["healthy"] for h in health.values()):
                return health
            if time.monotonic() > deadline:
                bad = {k: v for k, v in health.items() if not v["healthy"]}
                raise TimeoutError(f"not healthy after {timeout:.0f}s: {bad}; logs in {self.home / 'logs'}")
            time.sleep(2)

    # ------------------------------------------------------------------------------- down
    def down(self) -> list[str]:
        stopped = []
        if self.supervisor_running():
            self.ctl("stop", "all")
            self.ctl("shutdown")
            stopped.append("supervisord and its services")
        if embedded.ray_running(self.settings):  # what the head left (Serve's actors)
            embedded.stop(self.settings)
        # Serve's HAProxy is not a child of the head: killing Ray leaves it holding the HTTP port
        hap = str(haproxy_dir(str(self.settings.state_path)))
        if embedded.stop_haproxy(hap, remove=not embedded.ray_running(self.settings)):
            stopped.append("Serve's HAProxy")
        strays = stop_strays(self.settings)
        if strays:
            stopped.append(f"{strays} orphaned Airflow processes")
        if db.stop_embedded(self.settings):
            stopped.append("PostgreSQL")
        return stopped

    # ------------------------------------------------------------------------------- health
    def health(self) -> dict[str, dict[str, Any]]:
        """Per service: supervisor state, URL, and whether it answers its own health check."""
        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)
        states = self.status()
        out: dict[str, dict[str, Any]] = {}
        pg = db.pgdata_path(self.settings)
        out["postgresql"] = {"state": "RUNNING" if db.embedded_running(self.settings) else "STOPPED", "url": str(pg)}
        out["postgresql"]["healthy"] = out["postgresql"]["state"] == "RUNNING"
        airflow: dict[str, Any] = {}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            airflow = httpx.get(f"{self.airflow_url}/api/v2/monitor/health", timeout=5).json()
        for svc in services(self.settings, self.prometheus, self.alertmanager):
            state = states.get(svc.name, {}).get("state", "STOPPED")
            row: dict[str, Any] = {"state": state, "url": svc.url, "healthy": state == "RUNNING"}
            if svc.name == "airflow-api-server":
                row["healthy"] = row["healthy"] and airflow.get("metadatabase", {}).get("status") == "healthy"
            elif svc.name.startswith("airflow-"):
                key = svc.name.removeprefix("airflow-").replace("-", "_")
                row["healthy"] = row["healthy"] and airflow.get(key, {}).get("status") == "healthy"
            elif svc.name == "mlflow":
                row["healthy"] = row["healthy"] and answers(f"{svc.url}/health")
            elif svc.name in ("prometheus", "alertmanager"):
                row["healthy"] = row["healthy"] and answers(f"{svc.url}/-/ready")
            elif svc.name == "statsd-exporter":
                row["healthy"] = row["healthy"] and answers(
                    f"http://127.0.0.1:{self.settings.statsd_http_port}/metrics"
                )
            elif svc.name == "ray":
                # the head answers, and Serve's ingress answers HTTP (503 while it serves nothing)
                row["healthy"] = row["healthy"] and answers(f"{svc.url}/-/healthz", any_status=True)
                row["healthy"] = row["healthy"] and embedded.ray_running(self.settings)
            out[svc.name] = row
        return out


def stop_strays(settings: Settings) -> int:
    """Terminate LocalExecutor workers that outlived their scheduler (a scheduler killed hard
    leaves them, idle, with no parent but init): this platform's run in its project directory.
    Their environment cannot tell (Airflow rewrites the process title over it). Returns how many."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        try:
            title = " ".join(proc.info["cmdline"] or [])
            orphan = title.startswith("airflow worker -- LocalExecutor") and proc.info["ppid"] == 1
            if orphan and proc.cwd() == str(settings.project_dir):
                proc.terminate()
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    _, alive = psutil.wait_procs(found, timeout=10)
    for proc in alive:
        proc.kill()
    return len(found)


def answers(url: str, any_status: bool = False) -> bool:
    """Whether `url` answers 200 (with `any_status`: answers HTTP at all)."""
    import httpx

    try:
        code = httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return False
    return any_status or code == 200


def ensure_database(libpq_url: str, name: str) -> None:
    """Create database `name` on the server when it has none of that name."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def render_ps(health: Mapping[str, Mapping[str, Any]]) -> str:
    """The `mlcycle ps` table. Pure."""
    lines = [f"{'service':<24} {'state':<10} {'health':<9} url"]
    for name, h in health.items():
        lines.append(f"{name:<24} {h['state']:<10} {'healthy' if h['healthy'] else 'DOWN':<9} {h.get('url') or ''}")
    return "\n".join(lines)


def open_these(plat: Platform, pipeline: str | None = None, no_champion: Mapping[str, str] | None = None) -> str:
    """What to open, and where the credentials are. Pure but for reading nothing: paths only.
    `no_champion`: the pipelines that have no champion yet, and why: no endpoint URL for them (it
    would answer 404), the reason instead."""
    settings = plat.settings
    waiting = dict(no_champion or {})
    names = [n for n in ([pipeline] if pipeline else pipeline_names(settings)) if n not in waiting]
    lines = [
        "==> open:",
        f"    Airflow UI and REST API  {plat.airflow_url}",
        f"                             user admin, password in {plat.passwords_file()}",
        f"    the mlcycle page         {plat.airflow_url}/plugin/mlcycle",
        f"    MLflow UI                {tracking_server_url(settings)}",
        f"                             user {mlflow_auth.ADMIN_USER}, password in "
        f"{mlflow_auth.admin_password_file(settings)}",
    ]
    lines += [f"    {name} endpoint  {endpoint(settings, name)}/predict" for name in names]
    lines += [f"    {name}: no champion yet ({why}), so no endpoint" for name, why in waiting.items()]
    key = settings.state_path / "serving-api-key"
    body = '{"instances": [{"entity_id": 42}]}'
    if names:
        lines.append(f"    curl -s -H \"x-api-key: $(cat {key})\" -H 'content-type: application/json' \\")
        lines.append(f"      -d '{body}' {endpoint(settings, names[0])}/predict")
        lines.append(
            f"    curl -s -H \"x-api-key: $(cat {key})\" '{endpoint(settings, names[0])}/similar?entity_id=42&k=5'"
            "   (a spec with `embeddings`)"
        )
    lines.append("    `mlcycle ps` shows the services, `mlcycle down` (or `make down`) stops them; the data stays")
    return "\n".join(lines)
