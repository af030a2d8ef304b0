"""Airflow's StatsD metrics for Prometheus: a small StatsD (UDP) -> `/metrics` bridge.

Airflow emits StatsD; Prometheus scrapes. The usual bridge, prometheus/statsd_exporter, is not
packaged by Debian or PyPI, so the Compose stack runs this one (`mlcycle statsd-exporter`).
Counters (`c`) become `<name>_total`, gauges (`g`, with `+n`/`-n` deltas) gauges, timers and
histograms (`ms`, `h`, `d`) summaries in seconds. Names are sanitised the way statsd_exporter
does without a mapping: every character outside `[a-zA-Z0-9_:]` becomes `_`. Malformed lines are
counted in `statsd_exporter_bad_lines_total` and otherwise ignored.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any

_LINE = re.compile(
    r"^(?P<name>[^:|]+):(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\|(?P<kind>c|g|ms|h|d|s)"
    r"(?:\|@(?P<rate>\d*\.?\d+))?(?:\|#[^|]*)?$"
)


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    kind: str  # counter | gauge | gauge_delta | timer | set
    rate: float = 1.0


def metric_name(raw: str) -> str:
    """A Prometheus metric name from a StatsD one. Pure."""
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", raw.strip())
    return f"_{name}" if name[:1].isdigit() else name


def parse(packet: str) -> tuple[list[Sample], int]:
    """The samples of one UDP packet (lines), and how many lines were malformed. Pure."""
    samples: list[Sample] = []
    bad = 0
    for line in packet.splitlines():
        line = line.strip()
        if not line:
            continue
        m = _LINE.match(line)
        rate = float(m.group("rate")) if m and m.group("rate") else 1.0
        if not m or not metric_name(m.group("name")) or not 0 < rate <= 1:
            bad += 1
            continue
        raw_value, kind = m.group("value"), m.group("kind")
        value = float(raw_value)
        if kind == "c":
            samples.append(Sample(metric_name(m.group("name")), value / rate, "counter", rate))
        elif kind == "g":
            delta = raw_value[0] in "+-"
            samples.append(Sample(metric_name(m.group("name")), value, "gauge_delta" if delta else "gauge"))
        elif kind == "s":
            samples.append(Sample(metric_name(m.group("name")), value, "set"))
        else:  # ms, h, d: durations in milliseconds (Airflow's timers)
            samples.append(Sample(metric_name(m.group("name")), value / 1000.0, "timer", rate))
    return samples, bad


class Bridge:
    """The metrics seen so far, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()
        self.metrics: dict[tuple[str, str], Any] = {}
        self.bad = Counter("statsd_exporter_bad_lines", "malformed StatsD lines", registry=self.registry)

    def _metric(self, name: str, kind: str) -> Any:
        from prometheus_client import Counter, Gauge, Summary

        family = {"counter": "counter", "gauge": "gauge", "gauge_delta": "gauge", "set": "gauge"}.get(kind, "timer")
        key = (name, family)
        if key not in self.metrics:
            cls = {"counter": Counter, "gauge": Gauge, "timer": Summary}[family]
            self.metrics[key] = cls(name, f"StatsD {family} {name}", registry=self.registry)
        return self.metrics[key]

    def apply(self, packet: str) -> None:
        samples, bad = parse(packet)
        if bad:
            self.bad.inc(bad)
        for s in samples:
            try:
                metric = self._metric(s.name, s.kind)
            except ValueError:  # the name is taken by another family (a counter and a gauge alike)
                self.bad.inc()
                continue
            if s.kind == "counter":
                metric.inc(max(s.value, 0.0))
            elif s.kind == "gauge_delta":
                metric.inc(s.value)
            elif s.kind in ("gauge", "set"):
                metric.set(s.value)
            else:
                metric.observe(s.value)

    def serve(self, host: str, udp_port: int, http_port: int) -> None:
        """Listen for StatsD on `udp_port` and serve `/metrics` on `http_port`; runs until killed."""
        from prometheus_client import start_http_server

        start_http_server(http_port, addr=host, registry=self.registry)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, udp_port))
            while True:
                data, _ = sock.recvfrom(65535)
                self.apply(data.decode("utf-8", "replace"))
