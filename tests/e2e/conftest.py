"""What the end-to-end tests share: a Ray head with Serve of the module's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.core.settings import Settings, scoped_environ
from tests.services import free_port_pairs

KEY = "e2e-serving-key"


@pytest.fixture(scope="module")
def ray_head(platform: Settings) -> Iterator[dict[str, str]]:
    """A local Ray head with Serve on 127.0.0.1, as `mlcycle serve start` makes one."""
    from serving import embedded

    gcs, http, stats, metrics, fallback = free_port_pairs(5)
    settings = platform.model_copy(
        update={
            "ray_address": f"127.0.0.1:{gcs}",
            "serve_port": http,
            "haproxy_stats_port": stats,
            "haproxy_metrics_port": metrics,
            "serve_fallback_port": fallback,
        }
    )
    env = {
        "RAY_AUTH_MODE": "token",
        "MLCYCLE_RAY_ADDRESS": f"127.0.0.1:{gcs}",
        "MLCYCLE_SERVE_PORT": str(http),
        "MLCYCLE_HAPROXY_STATS_PORT": str(stats),
        "MLCYCLE_HAPROXY_METRICS_PORT": str(metrics),
        "MLCYCLE_SERVE_FALLBACK_PORT": str(fallback),
        "MLCYCLE_TEST_GCS_PORT": str(gcs),
        "MLCYCLE_SERVING_API_KEYS": KEY,
    }
    with scoped_environ(env):
        embedded.start(settings)
        import ray

        try:
            yield env
        finally:  # the head's processes, Serve's and its HAProxy with them: no graceful Serve shutdown
            ray.shutdown()
            embedded.stop(settings)


def forget_pipeline(settings: Settings, pipeline: str) -> None:
    """The session's registry and audit are shared by the e2e modules, and the first run of a
    pipeline in another module must meet no champion: remove what a module registered."""
    import mlflow

    from pipelines.io import db
    from pipelines.io.registry import model_name
    from pipelines.io.tracking import setup_mlflow

    setup_mlflow(settings, pipeline)
    client = mlflow.MlflowClient()
    if client.search_registered_models(f"name = '{model_name(pipeline)}'"):
        client.delete_registered_model(model_name(pipeline))
    with db.connect(settings) as conn:
        conn.execute("DELETE FROM alias_audit WHERE pipeline = %s", (pipeline,))
