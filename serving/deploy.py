"""Deploying a pipeline's application to Ray Serve: the thin I/O around `build_app`."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.acks import AckTally
from pipelines.core.errors import ArtifactRefused, SettingsError
from pipelines.core.settings import load_settings, spec_for
from pipelines.io import db, servingargs
from pipelines.io.registry import champion_version, model_name, verify_versions
from serving.config import ServingArgs, VersionConfig, autoscaling_config
from serving.contract import contract_args, request_contract
from serving.haproxy import replicas_up

log = logging.getLogger(__name__)
FOLLOW_S = 5.0  # every running replica says it follows a published generation within this
APPLY_S = 600.0  # and serves it within this (its new versions loaded)

if TYPE_CHECKING:
    from pipelines.core.settings import Settings
    from pipelines.core.spec import PipelineSpec


def serving_args(
    spec: PipelineSpec,
    versions: list[VersionConfig],
    model_name: str,
    canary: dict[str, Any] | None = None,
    **overrides: Any,
) -> ServingArgs:
    """The application's arguments for a pipeline and a set of versions; `overrides` replace any
    of them (the bench's variants, tests). Pure."""
    features = spec.model.numeric_features + spec.model.categorical_features
    args: dict[str, Any] = {
        **spec.serving.model_dump(),
        "pipeline": spec.name,
        "model_name": model_name,
        "entity_key": spec.entity.join_key,
        "features": features,
        "versions": versions,
        "canary": canary or {},
        "contract": contract_args(request_contract(spec, features)),
    }
    return ServingArgs(**{**args, **overrides})


HAPROXY_SOCKET_MAX = 97
"""The longest Unix socket path HAProxy takes (its admin socket: it appends `.<pid>.tmp` within the
108 bytes of a socket address; its `log` target, Serve's metrics socket); Serve puts each node's
files in a folder named by the 56-character node id."""
NODE_ID_CHARS = 56
SOCKETS = ("admin.sock", "log.sock")
"""HAProxy's admin socket and Serve's metrics socket (HAProxy logs to it), in `haproxy_dir`."""


def haproxy_dir(state_dir: str, uid: int | None = None) -> Path:
    """The folder of one Ray instance's HAProxy files (config, admin socket, server state, metrics
    socket): `<state_dir>/hap`. Where the state dir's path is too long for the admin socket, a
    folder of this user's and this state dir's own in the system's temporary folder instead (either
    is made mode 0700 and checked by `private_dir` before Ray or HAProxy use it). Pure."""
    inside = Path(state_dir) / "hap"
    if max(len(str(inside / ("n" * NODE_ID_CHARS) / name)) for name in SOCKETS) <= HAPROXY_SOCKET_MAX:
        return inside
    digest = hashlib.sha256(state_dir.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"mlcycle-hap-{os.geteuid() if uid is None else uid}-{digest}"


def serve_env(settings: Settings, haproxy: str, instance: str | None = None) -> dict[str, str]:
    """The environment of a Ray node that serves (the head of `mlcycle serve start`, the Compose
    stack's, a RayService's): HAProxy as Serve's ingress with one thread (`haproxy` is the path of
    `mlcycle-haproxy`, which keeps every listener on Serve's host), user code on the replica's
    event loop (throughput-optimized); with `instance` (the state directory), HAProxy's files in
    that instance's own folder (`haproxy_dir`, which `mlcycle-haproxy` checks is private), so two
    Ray instances on one host do not share them and no other user reaches them. Pure."""
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_NBTHREAD": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy,
        "RAY_SERVE_HAPROXY_STATS_PORT": str(settings.haproxy_stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(settings.haproxy_metrics_port),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(settings.serve_fallback_port),
    }
    if instance is not None:
        state = haproxy_dir(instance)
        env.update(
            {
                "MLCYCLE_HAPROXY_DIR": str(state),
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
                "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / SOCKETS[0]),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state / SOCKETS[1]),
            }
        )
    return env


IMPORT_PATH = "serving.app:build_app"
CONNECT_ATTEMPTS = 3


def serve_config(specs: list[PipelineSpec]) -> dict[str, Any]:
    """The Serve config of the pipelines: one application each, versions left to the registry, and
    the ingress's `autoscaling_config` where the spec autoscales. `serve deploy` takes it as is, and
    it is the `serveConfigV2` of a KubeRay RayService. Pure."""

    apps = []
    for spec in sorted(specs, key=lambda s: s.name):
        args = serving_args(spec, [], model_name(spec.name))
        app: dict[str, Any] = {
            "name": spec.name,
            "route_prefix": args.route_prefix,
            "import_path": IMPORT_PATH,
            "args": args.model_dump(mode="json", exclude={"versions", "canary", "generation", "layout"}),
        }
        if args.autoscaling is not None:
            # what `build_app` gives the ingress, said where Serve and a RayService's reader look
            app["deployments"] = [{"name": "ingress", "autoscaling_config": autoscaling_config(args.autoscaling)}]
        apps.append(app)
    return {"proxy_location": "EveryNode", "applications": apps}


def render_serve_config(specs: list[PipelineSpec]) -> str:
    """The Serve config as the checked-in YAML, with a header that says where it comes from."""
    import yaml

    header = (
        "# Generated by `mlcycle serve config` from include/pipelines/*.yaml: do not edit by hand.\n"
        "# The registry's `champion` alias decides the version each application serves.\n"
        "#   local:   serve run include/serve/serve.yaml\n"
        "#   cluster: serve deploy include/serve/serve.yaml, or a KubeRay RayService's serveConfigV2\n"
    )
    return header + yaml.safe_dump(serve_config(specs), sort_keys=False)


def join_ray(settings: Settings) -> None:
    """Join the Ray cluster of the settings (`MLCYCLE_RAY_ADDRESS`; embedded default: the local
    head of `mlcycle serve start`), once per process."""
    # Ray clusters require a token (~/.ray/auth_token); a client must say it uses one, before
    # Ray reads its configuration.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if not ray.is_initialized():
        address = settings.ray_address or ("127.0.0.1:6380" if settings.profile == "embedded" else "auto")
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                ray.init(address=address, namespace="mlcycle", log_to_driver=False)
                break
            except ConnectionError as err:
                if not address.startswith("ray://"):
                    raise SettingsError(
                        f"no Ray cluster at {address} ({err}); on one machine start it with "
                        "`mlcycle serve start`, or set MLCYCLE_RAY_ADDRESS"
                    ) from None
                # The head's Ray Client server starts a server process per client, and that start
                # fails now and then (seen on a loaded host): try again, then let the task retry.
                if attempt == CONNECT_ATTEMPTS:
                    raise ConnectionError(f"Ray Client at {address} failed {attempt} times: {err}") from None
                log.warning("Ray Client at %s failed (%s); retrying in %ds", address, err, 5 * attempt)
                time.sleep(5 * attempt)


def connect(settings: Settings) -> None:
    """Join the Ray cluster of the settings (`join_ray`) and make sure Serve's HTTP proxy listens
    where they say."""
    join_ray(settings)
    from ray import serve  # after join_ray set the token mode

    # One machine (the embedded profile): one proxy, on the head; its other nodes share the host and
    # could not bind the port again. A cluster runs one per node (the chart's serve config).
    location = "HeadOnly" if settings.profile == "embedded" else "EveryNode"
    serve.start(http_options={"host": settings.serve_host, "port": settings.serve_port}, proxy_location=location)


def deploy(args: ServingArgs, settings: Settings | None = None) -> None:
    """Serve `args`. They are published first (`serving_args`, a new generation); where the
    application runs with the same layout (`serving.deployments.layout`: a change of versions,
    weights, shadow, canary state or batching), its replicas apply them in place and this returns
    once every running replica serves them: no Serve reconfigure, no replica out of HAProxy's
    backend, no pause. Otherwise (a first deploy, a new layout, replicas that do not follow) Serve
    redeploys the application with them. A version whose files differ from the digests recorded at
    registration is refused before anything is published (`ArtifactRefused`: the application keeps
    serving what it served); a replica that cannot load one fails the deploy (`DeployFailed`)."""
    from ray import serve

    from serving.app import build_app  # heavy: ray
    from serving.deployments import layout

    settings = settings or load_settings()
    verify_versions(settings, args.pipeline, args.model_name, [v.version for v in args.versions])
    shape, running = layout(args), running_replicas(args.pipeline)
    with db.connect(settings, autocommit=True) as listener:
        listener.execute(f"LISTEN {servingargs.APPLIED}")
        with db.connect(settings) as conn:  # committed (and the replicas notified) on exit
            dynamic = args.model_dump(mode="json", exclude={"generation", "layout"})
            generation, before = servingargs.publish(conn, args.pipeline, shape, dynamic)
        if running and before == shape:
            tally = AckTally(args.pipeline, generation)
            started = time.monotonic()
            if servingargs.applied(listener, tally, lambda: running_replicas(args.pipeline), FOLLOW_S, APPLY_S):
                log.info(
                    "%s: generation %s applied in place (%.2f s)", args.pipeline, generation, time.monotonic() - started
                )
                return
            log.warning("%s: the replicas do not follow generation %s: Serve redeploys", args.pipeline, generation)
    full = args.model_copy(update={"generation": generation, "layout": shape})
    serve.run(build_app(full.model_dump()), name=args.pipeline, route_prefix=args.route_prefix)


def serve_champion_if_idle(settings: Settings, pipeline: str) -> bool:
    """Deploy the registry's champion when the pipeline's application is not running (a Ray head
    started afresh, and a lifecycle run whose canary was skipped). Returns whether it deployed."""
    connect(settings)  # before ray is imported: it sets how the client authenticates
    from ray import serve

    app = serve.status().applications.get(pipeline)
    if app is not None and app.status == "RUNNING":
        return False
    champion = VersionConfig(version=champion_version(settings, pipeline), weight=100.0)
    deploy(serving_args(spec_for(settings, pipeline), [champion], model_name(pipeline)), settings)
    return True


def serve_champions(settings: Settings, pipelines: list[str]) -> dict[str, str]:
    """Every pipeline's champion on Serve where its application is not running; per pipeline
    what happened (`deployed vN`, `running`, `no champion yet`, or the error)."""
    out: dict[str, str] = {}
    for pipeline in pipelines:
        try:
            deployed = serve_champion_if_idle(settings, pipeline)
            out[pipeline] = f"deployed v{champion_version(settings, pipeline)}" if deployed else "running"
        except SettingsError as err:
            out[pipeline] = "no champion yet" if "no `champion` alias" in str(err) else str(err)
        except ArtifactRefused as err:  # its files differ from those registered: not served
            out[pipeline] = f"refused: {err}"
    return out


def undeploy(pipeline: str) -> None:
    from ray import serve

    serve.delete(pipeline)


def running_replicas(pipeline: str, deployment: str = "ingress") -> int:
    """How many replicas of the application's deployment Serve runs now (`serve.status()`): the
    count its autoscaler reached, or 0 where the application or deployment is not there."""
    from ray import serve

    app = serve.status().applications.get(pipeline)
    if app is None or deployment not in app.deployments:
        return 0
    return int(app.deployments[deployment].replica_states.get("RUNNING", 0))  # type: ignore[call-overload]


def wait_direct_route(settings: Settings, pipeline: str, timeout_s: float = 60) -> int:
    """Wait until HAProxy (Serve's ingress) routes the application straight to a replica, not
    through its backup (the Serve proxy), and return how many replicas it routes to. A deployment
    is answered through the backup at first, without HAProxy's bounded queue."""
    import httpx

    url = f"http://127.0.0.1:{settings.haproxy_stats_port}/stats;csv"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            up = replicas_up(httpx.get(url, timeout=5).text, pipeline)
        except httpx.HTTPError:
            up = 0
        if up:
            return up
        if time.monotonic() > deadline:
            raise TimeoutError(f"HAProxy routes no request of {pipeline} straight to a replica after {timeout_s:.0f}s")
        time.sleep(0.5)


def endpoint(settings: Settings, pipeline: str) -> str:
    return f"http://{settings.serve_host}:{settings.serve_port}/v1/pipelines/{pipeline}"
