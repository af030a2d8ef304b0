"""The alerts' pure parts: the rules rendered from the specs (checked and run by Prometheus's own
`promtool` on synthetic series), Alertmanager's config (`amtool check-config`), the events'
alerts, the failure notifier's reading of Airflow's context, `mlcycle alerts`' table, and where
`mlcycle up` wires them."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from pipelines.core import alerts
from pipelines.core.settings import PROJECT_DIR as PROJECT
from pipelines.core.settings import Settings
from pipelines.core.spec import read_specs
from pipelines.local.monitoring import alertmanager_argv, prometheus_config, write_configs
from pipelines.local.platform import base_env, services, supervisord_conf

NOW = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)
SLO = alerts.Slo("churn", max_error_rate=0.01, max_p99_latency_ms=250.0)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make tools` installs it")
    return path


def series(status: str, values: str, shadow: bool = False) -> dict[str, str]:
    labels = f'pipeline="churn",shadow="{str(shadow).lower()}",status="{status}",version="1"'
    return {"series": f"{alerts.REQUESTS}{{{labels}}}", "values": values}


def expected(rules: list[dict[str, Any]], name: str, **match: str) -> list[dict[str, Any]]:
    """The alerts that rules named `name` (whose labels include `match`) raise when they fire."""
    return [
        {"exp_labels": r["labels"], "exp_annotations": r["annotations"]}
        for r in rules
        if r["alert"] == name and match.items() <= r["labels"].items()
    ]


def promtool_test(tmp_path: Path, rules: str, cases: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": cases})
    )
    return subprocess.run(
        [tool("promtool"), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_the_rules_of_every_shipped_spec_pass_promtool_check(tmp_path: Path) -> None:
    specs, errors = read_specs(Settings().specs_path)
    assert specs and not errors
    path = tmp_path / "rules.yml"
    path.write_text(alerts.render_rules(alerts.slos(specs)))
    check = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    groups = yaml.safe_load(path.read_text())["groups"]
    assert [g["name"] for g in groups] == [f"mlcycle-{s.name}" for s in specs]
    names = {r["alert"] for r in groups[0]["rules"]}
    assert names == {"MlcycleErrorBudgetBurn", "MlcycleLatencyP99OverSlo", "MlcycleFeaturesUnavailable"}


def test_an_error_burst_fires_the_fast_burn_within_minutes_and_a_calm_hour_fires_nothing(tmp_path: Path) -> None:
    rules = alerts.pipeline_rules(SLO)
    # 100 ok requests a minute for two hours; from minute 61, 100 errors a minute too (50 %)
    burst = [series("ok", "0+100x120"), series("error", "0x60 0+100x60")]
    burn = [
        {"eval_time": "59m", "alertname": "MlcycleErrorBudgetBurn", "exp_alerts": []},
        # 400 errors in (from minute 61): 6 % of the last hour's requests, under 14.4 x 1 %; 5.8 % of
        # what the 6 h window holds (65 minutes), under 6 x 1 %: only the ticket pair (1 x over 3 d and 6 h)
        {
            "eval_time": "65m",
            "alertname": "MlcycleErrorBudgetBurn",
            "exp_alerts": expected(rules, "MlcycleErrorBudgetBurn", window="3d"),
        },
        # 20 minutes in: 25 % over the hour, 50 % over 5 minutes: every window pair fires
        {
            "eval_time": "80m",
            "alertname": "MlcycleErrorBudgetBurn",
            "exp_alerts": expected(rules, "MlcycleErrorBudgetBurn"),
        },
    ]
    # 0.5 % errors for two hours: under the SLO's 1 %, no window pair fires
    calm = [series("ok", "0+199x120"), series("error", "0+1x120")]
    quiet = [{"eval_time": f"{m}m", "alertname": "MlcycleErrorBudgetBurn", "exp_alerts": []} for m in (30, 90, 120)]
    # the shadow's errors are not the pipeline's
    shadow = [series("ok", "0+100x120"), series("error", "0+100x120", shadow=True)]
    cases: list[dict[str, Any]] = [
        {"interval": "1m", "input_series": burst, "alert_rule_test": burn},
        {"interval": "1m", "input_series": calm, "alert_rule_test": quiet},
        {"interval": "1m", "input_series": shadow, "alert_rule_test": quiet},
    ]
    run = promtool_test(tmp_path, alerts.render_rules([SLO]), cases)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_slow_burn_fires_alone_on_a_steady_leak(tmp_path: Path) -> None:
    rules = alerts.pipeline_rules(SLO)
    # 2 % errors for four days: twice the budget, far under the fast pairs' 14.4x and 6x
    leak = [series("ok", "0+98x5760"), series("error", "0+2x5760")]
    tests = [
        {
            "eval_time": "4d",
            "alertname": "MlcycleErrorBudgetBurn",
            "exp_alerts": expected(rules, "MlcycleErrorBudgetBurn", window="3d"),
        }
    ]
    run = promtool_test(
        tmp_path, alerts.render_rules([SLO]), [{"interval": "1m", "input_series": leak, "alert_rule_test": tests}]
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_p99_over_the_slo_and_features_unavailable_fire_after_their_for(tmp_path: Path) -> None:
    rules = alerts.pipeline_rules(SLO)
    bucket = alerts.LATENCY_BUCKETS

    def le(bound: str, values: str) -> dict[str, str]:
        return {"series": f'{bucket}{{pipeline="churn",version="1",le="{bound}"}}', "values": values}

    # every request takes 200-500 ms from minute 30 (the SLO: p99 250 ms)
    slow = [le("200.0", "0+100x30 3000x30"), le("500.0", "0+100x60"), le("+Inf", "0+100x60")]
    latency = [
        {"eval_time": "29m", "alertname": "MlcycleLatencyP99OverSlo", "exp_alerts": []},
        {
            "eval_time": "50m",
            "alertname": "MlcycleLatencyP99OverSlo",
            "exp_alerts": expected(rules, "MlcycleLatencyP99OverSlo"),
        },
    ]
    down = [series("ok", "0+100x30 3000x30"), series("unavailable", "0x30 0+100x30")]
    unavailable = [
        {"eval_time": "31m", "alertname": "MlcycleFeaturesUnavailable", "exp_alerts": []},  # within its `for`
        {
            "eval_time": "40m",
            "alertname": "MlcycleFeaturesUnavailable",
            "exp_alerts": expected(rules, "MlcycleFeaturesUnavailable"),
        },
    ]
    cases = [
        {"interval": "1m", "input_series": slow, "alert_rule_test": latency},
        {"interval": "1m", "input_series": down, "alert_rule_test": unavailable},
    ]
    run = promtool_test(tmp_path, alerts.render_rules([SLO]), cases)
    assert run.returncode == 0, run.stdout + run.stderr


def test_alertmanager_config_routes_to_the_settings_receivers_and_amtool_accepts_it(tmp_path: Path) -> None:
    both = alerts.Receivers("http://127.0.0.1:9999/hook", "ops@example.org", "smtp.example.org:25")
    conf = yaml.safe_load(alerts.alertmanager_config(both, group_wait="1s"))
    (receiver,) = conf["receivers"]
    assert receiver["webhook_configs"][0]["url"] == "http://127.0.0.1:9999/hook"
    assert receiver["email_configs"][0]["to"] == "ops@example.org"
    assert conf["route"]["receiver"] == receiver["name"] and conf["route"]["group_by"] == ["alertname", "pipeline"]
    assert conf["route"]["group_wait"] == "1s"
    assert yaml.safe_load(alerts.alertmanager_config(alerts.Receivers()))["receivers"] == [{"name": "mlcycle"}]
    for receivers in (both, alerts.Receivers()):
        path = tmp_path / "am.yml"
        path.write_text(alerts.alertmanager_config(receivers))
        check = subprocess.run([tool("amtool"), "check-config", str(path)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def _stack_alertmanager() -> Any:
    """include/stack/alertmanager.py (the Compose stack's Alertmanager entry point) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stack_alertmanager", PROJECT / "include/stack/alertmanager.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MLCYCLE_ALERTS_WEBHOOK_URL": "http://hooks.internal/mlcycle?token=a'b\"c"},
        {
            "MLCYCLE_ALERTS_WEBHOOK_URL": "https://chat.example.org/hook",
            "MLCYCLE_ALERTS_EMAIL_TO": "ops@example.org",
            "MLCYCLE_ALERTS_SMTP_SMARTHOST": "smtp.example.org:587",
            "MLCYCLE_ALERTS_EMAIL_FROM": "ml@example.org",
        },
        {"MLCYCLE_ALERTS_EMAIL_TO": "ops@example.org", "MLCYCLE_ALERTS_EMAIL_FROM": ""},  # no smarthost: no e-mail
    ],
)
def test_the_compose_stacks_alertmanager_routes_as_mlcycle_up_does_and_amtool_accepts_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The stack's entry point (standard library only, JSON) writes the config `mlcycle up` writes
    from the same MLCYCLE_ALERTS_* values, quotes and all."""
    written = _stack_alertmanager().config(env)
    settings = Settings(
        alerts_webhook_url=env.get("MLCYCLE_ALERTS_WEBHOOK_URL"),
        alerts_email_to=env.get("MLCYCLE_ALERTS_EMAIL_TO"),
        alerts_smtp_smarthost=env.get("MLCYCLE_ALERTS_SMTP_SMARTHOST"),
        alerts_email_from=env.get("MLCYCLE_ALERTS_EMAIL_FROM") or "mlcycle@localhost",
    )
    from pipelines.local.monitoring import receivers

    assert written == yaml.safe_load(alerts.alertmanager_config(receivers(settings)))
    path = tmp_path / "am.yml"
    path.write_text(json.dumps(written))
    check = subprocess.run([tool("amtool"), "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_event_alerts_carry_the_pipeline_and_stay_active_for_the_hold() -> None:
    rolled = alerts.rollback_alert("churn", 3, 2, "p99 400 ms > 250 ms", NOW)
    assert rolled["labels"] == {
        "alertname": "MlcycleCanaryRolledBack",
        "pipeline": "churn",
        "severity": "warning",
        "version": "3",
    }
    assert "v3 rolled back, v2 stays champion" in rolled["annotations"]["summary"]
    assert rolled["startsAt"] == "2026-12-06T20:00:00.000Z" and rolled["endsAt"] == "2026-12-06T21:00:00.000Z"
    drift = alerts.drift_alert("churn", 2, "drift", ["3 of 5 features drifted"], NOW)
    assert drift["labels"]["finding"] == "drift" and "3 of 5 features drifted" in drift["annotations"]["summary"]


def test_a_failure_after_retries_is_a_run_failure_and_retries_exhausted_with_the_log_url() -> None:
    once = alerts.failure_alerts("churn", "churn_drift", "drift", "r1", 1, "http://a/log", "ValueError: x", NOW)
    assert [a["labels"]["alertname"] for a in once] == ["MlcycleRunFailed"]
    thrice = alerts.failure_alerts("churn", "churn_lifecycle", "train", "r2", 3, "http://a/log", "boom", NOW)
    assert [a["labels"]["alertname"] for a in thrice] == ["MlcycleRunFailed", "MlcycleStepRetriesExhausted"]
    for a in thrice:
        assert a["labels"]["pipeline"] == "churn" and a["labels"]["task_id"] == "train"
        assert a["annotations"]["log_url"] == "http://a/log" and a["generatorURL"] == "http://a/log"
    assert "3 tries" in thrice[1]["annotations"]["summary"]


def test_the_notifier_reads_task_run_tries_log_and_error_from_airflows_context() -> None:
    from operators.notifier import failure_fields

    ti = SimpleNamespace(dag_id="churn_lifecycle", task_id="train", run_id="r9", try_number=3, log_url="http://l")
    fields = failure_fields({"ti": ti, "exception": RuntimeError("out of memory")}, "churn")
    assert fields == {
        "pipeline": "churn",
        "dag_id": "churn_lifecycle",
        "task_id": "train",
        "run_id": "r9",
        "tries": 3,
        "log_url": "http://l",
        "error": "RuntimeError: out of memory",
    }


def test_mlcycle_alerts_lists_what_fires_per_pipeline() -> None:
    firing = [
        alerts.rollback_alert("wine", 3, 2, "errors", NOW),
        {
            "labels": {"alertname": "MlcycleRequestLogBacklog", "pipeline": "churn", "severity": "warning"},
            "annotations": {"summary": "s"},
            "startsAt": "2026-12-06T19:00:00Z",
        },
        {"labels": {"alertname": "Watchdog"}, "annotations": {}},
    ]
    rows = alerts.by_pipeline(firing)
    assert list(rows) == ["-", "churn", "wine"]
    assert (
        rows["wine"][0]["alertname"] == "MlcycleCanaryRolledBack" and rows["churn"][0]["since"] == "2026-12-06T19:00:00"
    )
    table = alerts.render_firing(rows)
    assert "wine:" in table and "MlcycleCanaryRolledBack" in table
    assert alerts.render_firing({}) == "no alert fires"


def test_up_runs_alertmanager_on_loopback_and_prometheus_sends_to_it_with_the_rules(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, alertmanager_port=19093, alerts_webhook_url="http://127.0.0.1:1/h")
    assert "alertmanager" in {s.name for s in services(settings, alertmanager=True)}
    assert "alertmanager" not in {s.name for s in services(settings)}
    conf = configparser.RawConfigParser()
    conf.read_string(supervisord_conf(settings, "/venv/bin/mlcycle", {}, prometheus=True, alertmanager=True))
    assert conf["program:alertmanager"]["command"] == "/venv/bin/mlcycle up --exec alertmanager"
    argv = alertmanager_argv(settings, "/usr/bin/prometheus-alertmanager", tmp_path)
    assert "--web.listen-address=127.0.0.1:19093" in argv and "--cluster.listen-address=" in argv
    assert base_env(settings, alertmanager=True)["MLCYCLE_ALERTMANAGER_URL"] == "http://127.0.0.1:19093"
    assert "MLCYCLE_ALERTMANAGER_URL" not in base_env(settings)
    prom = yaml.safe_load(prometheus_config(settings, alertmanager=True, home=tmp_path))
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    assert str(tmp_path / "alerts.rules.yml") in prom["rule_files"]
    assert "alerting" not in yaml.safe_load(prometheus_config(settings))
    assert prom["global"]["evaluation_interval"] == "15s"
    assert write_configs(settings, tmp_path, prometheus=True, alertmanager=True) == ["prometheus", "alertmanager"]
    assert "http://127.0.0.1:1/h" in (tmp_path / "alertmanager.yml").read_text()
    assert (tmp_path / "alertmanager.yml").stat().st_mode & 0o077 == 0
    assert write_configs(settings, tmp_path, prometheus=True, alertmanager=True) == []  # unchanged: no restart
    checks = [
        [tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],  # and the rule files it names
        [tool("amtool"), "check-config", str(tmp_path / "alertmanager.yml")],
    ]
    for argv in checks:
        check = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_a_store_at_or_over_its_limit_alerts_and_one_under_it_or_unlimited_does_not() -> None:
    now = datetime(2026, 12, 6, 21, 0, tzinfo=UTC)
    usage = {"database": 800, "bucket": 5_000}
    assert alerts.fill_alerts(usage, {"database": 1_000, "bucket": None}, now) == []
    (fired,) = alerts.fill_alerts(usage, {"database": 800, "bucket": 10_000}, now)
    assert fired["labels"] == {"alertname": "MlcyclePlatformStorageFull", "severity": "warning", "store": "database"}
    assert "800 bytes, 100% of MLCYCLE_ALERTS_DATABASE_MAX_BYTES (800)" in fired["annotations"]["summary"]
    both = alerts.fill_alerts(usage, {"database": 1, "bucket": 4_000}, now)
    assert [a["labels"]["store"] for a in both] == ["database", "bucket"]
    assert alerts.fill_alerts({}, {"database": 1}, now) == []  # not measured: nothing said


def test_a_dag_file_airflow_cannot_import_fires_after_five_minutes_and_not_before(tmp_path: Path) -> None:
    """The shipped rules (include/stack/alerts.yml): an invalid spec's Broken DAG, as Airflow's
    `dag_processing.import_errors` gauge reaches Prometheus through the StatsD bridge."""
    from pipelines.local.statsd_exporter import metric_name

    shipped = (Path(__file__).resolve().parents[2] / "include" / "stack" / "alerts.yml").read_text()
    rule = next(
        r for g in yaml.safe_load(shipped)["groups"] for r in g["rules"] if r["alert"] == "MlcycleDagImportErrors"
    )
    gauge = "airflow_" + metric_name("dag_processing.import_errors")
    assert gauge in rule["expr"]
    fired = {
        "exp_labels": rule["labels"],
        "exp_annotations": {"summary": rule["annotations"]["summary"].replace("{{ $value }}", "1")},
    }
    cases = [
        {
            "interval": "1m",
            "input_series": [{"series": gauge, "values": "0x10 1x20"}],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "MlcycleDagImportErrors", "exp_alerts": []},
                {"eval_time": "14m", "alertname": "MlcycleDagImportErrors", "exp_alerts": []},  # within its `for`
                {"eval_time": "16m", "alertname": "MlcycleDagImportErrors", "exp_alerts": [fired]},
            ],
        }
    ]
    run = promtool_test(tmp_path, shipped, cases)
    assert run.returncode == 0, run.stdout + run.stderr
