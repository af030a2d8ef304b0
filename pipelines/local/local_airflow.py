"""A real Airflow on one machine: api-server (UI + REST API v2), scheduler and dag-processor with
the LocalExecutor, metadata in SQLite under the state directory, everything on 127.0.0.1.

`airflow dags test` (what `make demo` uses) runs one DAG in one process and has no scheduler, so
nothing reacts to Asset events there. The drift loop needs the scheduler: `<name>_drift` emits
`<name>_retraining` and the scheduler starts `<name>_lifecycle`. `make drift-demo` and the
closed-loop test use this class; the Compose stack and the Helm chart run the same components
as services.

The REST API is used as a user would: a login (`POST /auth/token`) with the generated admin
password (mode 600 in the state directory), then `Authorization: Bearer`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pipelines.core.settings import Settings
from pipelines.core.system import executable, secret_file, stop_processes

COMPONENTS = ("api-server", "scheduler", "dag-processor")
# The scheduler's log server would listen on every interface; the api-server reads the task logs
# from the shared local log folder instead.
ARGS = {"scheduler": ["--skip-serve-logs"]}
TERMINAL = {"success", "failed"}


def airflow_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an embedded Airflow rooted in the state directory. Pure."""
    env = dict(os.environ if base is None else base)
    home = settings.state_path / "airflow"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.project_dir / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.project_dir / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "MLCYCLE_STATE_DIR": str(settings.state_path),
            "MLCYCLE_PROFILE": settings.profile,
        }
    )
    return env


def passwords_file(settings: Settings) -> Path:
    """The simple auth manager's passwords (mode 600) of the embedded Airflow. Pure."""
    return settings.state_path / "airflow" / "simple_auth_manager_passwords.json"


def read_password(path: Path, user: str = "admin") -> str:
    data: dict[str, str] = json.loads(path.read_text())
    return data[user]


def services_env(settings: Settings, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the three services (and of the tasks they run). Writes the secrets."""
    env = airflow_env(settings, base)
    home = Path(env["AIRFLOW_HOME"])
    jwt = secret_file(home / "jwt-secret", lambda: secrets.token_urlsafe(32))
    passwords = passwords_file(settings)
    # an admin, and a read-only account (the viewer may read every DAG and trigger none)
    secret_file(passwords, lambda: json.dumps({u: secrets.token_urlsafe(16) for u in ("admin", "viewer")}))
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        }
    )
    return env


IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})


def transient_database_error(status: int, text: str) -> bool:
    """Airflow's answer to a database error in a request (`SQLAlchemyError` -> 500, reason
    `Database error`). Pure."""
    return status == 500 and '"Database error"' in text


def error_id(text: str) -> str | None:
    """The lookup id Airflow gives a database error's answer (`... look for ID xH16Fxu5`). Pure."""
    found = re.search(r"look for ID (\w+)", text)
    return found.group(1) if found else None


class ApiError(RuntimeError):
    """Airflow's REST API answered an error: its status and what it said."""

    def __init__(self, method: str, path: str, status: int, text: str, server_log: str = "") -> None:
        super().__init__(f"{method} {path}: {status} {text[:500]}{server_log}")
        self.status, self.detail = status, api_detail(text)


def api_detail(text: str) -> str:
    """The readable part of an Airflow API error body (`detail`, a string or pydantic-style
    errors), else the text itself, cut short. Pure."""
    try:
        detail = json.loads(text).get("detail", text)
    except (ValueError, AttributeError):
        return text[:500]
    if isinstance(detail, list):
        parts = []
        for e in detail:
            where = ".".join(str(p) for p in e.get("loc", [])) if isinstance(e, dict) else ""
            msg = e.get("msg", e) if isinstance(e, dict) else e
            parts.append(f"{where}: {msg}" if where else str(msg))
        return "; ".join(parts)[:500]
    if isinstance(detail, dict):
        return str(detail.get("message") or detail.get("reason") or detail)[:500]
    return str(detail)[:500]


