"""Alerts on the real binaries: Debian's Prometheus evaluates the rules `mlcycle up` renders (on
short windows) against a metric source, and Debian's Alertmanager routes what fires, and the
events the steps and Airflow's notifier send, to a webhook receiver the test runs on 127.0.0.1.

The metric source is a small exporter of the test's own that serves the ingress's counter
(`ray_mlcycle_requests_total`, as Ray exports it) at rates the test sets: a calm period (0.5 %
errors, under the 1 % SLO) delivers nothing; an error burst (50 %) delivers the burn alert. The
failure notifier runs as Airflow calls it (`BaseNotifier.__call__(context)`), the rollback alert
through the canary step's own function. Each delivery's seconds are printed (run with `-s`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml

from pipelines.core import alerts
from pipelines.core.settings import Settings
from pipelines.core.system import stop_processes
from pipelines.io import alerts as alerts_io
from tests.alerting import Webhook, alertmanager, binary, serve, start_webhook, wait_ready
from tests.services import free_port_pairs

SLO = alerts.Slo("churn", max_error_rate=0.01, max_p99_latency_ms=250.0)
TIMING = alerts.RuleTiming(
    burn=(alerts.BurnWindow("10s", "4s", 14.4, "critical"),),
    latency_window="10s",
    latency_for="0s",
    unavailable_window="10s",
    unavailable_for="0s",
)
"""The rules' windows in seconds instead of hours: Prometheus scrapes and evaluates every second."""


@dataclass
class Exporter:
    """Counters of requests that grow at the rates the test sets (per second)."""

    ok_per_s: float = 199.0
    errors_per_s: float = 1.0
    ok: float = 0.0
    errors: float = 0.0
    at: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, ok_per_s: float, errors_per_s: float) -> None:
        with self.lock:
            self._advance()
            self.ok_per_s, self.errors_per_s = ok_per_s, errors_per_s

    def _advance(self) -> None:
        now = time.monotonic()
        self.ok += self.ok_per_s * (now - self.at)
        self.errors += self.errors_per_s * (now - self.at)
        self.at = now

    def text(self) -> str:
        with self.lock:
            self._advance()
            base = 'pipeline="churn",shadow="false",version="1"'
            return (
                f"# TYPE {alerts.REQUESTS} counter\n"
                f'{alerts.REQUESTS}{{{base},status="ok"}} {self.ok:.0f}\n'
                f'{alerts.REQUESTS}{{{base},status="error"}} {self.errors:.0f}\n'
            )


