"""Alerts: the Prometheus rules rendered from the pipelines' specs, Alertmanager's config, and the
alerts of events that are no metric (a canary rolled back, drift found, a run failed), as
Alertmanager's API v2 takes them. Pure; `pipelines.io.alerts` sends and reads them.

The serving SLO of a pipeline is its spec's canary SLO (`canary.max_error_rate`,
`canary.max_p99_latency_ms`): what a challenger must meet to be promoted, the champion must keep.
The error rate is the share of a pipeline's answered requests (not the shadow's) whose status is
not `ok` (`error`, `unavailable`: the online store is down, `shed`: over capacity), from the
ingress's `mlcycle_requests` counter, which Ray exports as `ray_mlcycle_requests_total`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import yaml

REQUESTS = "ray_mlcycle_requests_total"
LATENCY_BUCKETS = "ray_mlcycle_latency_ms_bucket"
EVENT_HOLD = timedelta(hours=1)
"""How long an event's alert stays active in Alertmanager (and in `mlcycle alerts`)."""


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window burn-rate alert (the SRE workbook's): it fires while the error rate over
    both the long and the short window exceeds `factor` times the SLO's error budget."""

    long: str
    short: str
    factor: float
    severity: str


@dataclass(frozen=True)
class RuleTiming:
    """The windows the rules look at (tests shrink them; the defaults are the SRE workbook's)."""

    burn: tuple[BurnWindow, ...] = (
        BurnWindow("1h", "5m", 14.4, "critical"),  # 2 % of a 30-day budget in an hour
        BurnWindow("6h", "30m", 6.0, "critical"),  # 5 % in six hours
        BurnWindow("3d", "6h", 1.0, "warning"),  # 10 % in three days
    )
    latency_window: str = "5m"
    latency_for: str = "10m"
    unavailable_window: str = "5m"
    unavailable_for: str = "2m"


@dataclass(frozen=True)
class Slo:
    """A pipeline's serving SLO, from its spec."""

    pipeline: str
    max_error_rate: float
    max_p99_latency_ms: float


def slos(specs: Iterable[Any]) -> list[Slo]:
    """The serving SLO of each spec (its canary's). Pure."""
    return [Slo(s.name, s.canary.max_error_rate, s.canary.max_p99_latency_ms) for s in specs]


def error_ratio(pipeline: str, window: str) -> str:
    """PromQL: the pipeline's share of requests not answered `ok` over `window`. Pure."""
    sel = f'pipeline="{pipeline}",shadow="false"'
    bad = f'sum by (pipeline) (rate({REQUESTS}{{{sel},status!="ok"}}[{window}]))'
    return f"({bad} / sum by (pipeline) (rate({REQUESTS}{{{sel}}}[{window}])))"


def pipeline_rules(slo: Slo, timing: RuleTiming = RuleTiming()) -> list[dict[str, Any]]:
    """The alerting rules of one pipeline: error-budget burn (one per window pair), p99 over the
    SLO, features unavailable. Pure."""
    name = slo.pipeline
    rules: list[dict[str, Any]] = []
    for w in timing.burn:
        threshold = w.factor * slo.max_error_rate
        rules.append(
            {
                "alert": "MlcycleErrorBudgetBurn",
                "expr": f"{error_ratio(name, w.long)} > {threshold:g} and {error_ratio(name, w.short)} > {threshold:g}",
                "labels": {"pipeline": name, "severity": w.severity, "window": w.long},
                "annotations": {
                    "summary": f"{name}: errors burn the SLO's budget {w.factor:g}x over {w.long} and {w.short}",
                    "description": f"error rate over {w.long} and over {w.short} above {threshold:.2%} "
                    f"(the SLO's {slo.max_error_rate:.2%}, canary.max_error_rate)",
                },
            }
        )
    p99 = (
        f'histogram_quantile(0.99, sum by (pipeline, le) (rate({LATENCY_BUCKETS}{{pipeline="{name}"}}'
        f"[{timing.latency_window}])))"
    )
    rules.append(
        {
            "alert": "MlcycleLatencyP99OverSlo",
            "expr": f"{p99} > {slo.max_p99_latency_ms:g}",
            "for": timing.latency_for,
            "labels": {"pipeline": name, "severity": "warning"},
            "annotations": {
                "summary": f"{name}: p99 latency over {timing.latency_window} above the SLO's "
                f"{slo.max_p99_latency_ms:g} ms (canary.max_p99_latency_ms)"
            },
        }
    )
    down = f'{REQUESTS}{{pipeline="{name}",status="unavailable"}}'
    unavailable = f"sum by (pipeline) (rate({down}[{timing.unavailable_window}]))"
    rules.append(
        {
            "alert": "MlcycleFeaturesUnavailable",
            "expr": f"{unavailable} > 0",
            "for": timing.unavailable_for,
            "labels": {"pipeline": name, "severity": "critical"},
            "annotations": {
                "summary": f"{name}: the online feature store does not answer; requests get 503 features_unavailable"
            },
        }
    )
    return rules


def render_rules(
    slo_list: Iterable[Slo], timing: RuleTiming = RuleTiming(), before: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The rule file (one group per pipeline, after the groups `before`) for Prometheus's
    `rule_files` or a PrometheusRule's spec. Pure."""
    groups = [*before, *({"name": f"mlcycle-{s.pipeline}", "rules": pipeline_rules(s, timing)} for s in slo_list)]
    head = "# written by mlcycle from the pipelines' specs (pipelines/core/alerts.py); edits are overwritten\n"
    return head + yaml.safe_dump({"groups": groups}, sort_keys=False, width=200)


@dataclass(frozen=True)
class Receivers:
    """Where Alertmanager sends what fires (the settings' `MLCYCLE_ALERTS_*`)."""

    webhook_url: str | None = None
    email_to: str | None = None
    smtp_smarthost: str | None = None
    email_from: str = "mlcycle@localhost"


def alertmanager_config(
    receivers: Receivers, group_wait: str = "30s", group_interval: str = "5m", repeat_interval: str = "4h"
) -> str:
    """Alertmanager's config: every alert grouped by name and pipeline, to the one receiver
    `mlcycle` (a webhook, e-mail, both, or neither: then it is only listed). Pure."""
    receiver: dict[str, Any] = {"name": "mlcycle"}
    if receivers.webhook_url:
        receiver["webhook_configs"] = [{"url": receivers.webhook_url, "send_resolved": True}]
    if receivers.email_to and receivers.smtp_smarthost:
        receiver["email_configs"] = [
            {
                "to": receivers.email_to,
                "from": receivers.email_from,
                "smarthost": receivers.smtp_smarthost,
                "send_resolved": True,
            }
        ]
    route = {
        "receiver": "mlcycle",
        "group_by": ["alertname", "pipeline"],
        "group_wait": group_wait,
        "group_interval": group_interval,
        "repeat_interval": repeat_interval,
    }
    head = "# written by mlcycle from the MLCYCLE_ALERTS_* settings; edits are overwritten\n"
    return head + yaml.safe_dump({"route": route, "receivers": [receiver]}, sort_keys=False)


def _stamp(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_alert(
    alertname: str,
    pipeline: str,
    summary: str,
    now: datetime,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """One alert of an event, as Alertmanager's `POST /api/v2/alerts` takes it: active from `now`
    for `EVENT_HOLD` (an event does not resolve itself). Pure."""
    alert: dict[str, Any] = {
        "labels": {"alertname": alertname, "pipeline": pipeline, "severity": "warning", **(labels or {})},
        "annotations": {"summary": summary, **(annotations or {})},
        "startsAt": _stamp(now),
        "endsAt": _stamp(now + EVENT_HOLD),
    }
    if url:
        alert["generatorURL"] = url
    return alert


def rollback_alert(pipeline: str, challenger: int, champion: int, reason: str, now: datetime) -> dict[str, Any]:
    """A canary rolled back (or a shadow run rejected its challenger). Pure."""
    return event_alert(
        "MlcycleCanaryRolledBack",
        pipeline,
        f"{pipeline}: v{challenger} rolled back, v{champion} stays champion: {reason}",
        now,
        labels={"version": str(challenger)},
    )


def drift_alert(pipeline: str, champion: int, status: str, reasons: list[str], now: datetime) -> dict[str, Any]:
    """The drift check found drift or a performance drop in what the champion served. Pure."""
    return event_alert(
        "MlcycleDriftFound",
        pipeline,
        f"{pipeline}: {status} found in v{champion}'s traffic: {'; '.join(reasons)}",
        now,
        labels={"version": str(champion), "finding": status},
    )


def failure_alerts(
    pipeline: str,
    dag_id: str,
    task_id: str,
    run_id: str,
    tries: int,
    log_url: str | None,
    error: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """A lifecycle, drift or retention task failed for good: `MlcycleRunFailed`, and where it was
    retried (`tries` > 1), `MlcycleStepRetriesExhausted` too. Pure."""
    labels = {"dag_id": dag_id, "task_id": task_id, "severity": "critical"}
    notes = {"run_id": run_id, "error": error[:500], **({"log_url": log_url} if log_url else {})}
    summary = f"{dag_id}: task {task_id} failed ({error[:200]})"
    out = [event_alert("MlcycleRunFailed", pipeline, summary, now, labels, notes, log_url)]
    if tries > 1:
        summary = f"{dag_id}: task {task_id} failed after {tries} tries"
        out.append(event_alert("MlcycleStepRetriesExhausted", pipeline, summary, now, labels, notes, log_url))
    return out


def by_pipeline(alerts: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """Alertmanager's `GET /api/v2/alerts` answer as rows per pipeline (`-` for one without a
    pipeline label), each `{alertname, severity, since, summary}`, sorted. Pure."""
    out: dict[str, list[dict[str, str]]] = {}
    for a in alerts:
        labels = a.get("labels", {})
        row = {
            "alertname": labels.get("alertname", "?"),
            "severity": labels.get("severity", ""),
            "since": str(a.get("startsAt", ""))[:19],
            "summary": a.get("annotations", {}).get("summary", ""),
        }
        out.setdefault(labels.get("pipeline", "-"), []).append(row)
    return {p: sorted(rows, key=lambda r: (r["since"], r["alertname"])) for p, rows in sorted(out.items())}


def render_firing(rows: Mapping[str, Sequence[Mapping[str, str]]]) -> str:
    """The `mlcycle alerts` table. Pure."""
    if not rows:
        return "no alert fires"
    lines = []
    for pipeline, alerts in rows.items():
        lines.append(f"{pipeline}:")
        lines += [f"  {r['alertname']:<28} {r['severity']:<9} since {r['since']}  {r['summary']}" for r in alerts]
    return "\n".join(lines)