class AirflowClient:
    """Airflow's REST API v2 as a user drives it: a login (`POST /auth/token`), then bearer calls.
    Used against `LocalAirflow` and the Compose stack alike."""

    def __init__(self, url: str, password: str | None = None, username: str = "admin") -> None:
        self.url, self.username, self._password = url.rstrip("/"), username, password
        self._token: str | None = None

    def password(self) -> str:
        if self._password is None:
            raise RuntimeError("no Airflow password given")
        return self._password

    def _check_alive(self) -> None:
        """Raise when the services are known to be gone (a subclass that runs them knows)."""

    def auth_headers(self) -> dict[str, str]:
        """A bearer token of the admin, from a login."""
        import httpx

        if self._token is None:
            login = httpx.post(
                f"{self.url}/auth/token", json={"username": self.username, "password": self.password()}, timeout=30
            )
            login.raise_for_status()
            self._token = login.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; an idempotent one is asked again (twice at most) where the database failed it
        for a moment (Airflow's 500 `Database error`: a deadlock with the scheduler or the
        dag-processor, which PostgreSQL resolves by failing one side)."""
        import httpx

        for attempt in range(3):
            r = httpx.request(method, f"{self.url}/api/v2{path}", headers=self.auth_headers(), timeout=30, **kwargs)
            if r.status_code < 400:
                return r.json() if r.content else None
            if not (method in IDEMPOTENT and transient_database_error(r.status_code, r.text)) or attempt == 2:
                raise ApiError(method, path, r.status_code, r.text, self._server_log(r.text))
            time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def _server_log(self, text: str) -> str:
        """What the api-server logged of the error this answer names (a subclass that runs it knows)."""
        return ""

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Until the dag-processor has parsed the DAG; then unpause it (a DAG that `airflow dags
        test` registered first stays paused, and a paused DAG neither runs nor reacts to Assets)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.api("GET", f"/dags/{dag_id}")["is_paused"]:
                    self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
                return
            except RuntimeError:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{dag_id} was not parsed in {timeout:.0f}s") from None
                time.sleep(2)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """A manual run, as the UI's Trigger DAG form makes one (`conf` holds the params)."""
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return str(run["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.api("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]
        return out

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run: dict[str, Any] = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in TERMINAL:
                return run
            self._check_alive()
            if time.monotonic() > deadline:
                tries = self._task_tries(dag_id, run_id)
                raise TimeoutError(f"{dag_id} {run_id} still {run['state']} after {timeout:.0f}s: {tries}")
            time.sleep(3)

    def _task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        tis: list[dict[str, Any]] = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return tis

    def _task_tries(self, dag_id: str, run_id: str, tis: list[dict[str, Any]] | None = None) -> str:
        """Each task's state and try, for a message: `train=running#2 evaluate=None#0`."""
        tis = self._task_instances(dag_id, run_id) if tis is None else tis
        return " ".join(f"{t['task_id']}={t['state']}#{t['try_number']}" for t in tis)

    def failure(self, dag_id: str, run_id: str, lines: int = 40) -> str:
        """What a failed run's message needs: each task's state and try, then the last `lines` of
        each failed task's log (its last try), as the API serves them."""
        tis = self._task_instances(dag_id, run_id)
        parts = [self._task_tries(dag_id, run_id, tis)]
        for t in tis:
            if t["state"] not in ("failed", "upstream_failed") or not t["try_number"]:
                continue
            path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{t['task_id']}/logs/{t['try_number']}"
            content = self.api("GET", path, params={"full_content": "true"}).get("content") or []
            text = [m if isinstance(m, str) else str(m.get("event", m)) for m in content]
            head = f"--- {t['task_id']} (try {t['try_number']}), its log's last lines:"
            parts.append("\n".join([head, *text[-lines:]]))
        return "\n".join(parts)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {t["task_id"]: t["state"] for t in tis}

    def task_durations(self, dag_id: str, run_id: str) -> dict[str, float]:
        """Seconds each task of a run took (its last try), in the order they started."""
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        done = sorted((t for t in tis if t.get("duration") is not None), key=lambda t: t["start_date"] or "")
        return {t["task_id"]: float(t["duration"]) for t in done}

    def asset_events(self, name: str) -> list[dict[str, Any]]:
        assets = self.api("GET", "/assets", params={"name_pattern": name})["assets"]
        ids = [a["id"] for a in assets if a["name"] == name]
        if not ids:
            return []
        # Airflow 3.3 answers 500 while a run that an event created is queued: the event lists the
        # runs it created, and the response model requires a start_date, which a queued run has
        # not. The run starts within seconds; ask again until then.
        deadline = time.monotonic() + 60
        while True:
            try:
                found = self.api("GET", "/assets/events", params={"asset_id": ids[0]})
                break
            except RuntimeError as err:
                if ": 500 " not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
        events: list[dict[str, Any]] = found["asset_events"]
        return events


class LocalAirflow(AirflowClient):
    """The Airflow services as child processes, and the REST client for them."""

    def __init__(self, settings: Settings, port: int = 8080, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(f"http://127.0.0.1:{port}")
        self.settings, self.port = settings, port
        self.env = services_env(settings, port, {**os.environ, **(extra_env or {})})
        self.home = Path(self.env["AIRFLOW_HOME"])
        self.procs: list[subprocess.Popen[bytes]] = []

    def password(self) -> str:
        return read_password(Path(self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]))

    # ------------------------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 240) -> LocalAirflow:
        exe = executable("airflow")
        subprocess.run([exe, "db", "migrate"], env=self.env, check=True, capture_output=True, timeout=600)
        logs = self.home / "services"
        logs.mkdir(parents=True, exist_ok=True)
        for name in COMPONENTS:
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
            argv = [exe, name, *ARGS.get(name, [])]
            self.procs.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while not self._healthy():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"Airflow did not become healthy in {timeout:.0f}s; logs in {logs}")
            time.sleep(2)
        return self

    def stop(self) -> None:
        stop_processes(self.procs, 60)
        self.procs = []

    def __enter__(self) -> LocalAirflow:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _server_log(self, text: str) -> str:
        """The api-server's log of the error this answer names: the statement and where it failed."""
        found, log = error_id(text), self.home / "services" / "api-server.log"
        if found is None or not log.exists():
            return ""
        lines = log.read_text(errors="replace").splitlines()
        at = next((i for i in range(len(lines) - 1, -1, -1) if f"Error with id {found}" in lines[i]), None)
        return "" if at is None else "\napi-server log:\n" + "\n".join(lines[at : at + 40])

    def _check_alive(self) -> None:
        for name, p in zip(COMPONENTS, self.procs, strict=True):
            if p.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {p.returncode}; see {self.home / 'services'}")

    def _healthy(self) -> bool:
        import httpx

        try:
            health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        return bool(health.get("scheduler", {}).get("status") == "healthy")
