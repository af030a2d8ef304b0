"""The embedded platform's monitoring: Prometheus (scrapes, rule files, where it sends alerts) and
Alertmanager (routes what fires to the settings' receivers), each run by `mlcycle up` where its
Debian package is installed (`make tools`). The configs are pure functions of the settings and the
pipelines' specs; `write_configs` writes them into the platform's folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipelines.core.alerts import Receivers, alertmanager_config, render_rules, slos
from pipelines.core.settings import Settings
from pipelines.core.spec import read_specs
from pipelines.core.system import write_private

RULES_FILE = "alerts.rules.yml"
"""The rules rendered from the specs, beside prometheus.yml in the platform's folder."""


def prometheus_binary() -> str | None:
    """Prometheus where installed (Debian's `prometheus`; `make tools` installs it)."""
    return shutil.which("prometheus")


def alertmanager_binary() -> str | None:
    """Alertmanager where installed (Debian's `prometheus-alertmanager`; `make tools` installs it)."""
    return shutil.which("prometheus-alertmanager")


def prometheus_config(settings: Settings, alertmanager: bool = False, home: Path | None = None) -> str:
    """Prometheus's config: the scrapes (the Ray head: Serve's request counts and latencies, the
    application's mlcycle_* metrics; Serve's HAProxy; Airflow through the StatsD bridge; itself),
    the rule files (the shipped include/stack/alerts.yml and, with `home`, the pipelines' rules
    there), and with `alertmanager` the Alertmanager of `mlcycle up`. Pure."""
    jobs = {
        "ray": settings.ray_metrics_port,
        "haproxy": settings.haproxy_metrics_port,
        "airflow": settings.statsd_http_port,
        "prometheus": settings.prometheus_port,
    }
    rules = [str(settings.project_dir / "include" / "stack" / "alerts.yml")]  # the Compose stack's rules too
    if home is not None:
        rules.append(str(home / RULES_FILE))
    lines = ["# written by `mlcycle up`; edits are overwritten", "global:", "  scrape_interval: 15s"]
    lines += ["  evaluation_interval: 15s"]  # the rules (Prometheus's default: a minute)
    lines += [f"rule_files: {json.dumps(rules)}"]
    if alertmanager:
        target = f"127.0.0.1:{settings.alertmanager_port}"
        lines += ["alerting:", "  alertmanagers:", "    - static_configs:", f'        - targets: ["{target}"]']
    lines += ["scrape_configs:"]
    for job, port in jobs.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f'      - targets: ["127.0.0.1:{port}"]']
    return "\n".join(lines) + "\n"


def receivers(settings: Settings) -> Receivers:
    """The settings' receivers. Pure."""
    s = settings
    return Receivers(s.alerts_webhook_url, s.alerts_email_to, s.alerts_smtp_smarthost, s.alerts_email_from)


def alertmanager_argv(settings: Settings, binary: str, home: Path) -> list[str]:
    """Alertmanager on 127.0.0.1 alone: no cluster gossip (it would listen on every interface). Pure."""
    return [
        binary,
        f"--config.file={home / 'alertmanager.yml'}",
        f"--storage.path={settings.state_path / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{settings.alertmanager_port}",
        "--cluster.listen-address=",
    ]


def write_configs(settings: Settings, home: Path, prometheus: bool, alertmanager: bool) -> list[str]:
    """Write the configs of the installed ones (mode 600: a webhook URL can be a secret), the rules
    from the valid specs; returns the services whose config changed (to restart)."""
    files: dict[str, dict[Path, str]] = {}
    if prometheus:
        specs, _ = read_specs(settings.specs_path)  # an invalid spec's rules wait for its fix
        files["prometheus"] = {
            home / "prometheus.yml": prometheus_config(settings, alertmanager, home),
            home / RULES_FILE: render_rules(slos(specs)),
        }
    if alertmanager:
        files["alertmanager"] = {home / "alertmanager.yml": alertmanager_config(receivers(settings))}
    changed = []
    for service, texts in files.items():
        if any(not p.exists() or p.read_text() != text for p, text in texts.items()):
            for p, text in texts.items():
                write_private(p, text)
            changed.append(service)
    return changed
