"""The embedded platform's pure parts: supervisord's config, Airflow's database URL, `supervisorctl
status`, `mlcycle run`'s conf and live view, `mlcycle env`."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import Settings
from pipelines.io.clientenv import client_env, render_env, tracking_server_url
from pipelines.io.runs import headline
from pipelines.local.follow import changes, parse_conf, task_key, task_line
from pipelines.local.monitoring import prometheus_config
from pipelines.local.platform import (
    airflow_db_url,
    airflow_service_env,
    parse_status,
    render_ps,
    services,
    supervisord_conf,
)


def test_supervisord_runs_every_service_restarted_and_logged_on_its_socket(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    text = supervisord_conf(settings, "/venv/bin/mlcycle", {"MLCYCLE_STATE_DIR": str(tmp_path), "X": "a%20b"})
    conf = configparser.RawConfigParser()
    conf.read_string(text)
    programs = {s.removeprefix("program:") for s in conf.sections() if s.startswith("program:")}
    assert programs == {s.name for s in services(settings)}
    assert conf["unix_http_server"]["chmod"] == "0700" and "inet_http_server" not in conf
    scheduler = conf["program:airflow-scheduler"]
    assert scheduler["command"] == "/venv/bin/mlcycle up --exec airflow-scheduler"
    assert scheduler["autorestart"] == "true" and scheduler["killasgroup"] == "true"
    assert scheduler["stdout_logfile"] == str(tmp_path / "platform" / "logs" / "airflow-scheduler.log")
    assert 'X="a%%20b"' in scheduler["environment"]  # supervisord would expand a bare %
    assert int(conf["program:ray"]["priority"]) < int(conf["program:serve-sync"]["priority"])


def test_with_prometheus_installed_it_and_the_statsd_bridge_are_services_and_scrape_the_platform(
    tmp_path: Path,
) -> None:
    import yaml

    settings = Settings(state_dir=tmp_path, prometheus_port=19090, statsd_http_port=19102, ray_metrics_port=19103)
    assert {s.name for s in services(settings, prometheus=True)} - {s.name for s in services(settings)} == {
        "prometheus",
        "statsd-exporter",
    }
    text = supervisord_conf(settings, "/venv/bin/mlcycle", {}, prometheus=True)
    conf = configparser.RawConfigParser()
    conf.read_string(text)
    assert conf["program:prometheus"]["command"] == "/venv/bin/mlcycle up --exec prometheus"
    # the bridge starts before Airflow sends to it
    assert int(conf["program:statsd-exporter"]["priority"]) < int(conf["program:airflow-scheduler"]["priority"])
    scraped = yaml.safe_load(prometheus_config(settings))
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in scraped["scrape_configs"]}
    assert targets == {
        "ray": ["127.0.0.1:19103"],
        "haproxy": [f"127.0.0.1:{settings.haproxy_metrics_port}"],
        "airflow": ["127.0.0.1:19102"],
        "prometheus": ["127.0.0.1:19090"],
    }
    env = airflow_service_env(settings, "postgresql://postgres:@/postgres?host=/pg", statsd=True)
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "True"
    assert env["AIRFLOW__METRICS__STATSD_PORT"] == str(settings.statsd_udp_port)
    assert "AIRFLOW__METRICS__STATSD_ON" not in airflow_service_env(
        settings, "postgresql://postgres:@/postgres?host=/pg"
    )


def test_airflow_metadata_url_on_the_embedded_socket_or_a_server() -> None:
    socket = airflow_db_url("postgresql://postgres:@/postgres?host=/state/pg")
    options = "options=-cidle_in_transaction_session_timeout=60s"  # a killed scheduler's lock is freed
    assert socket == f"postgresql+psycopg://postgres:@/airflow?host=/state/pg&port=5432&{options}"
    tcp = airflow_db_url("postgresql://ml:p%40ss@db:5433/platform", driver="psycopg_async")
    assert tcp == f"postgresql+psycopg_async://ml:p%40ss@db:5433/airflow?{options}"


def test_supervisorctl_status_and_the_ps_table() -> None:
    out = "ray                RUNNING   pid 12, uptime 0:01:02\nmlflow             BACKOFF   Exited too quickly\n"
    assert parse_status(out) == {
        "ray": {"state": "RUNNING", "detail": "pid 12, uptime 0:01:02"},
        "mlflow": {"state": "BACKOFF", "detail": "Exited too quickly"},
    }
    table = render_ps({"ray": {"state": "RUNNING", "healthy": True, "url": "http://127.0.0.1:8000"}})
    assert "ray" in table and "healthy" in table and "http://127.0.0.1:8000" in table


def test_run_conf_values_read_as_json_else_strings() -> None:
    conf = parse_conf(["n_trials=4", "as_of=2026-06-30", "source_uri=s3://b/x.csv", "force=true", "x="])
    assert conf == {"n_trials": 4, "as_of": "2026-06-30", "source_uri": "s3://b/x.csv", "force": True, "x": ""}
    with pytest.raises(InvalidArgument, match="expected key=value"):
        parse_conf(["n_trials"])


def test_the_live_view_prints_each_change_once_in_start_order() -> None:
    seen: dict[str, str | None] = {}
    tis = [
        {"task_id": "ingest", "map_index": -1, "state": "success", "start_date": "1", "duration": 0.5},
        {"task_id": "trials", "map_index": 1, "state": "running", "start_date": "3", "duration": None},
        {"task_id": "validate", "map_index": -1, "state": "running", "start_date": "2", "duration": None},
        {"task_id": "train", "map_index": -1, "state": None, "start_date": None, "duration": None},
    ]
    assert [task_key(t) for t in changes(seen, tis)] == ["ingest", "validate", "trials[1]"]
    assert changes(seen, tis) == []
    tis[2]["state"] = "success"
    assert [task_key(t) for t in changes(seen, tis)] == ["validate"]
    assert task_line(tis[0], "rows: 10").split() == ["ingest", "success", "0.5s", "rows:", "10"]


def test_headline_is_the_steps_result_in_one_line() -> None:
    assert headline("train", {"best_trial": 3, "metric": "val_roc_auc", "best_value": 0.81}) == (
        "best: trial 3: val_roc_auc=0.8100"
    )
    assert headline("evaluate", {"verdict": {"passed": False, "reasons": ["worse"]}}) == "verdict: failed"
    assert headline("canary", {"outcome": "rolled_back", "reason": "p99"}) == "rolled_back: p99"
    assert headline("ingest", {"reason": "no new data"}) == "skipped: no new data"


def test_mlcycle_env_names_what_each_plain_client_reads(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:8333", artifact_root="s3://b/ml")
    text = render_env(client_env(settings, "postgresql://ml:s3cr%20t@db:5433/platform", "churn"))
    values = dict(t.split("=", 1) for t in shlex.split(text, comments=True) if t != "export")
    assert values["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"  # the server the UI runs, not the database
    assert values["MLCYCLE_FEAST_PROJECT"] == "churn" and values["MLCYCLE_FEAST_PG_PORT"] == "5433"
    assert values["PGHOST"] == "db" and values["PGPASSWORD"] == "s3cr t" and values["PGDATABASE"] == "platform"
    assert values["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:8333" and values["MLFLOW_S3_ENDPOINT_URL"]
    assert values["MLCYCLE_ARTIFACT_ROOT"] == "s3://b/ml"
    assert "# psql and any libpq client" in text
    embedded = Settings(state_dir=tmp_path, mlflow_port=5123)
    assert tracking_server_url(embedded) == "http://127.0.0.1:5123"  # `mlcycle up`'s `mlflow server`
    cluster = Settings(state_dir=tmp_path, mlflow_ui_url="https://mlflow.ml.example.com/", mlflow_port=5123)
    assert tracking_server_url(cluster) == "https://mlflow.ml.example.com"


def test_the_platform_api_wants_a_login_and_answers_errors_as_json() -> None:
    from fastapi.testclient import TestClient

    from plugins.mlcycle_plugin import MlcyclePlugin

    apps = {a["url_prefix"]: a["app"] for a in MlcyclePlugin.fastapi_apps}
    client = TestClient(apps["/api/ml"])
    resources = [("GET", p) for p in ("/models", "/models/churn/versions/1", "/deployments", "/experiments")]
    resources += [("GET", "/features"), ("GET", "/health")]
    reads = [("GET", "/pipelines"), ("GET", "/pipelines/churn/models"), ("POST", "/pipelines/churn/runs")]
    for method, path in reads + resources:
        answer = client.request(method, path, json={"conf": {}})
        assert answer.status_code == 401 and answer.json() == {
            "error": "unauthorized",
            "reason": "Not authenticated",
            "field": None,
        }
    listing = apps["/api/ml"].openapi()["paths"]["/pipelines"]["get"]
    assert [p["name"] for p in listing["parameters"]] == ["limit", "offset"]  # paged; the user is no parameter
    described = apps["/api/ml"].openapi()["paths"]
    for path in ("/models", "/deployments", "/experiments", "/features"):  # paged, one pipeline or all
        assert [p["name"] for p in described[path]["get"]["parameters"]] == ["pipeline", "limit", "offset"]
    for path in (*(p for _, p in resources[:4]), "/features", "/health"):
        operation = next(iter(described[path.replace("churn", "{pipeline}").replace("/1", "/{version}")].values()))
        assert operation["summary"] and len(operation["description"]) > 80, path
        assert operation["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    schemas = apps["/api/ml"].openapi()["components"]["schemas"]
    assert set(schemas["Health"]["properties"]) == {"status", "down", "services"}
    assert {"next_offset", "total", "items"} <= set(schemas["ModelPage"]["properties"])
    page_paths = apps["/mlcycle"].openapi()["paths"]  # the page app describes itself too
    assert {"/page", "/artifacts/{dag_id}/{run_id}/{step}/{name}"} <= set(page_paths)


def test_the_services_links_point_at_the_tracking_server_mlcycle_env_names(tmp_path: Path) -> None:
    from pipelines.local.platform import base_env

    settings = Settings(state_dir=tmp_path, mlflow_port=5123)
    env = base_env(settings)
    assert env["MLCYCLE_MLFLOW_UI_URL"] == "http://127.0.0.1:5123" and env["MLCYCLE_MLFLOW_PORT"] == "5123"
    # a service reading its settings from that environment names the same server as `mlcycle env`
    assert tracking_server_url(Settings(state_dir=tmp_path, mlflow_ui_url=env["MLCYCLE_MLFLOW_UI_URL"])) == (
        "http://127.0.0.1:5123"
    )