def start_exporter(exporter: Exporter, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exporter.text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return serve(Handler, port)


@dataclass
class Stack:
    alertmanager_url: str
    prometheus_url: str
    exporter: Exporter
    webhook: Webhook


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("alerts")
    prom_port, am_port, hook_port, exporter_port = free_port_pairs(4)
    exporter, hook = Exporter(), Webhook()
    servers = [start_exporter(exporter, exporter_port), start_webhook(hook, hook_port)]
    (home / "rules.yml").write_text(alerts.render_rules([SLO], TIMING))
    prometheus_yml = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(home / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(prometheus_yml))
    argv = [
        binary("prometheus"),
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    try:
        with alertmanager(home, am_port, f"http://127.0.0.1:{hook_port}/hook") as (am, _):
            with (home / "prometheus.log").open("wb") as log:
                prom = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{prom_port}"
                wait_ready(url, prom, home / "prometheus.log")
                yield Stack(am, url, exporter, hook)
            finally:
                stop_processes([prom], grace_s=20)
    finally:
        for server in servers:
            server.shutdown()


def test_a_calm_period_delivers_nothing_then_an_error_burst_delivers_the_burn_alert(stack: Stack) -> None:
    # calm: 0.5 % errors, half the SLO's budget, long enough for both windows to fill several times
    stack.exporter.set(ok_per_s=199.0, errors_per_s=1.0)
    calm_s = 25.0
    time.sleep(calm_s)
    assert stack.webhook.received == [], "a calm period delivered alerts"
    rules = httpx.get(f"{stack.prometheus_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    burn = [r for g in rules for r in g["rules"] if r["name"] == "MlcycleErrorBudgetBurn"]
    assert burn and all(r["health"] == "ok" and r["state"] == "inactive" for r in burn), burn
    began = time.time()
    stack.exporter.set(ok_per_s=100.0, errors_per_s=100.0)
    seconds, alert = stack.webhook.wait("MlcycleErrorBudgetBurn", began)
    print(f"\nerror burst -> MlcycleErrorBudgetBurn at the webhook: {seconds:.1f}s (calm {calm_s:.0f}s: 0 delivered)")
    assert alert["labels"]["pipeline"] == "churn" and alert["labels"]["severity"] == "critical"
    stack.exporter.set(ok_per_s=199.0, errors_per_s=1.0)


def test_a_failed_task_delivers_run_failed_and_retries_exhausted_with_its_log_url(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from operators.notifier import AlertNotifier

    monkeypatch.setenv("MLCYCLE_ALERTMANAGER_URL", stack.alertmanager_url)
    log_url = "http://127.0.0.1:8080/dags/churn_lifecycle/runs/r1/tasks/train?try_number=3"
    ti = SimpleNamespace(dag_id="churn_lifecycle", task_id="train", run_id="r1", try_number=3, log_url=log_url)
    began = time.time()
    AlertNotifier("churn")({"ti": ti, "exception": RuntimeError("trial workers lost")})  # as Airflow calls it
    for name in ("MlcycleRunFailed", "MlcycleStepRetriesExhausted"):
        seconds, alert = stack.webhook.wait(name, began)
        print(f"\nfailed task -> {name} at the webhook: {seconds:.1f}s")
        assert alert["labels"]["pipeline"] == "churn" and alert["labels"]["task_id"] == "train"
        assert alert["annotations"]["log_url"] == log_url and "trial workers lost" in alert["annotations"]["error"]


def test_a_rolled_back_canary_delivers_its_alert(stack: Stack) -> None:
    from pipelines.steps.canary import alert_rollback

    ctx = SimpleNamespace(settings=Settings(alertmanager_url=stack.alertmanager_url), pipeline="churn")
    report = {"outcome": "rolled_back", "champion": 2, "challenger": 3, "reason": "error rate 40% > 5%"}
    began = time.time()
    alert_rollback(ctx, report)  # type: ignore[arg-type]  # what the canary step's end does with its report
    seconds, alert = stack.webhook.wait("MlcycleCanaryRolledBack", began)
    print(f"\ncanary rolled back -> MlcycleCanaryRolledBack at the webhook: {seconds:.1f}s")
    assert alert["labels"]["pipeline"] == "churn" and alert["labels"]["version"] == "3"
    assert "error rate 40% > 5%" in alert["annotations"]["summary"]


def test_mlcycle_alerts_lists_what_fires_per_pipeline(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli.platform_commands import cmd_alerts

    alerts_io.send(
        Settings(alertmanager_url=stack.alertmanager_url),
        [
            alerts.drift_alert("wine", 4, "drift", ["2 of 3 features drifted"], datetime.now(UTC)),
            alerts.rollback_alert("churn", 5, 4, "p99 900 ms > 250 ms", datetime.now(UTC)),
        ],
    )
    monkeypatch.setenv("MLCYCLE_ALERTMANAGER_URL", stack.alertmanager_url)
    assert cmd_alerts(SimpleNamespace(action=None, pipeline=None, json=True)) == 0  # type: ignore[arg-type]
    rows = json.loads(capsys.readouterr().out)
    assert {r["alertname"] for r in rows["wine"]} == {"MlcycleDriftFound"}
    assert "MlcycleCanaryRolledBack" in {r["alertname"] for r in rows["churn"]}
    assert cmd_alerts(SimpleNamespace(action=None, pipeline="wine", json=False)) == 0  # type: ignore[arg-type]
    table = capsys.readouterr().out
    assert "wine:" in table and "MlcycleDriftFound" in table and "churn:" not in table


def test_without_alertmanager_sending_is_a_logged_no_op_never_an_error(caplog: pytest.LogCaptureFixture) -> None:
    alert = alerts.rollback_alert("churn", 2, 1, "x", datetime.now(UTC))
    with caplog.at_level(logging.INFO, logger="mlcycle.alerts"):
        assert alerts_io.send(Settings(alertmanager_url=None), [alert]) is False
    assert "MLCYCLE_ALERTMANAGER_URL is unset" in caplog.text
    (closed,) = free_port_pairs(1)  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="mlcycle.alerts"):
        assert alerts_io.send(Settings(alertmanager_url=f"http://127.0.0.1:{closed}"), [alert]) is False
    assert "not sent to" in caplog.text
    for bad in ("http://[::1", "not a url"):  # a mistyped setting costs a warning, not the step
        assert alerts_io.send(Settings(alertmanager_url=bad), [alert]) is False
