"""Alertmanager on 127.0.0.1 and a webhook receiver of the test's own, for the alerts tests
(tests/integration/test_alerts.py, the failing DAG run of tests/e2e/test_lifecycle_dag.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.core import alerts
from pipelines.core.settings import Settings
from pipelines.core.system import stop_processes
from pipelines.local.monitoring import alertmanager_argv

DELIVERY_LIMIT_S = 60.0  # a bound on the wait, not a performance assertion


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make tools` installs it")
    return path


@dataclass
class Webhook:
    """What Alertmanager delivered: (wall-clock time, one alert) per alert of each notification."""

    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def firing(self, alertname: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [
                (t, a) for t, a in self.received if a["labels"]["alertname"] == alertname and a["status"] == "firing"
            ]

    def wait(
        self, alertname: str, since: float, limit_s: float = DELIVERY_LIMIT_S, **labels: str
    ) -> tuple[float, dict[str, Any]]:
        """The first delivery of `alertname` (with `labels`) and its seconds after `since` (`time.time()`)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            found = [(t, a) for t, a in self.firing(alertname) if labels.items() <= a["labels"].items()]
            if found:
                return found[0][0] - since, found[0][1]
            time.sleep(0.1)
        raise AssertionError(f"{alertname} {labels} not delivered within {limit_s:.0f}s; got {self.received}")


def serve(handler: type[BaseHTTPRequestHandler], port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_webhook(hook: Webhook, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            now = time.time()
            with hook.lock:
                hook.received += [(now, a) for a in body["alerts"]]
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return serve(Handler, port)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in 60s: {log.read_text()[-2000:]}")


def delay_s(alert: dict[str, Any], received_at: float) -> float:
    """Seconds from an alert's `startsAt` (when its event happened) to its arrival (wall clock)."""
    return received_at - datetime.fromisoformat(alert["startsAt"].replace("Z", "+00:00")).timestamp()


@contextmanager
def alertmanager(home: Path, port: int, webhook_url: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Alertmanager as `mlcycle up` runs it (loopback, no gossip), routing to `webhook_url` within
    a second (`group_wait` 1 s); yields its URL and process."""
    config = alerts.alertmanager_config(
        alerts.Receivers(webhook_url=webhook_url), group_wait="1s", group_interval="1s", repeat_interval="1h"
    )
    (home / "alertmanager.yml").write_text(config)
    argv = alertmanager_argv(Settings(state_dir=home, alertmanager_port=port), binary("prometheus-alertmanager"), home)
    with (home / "alertmanager.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, home / "alertmanager.log")
        yield url, proc
    finally:
        stop_processes([proc], grace_s=20)


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, Webhook]]:
    """A webhook receiver on a free port of 127.0.0.1: yields its URL (what Alertmanager's
    `webhook_configs` or `MLCYCLE_ALERTS_WEBHOOK_URL` names) and what it received."""
    from tests.services import free_port_pairs

    (port,) = free_port_pairs(1)
    hook = Webhook()
    server = start_webhook(hook, port)
    try:
        yield f"http://127.0.0.1:{port}/hook", hook
    finally:
        server.shutdown()


@contextmanager
def alert_receiver(home: Path) -> Iterator[tuple[str, Webhook]]:
    """A webhook receiver and an Alertmanager routing to it: yields Alertmanager's URL (what
    `MLCYCLE_ALERTMANAGER_URL` names) and the webhook."""
    from tests.services import free_port_pairs

    with webhook_receiver() as (hook_url, hook):
        (am_port,) = free_port_pairs(1)
        with alertmanager(home, am_port, hook_url) as (url, _):
            yield url, hook
