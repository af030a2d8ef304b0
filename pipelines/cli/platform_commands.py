"""The handlers of the subcommands that run the platform's services: `serve`, `statsd-exporter`,
`stack`, `mlflow-server`, `up`, `down`, `ps`, `alerts`, `run`, `batch run`, `demo`, `drift-demo`. Each takes the parsed
arguments and returns the exit code; what needs numpy and the like is imported when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipelines.core.alerts import alertmanager_config, by_pipeline, render_firing, render_rules, slos
from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import PROJECT_DIR, load_settings, pipeline_names, spec_for
from pipelines.core.spec import load_specs
from pipelines.core.system import executable
from pipelines.io import alerts, db, mlflow_auth
from pipelines.io.tracking import server_command
from pipelines.local import follow, monitoring, platform, stack
from pipelines.local.statsd_exporter import Bridge
from serving import embedded
from serving.deploy import endpoint, render_serve_config, serve_champions
from serving.steer import sync_champions

if TYPE_CHECKING:
    from pipelines.core.settings import Settings


def cmd_serve(args: argparse.Namespace) -> int:
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
    """Every champion on Serve, following a champion alias moved by hand (recorded as an external
    move where mlcycle did not move it); with --watch, again every N seconds (the platform's serve-sync).
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
            served = sync_champions(settings, pipeline_names(settings))  # read anew: new pipelines join
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


def cmd_statsd_exporter(args: argparse.Namespace) -> int:
    print(f"StatsD on udp://{args.host}:{args.udp_port}, /metrics on http://{args.host}:{args.http_port}", flush=True)
    Bridge().serve(args.host, args.udp_port, args.http_port)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
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


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    import os
    import tempfile

    settings = load_settings()
    db.migrate(settings)  # the mlflow schema exists before MLflow's own migrations run in it
    cmd = server_command(settings, args.host, args.port)
    if settings.s3_endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    # the basic-auth app's config (it holds the database URL) in a folder of mode 700
    os.environ.update(mlflow_auth.server_env(settings, db.database_url(settings), Path(tempfile.mkdtemp())))
    exe = executable("mlflow", path_first=True)
    os.execv(exe, [exe, *cmd[1:]])
    return 0  # not reached


def cmd_up(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.exec:
        platform.exec_service(settings, args.exec)  # does not return
    plat = platform.Platform(settings)
    health = plat.up(timeout=args.timeout)
    print(platform.render_ps(health))
    print(platform.open_these(plat))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stopped = platform.Platform(load_settings()).down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    print("the data stays in the state directory (`make clean-state` removes it)")
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    health = platform.Platform(load_settings()).health()
    print(platform.render_ps(health))
    return 0 if all(h["healthy"] for h in health.values()) else 1


def cmd_alerts(args: argparse.Namespace) -> int:
    """What fires now, per pipeline (Alertmanager's active alerts)."""
    import httpx

    settings = load_settings()
    if args.action == "rules":
        return _alert_rules(settings, args.check)
    if args.action == "config":  # for an Alertmanager of your own (the chart's users)
        print(alertmanager_config(monitoring.receivers(settings)), end="")
        return 0
    url = settings.alertmanager_url or alerts.local_url(settings)
    try:
        rows = by_pipeline(alerts.firing(url))
    except httpx.HTTPError as err:
        print(f"mlcycle: no Alertmanager answers at {url} ({err}); `mlcycle up` runs one", file=sys.stderr)
        return 1
    if args.pipeline:
        rows = {p: r for p, r in rows.items() if p == args.pipeline}
    print(json.dumps(rows, indent=2) if args.json else render_firing(rows))
    return 0


def _alert_rules(settings: Settings, check: bool) -> int:
    """The chart's PrometheusRule groups: the shipped request-log rules and every pipeline's."""
    out = settings.project_dir / "helm" / "mlcycle" / "files" / "alerts.rules.yml"
    shipped = yaml.safe_load((settings.project_dir / "include" / "stack" / "alerts.yml").read_text())["groups"]
    text = render_rules(slos(load_specs(settings.specs_path)), before=shipped)
    if check:
        if not out.exists() or out.read_text() != text:
            print(f"stale: {out}: run `mlcycle alerts rules` and commit", file=sys.stderr)
            return 1
        print("the chart's alert rules are up to date")
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings()
    spec = spec_for(settings, args.pipeline)  # one that exists, or an error naming the known ones
    conf = follow.parse_conf(args.conf)
    follow.check_conf(conf, spec, settings)  # exit 2 with the reason before anything is triggered
    plat = running_platform(settings)
    run_id, state = follow.run_pipeline(plat.client(), settings, args.pipeline, conf, args.wait)
    if args.wait:
        print(f"\n==> {args.pipeline}_lifecycle {run_id}: {state}")
        print(follow.summary(settings, args.pipeline, run_id))
        waiting = follow.without_champion(settings, args.pipeline, run_id, state)
        print(platform.open_these(plat, args.pipeline, waiting))
    return 0 if state in ("success", "queued") else 1


def cmd_batch_run(args: argparse.Namespace) -> int:
    """Trigger `<pipeline>_batch` as `mlcycle run` triggers the lifecycle; with --wait, its summary."""
    settings = load_settings()
    spec = spec_for(settings, args.pipeline)  # one that exists, or an error naming the known ones
    conf = follow.batch_conf(spec, args.as_of)  # exit 2 with the reason before anything is triggered
    plat, dag = running_platform(settings), f"{args.pipeline}_batch"
    run_id, state = follow.run_pipeline(plat.client(), settings, args.pipeline, conf, args.wait, dag=dag)
    if args.wait:
        print(f"\n==> {dag} {run_id}: {state}")
        print(follow.batch_summary(settings, args.pipeline, run_id, state))
    return 0 if state in ("success", "queued") else 1


def running_platform(settings: Settings) -> platform.Platform:
    """The platform `mlcycle up` started; InvalidArgument (exit 2) where it is not running."""
    plat = platform.Platform(settings)
    if not plat.supervisor_running():
        raise InvalidArgument("the platform is not running: `mlcycle up` first")
    return plat


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.local.demo import run_demo  # heavy: numpy (the demo's traffic)

    return run_demo()


def cmd_drift_demo(args: argparse.Namespace) -> int:
    from pipelines.local.demo import run_drift_demo  # heavy: numpy (the demo's traffic)

    return run_drift_demo()
