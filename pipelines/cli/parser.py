"""The `mlcycle` argument parser: one function per group of subcommands, each subcommand's handler
set as its `func`. The subcommands appear in `mlcycle --help` in the order they are added here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.cli.approval_commands import add_decisions
from pipelines.cli.commands import (
    RUN_ID_TEMPLATE,
    cmd_batch_show,
    cmd_data_generate,
    cmd_db,
    cmd_env,
    cmd_labels_load,
    cmd_pod_render,
    cmd_runs_show,
    cmd_spec_docs,
    cmd_spec_schema,
    cmd_spec_validate,
    cmd_status,
    cmd_step,
)
from pipelines.cli.platform_commands import (
    cmd_alerts,
    cmd_batch_run,
    cmd_demo,
    cmd_down,
    cmd_drift_demo,
    cmd_mlflow_server,
    cmd_ps,
    cmd_run,
    cmd_serve,
    cmd_stack,
    cmd_statsd_exporter,
    cmd_up,
)
from pipelines.cli.steering_commands import add_steering
from pipelines.cli.team_commands import add_team

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def port(text: str) -> int:
    """An argparse type: a TCP/UDP port, 1-65535. Pure."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {value} (1-65535)")
    return value


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds. Pure."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlcycle", description="DAG-first model lifecycle")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_spec(sub)
    _add_step_pod_data(sub)
    _add_records(sub)
    _add_services(sub)
    _add_platform(sub)
    model = sub.add_parser("model", help="a person's say over a pipeline's models (audited)")
    actions = model.add_subparsers(dest="action", required=True)
    add_decisions(actions)
    add_steering(actions)
    add_team(sub)
    return parser


def _add_spec(sub: Subparsers) -> None:
    """`spec validate | schema | docs`."""
    spec = sub.add_parser("spec", help="pipeline specs").add_subparsers(dest="action", required=True)
    p = spec.add_parser("validate", help="validate spec files")
    p.add_argument("files", nargs="+")
    p.add_argument(
        "--no-data",
        dest="data",
        action="store_false",
        help="skip the check that a file source's path names data on this machine",
    )
    p.set_defaults(func=cmd_spec_validate)
    spec.add_parser("schema", help="print the JSON schema").set_defaults(func=cmd_spec_schema)
    p = spec.add_parser("docs", help="write the configuration reference (docs/configuration.md) from the schema")
    p.add_argument("--check", action="store_true", help="fail when the checked-in file is stale")
    p.set_defaults(func=cmd_spec_docs)


