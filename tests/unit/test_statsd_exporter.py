"""The StatsD -> Prometheus bridge: parsing (pure) and what a scrape shows."""

from __future__ import annotations

import pytest

from pipelines.local.statsd_exporter import Bridge, Sample, metric_name, parse


def test_parse_each_kind() -> None:
    packet = (
        "airflow.scheduler_heartbeat:1|c\n"
        "airflow.ti.finish.churn_lifecycle.train.success:2|c|@0.5\n"
        "airflow.executor.open_slots:30|g\n"
        "airflow.pool.queued_slots.default_pool:-2|g\n"
        "airflow.dagrun.duration.success.churn_lifecycle:1500|ms\n"
        "airflow.users:42|s\n"
    )
    samples, bad = parse(packet)
    assert bad == 0
    assert samples == [
        Sample("airflow_scheduler_heartbeat", 1.0, "counter"),
        Sample("airflow_ti_finish_churn_lifecycle_train_success", 4.0, "counter", 0.5),  # scaled by the rate
        Sample("airflow_executor_open_slots", 30.0, "gauge"),
        Sample("airflow_pool_queued_slots_default_pool", -2.0, "gauge_delta"),
        Sample("airflow_dagrun_duration_success_churn_lifecycle", 1.5, "timer"),  # ms -> seconds
        Sample("airflow_users", 42.0, "set"),
    ]


@pytest.mark.parametrize(
    "line", ["no-value", "x:|c", "x:1|zz", "x:abc|c", ":1|c", "x:1|c|@0", "x:1|c|@2", "x:1|c|@abc"]
)
def test_malformed_lines_are_counted_not_raised(line: str) -> None:
    assert parse(line) == ([], 1)


def test_names_are_sanitised() -> None:
    assert metric_name("airflow.dag.churn-lifecycle.train.duration") == "airflow_dag_churn_lifecycle_train_duration"
    assert metric_name("9lives") == "_9lives"


def test_a_scrape_shows_what_was_sent() -> None:
    from prometheus_client import generate_latest

    bridge = Bridge()
    bridge.apply("airflow.ok:1|c\nairflow.ok:2|c\nairflow.slots:10|g\nairflow.slots:-3|g\nairflow.t:250|ms\nbad")
    bridge.apply("airflow.ok:5|g")  # the same name as another kind: counted as bad, nothing lost
    text = generate_latest(bridge.registry).decode()
    assert "airflow_ok_total 3.0" in text
    assert "airflow_slots 7.0" in text
    assert "airflow_t_count 1.0" in text and "airflow_t_sum 0.25" in text
    assert "statsd_exporter_bad_lines_total 2.0" in text
