"""Deploying a pipeline's application to Ray Serve: the thin I/O around `build_app`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from serving.config import ServingArgs, VersionConfig

if TYPE_CHECKING:
    from pipelines.settings import Settings
    from pipelines.spec import PipelineSpec


def serving_args(
    spec: PipelineSpec,
    versions: list[VersionConfig],
    model_name: str,
    canary: dict[str, Any] | None = None,
    **overrides: Any,
) -> ServingArgs:
    """The application's arguments for a pipeline and a set of versions. Pure."""
    return ServingArgs(
        pipeline=spec.name,
        model_name=model_name,
        entity_key=spec.entity.join_key,
        features=spec.model.numeric_features + spec.model.categorical_features,
        versions=versions,
        max_payload_bytes=spec.serving.max_payload_bytes,
        max_batch_size=spec.serving.max_batch_size,
        batch_wait_timeout_s=spec.serving.batch_wait_timeout_s,
        canary=canary or {},
        **overrides,
    )


def connect(settings: Settings) -> None:
    """Join the Ray cluster of the settings (`MLCYCLE_RAY_ADDRESS`; embedded default: the local
    head of `mlcycle serve start`) and make sure Serve's HTTP proxy listens where they say."""
    # Ray clusters require a token (~/.ray/auth_token); a client must say it uses one, before
    # Ray reads its configuration.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    from ray import serve

    from pipelines.errors import SettingsError

    if not ray.is_initialized():
        address = settings.ray_address or ("127.0.0.1:6380" if settings.profile == "embedded" else "auto")
        try:
            ray.init(address=address, namespace="mlcycle", log_to_driver=False)
        except ConnectionError as err:
            raise SettingsError(
                f"no Ray cluster at {address} ({err}); on one machine start it with "
                "`mlcycle serve start`, or set MLCYCLE_RAY_ADDRESS"
            ) from None
    serve.start(http_options={"host": settings.serve_host, "port": settings.serve_port})


def deploy(args: ServingArgs) -> None:
    """Create or update the application; a change of weights only reconfigures the replicas."""
    from ray import serve

    from serving.app import build_app

    serve.run(build_app(args.model_dump()), name=args.pipeline, route_prefix=args.route_prefix)


def undeploy(pipeline: str) -> None:
    from ray import serve

    serve.delete(pipeline)


def endpoint(settings: Settings, pipeline: str) -> str:
    return f"http://{settings.serve_host}:{settings.serve_port}/v1/pipelines/{pipeline}"