def _add_step_pod_data(sub: Subparsers) -> None:
    """`step`, `pod render`, `data generate`."""
    p = sub.add_parser("step", help="run one step of one run")
    p.add_argument("name")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--force", action="store_true", help="redo a step whose outputs exist")
    p.add_argument("--as-of", help="the run's data instant (ISO 8601; default: now, or the run's own)")
    p.add_argument("--worker", type=int, help="which trial worker this is (step `trials`)")
    p.set_defaults(func=cmd_step)

    pod = sub.add_parser("pod", help="step pods").add_subparsers(dest="action", required=True)
    p = pod.add_parser("render", help="print a step's pod as YAML")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--step", required=True)
    p.add_argument("--run-id", default=RUN_ID_TEMPLATE)
    p.set_defaults(func=cmd_pod_render)

    data = sub.add_parser("data", help="bundled data").add_subparsers(dest="action", required=True)
    p = data.add_parser("generate", help="write the synthetic churn dataset")
    p.add_argument("--out", required=True, help="a .parquet or .csv path")
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--months", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--covariate-drift", type=float, default=0.0)
    p.add_argument("--concept-drift", type=float, default=0.0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.set_defaults(func=cmd_data_generate)


def _add_records(sub: Subparsers) -> None:
    """`db`, `runs show`, `labels load`: the platform database and what it records."""
    p = sub.add_parser("db", help="the platform database")
    p.add_argument("action", choices=["migrate", "url", "stop", "serving-role"])
    p.set_defaults(func=cmd_db)

    runs = sub.add_parser("runs", help="lifecycle runs").add_subparsers(dest="action", required=True)
    p = runs.add_parser("show", help="a run's steps and outputs")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--run-id")
    p.set_defaults(func=cmd_runs_show)

    batch = sub.add_parser("batch", help="batch predictions").add_subparsers(dest="action", required=True)
    p = batch.add_parser("show", help="a pipeline's published batch runs: version, rows, time, outputs")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--limit", type=int, default=20, help="the newest runs shown (default 20)")
    p.set_defaults(func=cmd_batch_show)
    p = batch.add_parser("run", help="trigger <pipeline>_batch on the running platform (REST API v2)")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--as-of", help="score as of this instant (ISO 8601, UTC where no zone; default: the run's time)")
    p.add_argument("--wait", action="store_true", help="follow the run to its end and print its summary")
    p.set_defaults(func=cmd_batch_run)

    labels = sub.add_parser("labels", help="delayed ground truth").add_subparsers(dest="action", required=True)
    p = labels.add_parser("load", help="load labels (entity_id, label[, request_id, observed_at])")
    p.add_argument("--pipeline", required=True)
    p.add_argument("source", help="a .csv/.parquet path, an s3:// URI, or a SELECT query")
    p.add_argument("--url-env", help="with a query: the env variable holding the database URL")
    p.add_argument("--actor", help="who loads them, for the audit (default: the OS user)")
    p.set_defaults(func=cmd_labels_load)


def _add_services(sub: Subparsers) -> None:
    """`serve`, `env`, `status`, `mlflow-server`, `statsd-exporter`."""
    p = sub.add_parser("serve", help="the embedded Ray Serve (a local Ray head on 127.0.0.1); its config")
    p.add_argument(
        "action",
        choices=["start", "stop", "config", "sync"],
        help="start: the head and every champion; config: write include/serve/serve.yaml; sync: every champion",
    )
    p.add_argument("--watch", type=seconds, help="with sync: again every N seconds")
    p.add_argument("--check", action="store_true", help="with config: fail when the checked-in file is stale")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("env", help="the variables plain clients need (MLflow, Feast SDK, psql, boto3), as exports")
    p.add_argument("--pipeline", help="the Feast project to name (default: the first pipeline)")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("status", help="a pipeline's champion, challenger and recent runs")
    p.add_argument("pipeline")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("mlflow-server", help="the MLflow tracking server and UI on the platform database")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=5000)
    p.set_defaults(func=cmd_mlflow_server)

    p = sub.add_parser("statsd-exporter", help="Airflow's StatsD metrics as a Prometheus /metrics endpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--udp-port", type=port, default=9125)
    p.add_argument("--http-port", type=port, default=9102)
    p.set_defaults(func=cmd_statsd_exporter)


def _add_platform(sub: Subparsers) -> None:
    """`stack`, `up`, `down`, `ps`, `run`, `demo`, `drift-demo`."""
    p = sub.add_parser("stack", help="the Compose stack: its .env of secrets, up, down, status")
    p.add_argument("action", choices=["env", "up", "down", "status"])
    p.add_argument("--env-file", type=Path, default=Path(".env"), help="default: .env")
    p.add_argument("--project", default="mlcycle", help="with env: the Compose project name")
    p.add_argument("--free-ports", action="store_true", help="with env: publish on free ports (tests)")
    p.add_argument("--volumes", action="store_true", help="with down: also delete the data volumes")
    p.add_argument("--timeout", type=seconds, default=900, help="with up: seconds to wait for health")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("up", help="the embedded platform's services (Airflow, MLflow UI, Ray Serve) under supervisord")
    p.add_argument("--timeout", type=seconds, default=600, help="seconds to wait for every service to be healthy")
    p.add_argument("--exec", metavar="SERVICE", help=argparse.SUPPRESS)  # supervisord's program command
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the platform's services and its database (the data stays)").set_defaults(
        func=cmd_down
    )
    sub.add_parser("ps", help="the platform's services, their URLs and health").set_defaults(func=cmd_ps)
    p = sub.add_parser(
        "alerts",
        help="what fires now, per pipeline (Alertmanager's active alerts); `rules`: write the chart's "
        "PrometheusRule groups from the specs; `config`: print an Alertmanager config of MLCYCLE_ALERTS_*",
    )
    p.add_argument("action", nargs="?", choices=["rules", "config"])
    p.add_argument("--check", action="store_true", help="with rules: exit 1 when the chart's copy is stale")
    p.add_argument("--pipeline", help="only this pipeline's")
    p.add_argument("--json", action="store_true", help="the rows as JSON")
    p.set_defaults(func=cmd_alerts)
    p = sub.add_parser("run", help="trigger <pipeline>_lifecycle on the running platform (REST API v2)")
    p.add_argument("pipeline")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a run param (repeatable)")
    p.add_argument("--wait", action="store_true", help="follow the run task by task to its end")
    p.set_defaults(func=cmd_run)

    sub.add_parser("demo", help="run the churn lifecycle through Airflow").set_defaults(func=cmd_demo)
    p = sub.add_parser("drift-demo", help="after demo: drifted traffic, the drift DAG, the retraining it starts")
    p.set_defaults(func=cmd_drift_demo)
