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

    gcs, http = free_port_pairs(2)
    settings = platform.model_copy(update={"ray_address": f"127.0.0.1:{gcs}", "serve_port": http})
    env = {
        "RAY_AUTH_MODE": "token",
        "MLCYCLE_RAY_ADDRESS": f"127.0.0.1:{gcs}",
        "MLCYCLE_SERVE_PORT": str(http),
        "MLCYCLE_SERVING_API_KEYS": KEY,
    }
    with scoped_environ(env):
        embedded.start(settings)
        import ray
        from ray import serve

        try:
            yield env
        finally:
            serve.shutdown()
            ray.shutdown()
            embedded.stop()
