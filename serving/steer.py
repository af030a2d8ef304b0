"""Serve following the champion alias when a person moves it: a rollback (`mlcycle model rollback`,
the platform API, the page), or an alias moved outside mlcycle (the MLflow UI) that serve-sync finds.

Either way the pipeline's application is reconfigured in place to the champion alone (a pinned
deployment version: the new version loads beside the serving one, then the switch is atomic), as
the canary step moves it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from pipelines.core.audit import ActorKind
from pipelines.core.errors import SettingsError
from pipelines.core.settings import spec_for
from pipelines.core.steering import follow_needed, moved_outside
from pipelines.io import steering
from pipelines.io.registry import champion_version, model_name
from serving.config import VersionConfig
from serving.deploy import connect, deploy, endpoint, serve_champion_if_idle, serving_args

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

RECHECK_S = 1.0
"""How long serve-sync waits before it takes a champion alias the trail does not name for a move
made outside mlcycle (mlcycle's own moves are recorded just after the registry has them)."""


def serve_only(settings: Settings, pipeline: str, version: int, state: dict[str, Any]) -> None:
    """Reconfigure the application to serve `version` alone (`state`: what `GET /` shows as `canary`).
    As the canary's rollback does it, in two steps: `version` loaded beside what serves now and given
    every request, then the others removed, so no request meets a replica whose versions change."""
    spec = spec_for(settings, pipeline)
    others = [v for v in served_versions(settings, pipeline) or [] if v != version]
    if others:
        both = [VersionConfig(version=version, weight=100.0), *(VersionConfig(version=v, weight=0.0) for v in others)]
        deploy(serving_args(spec, both, model_name(pipeline), canary=state))
    deploy(serving_args(spec, [VersionConfig(version=version, weight=100.0)], model_name(pipeline), canary=state))


def serving_key(settings: Settings) -> str | None:
    """A serving key of this installation (`MLCYCLE_SERVING_API_KEYS`'s first, else the embedded
    head's key file where it exists): `/readyz` names the versions loaded only to a key."""
    keys = [k.strip() for k in os.environ.get("MLCYCLE_SERVING_API_KEYS", "").split(",") if k.strip()]
    if keys:
        return keys[0]
    path = settings.state_path / "serving-api-key"
    return path.read_text().strip() if path.is_file() else None


def served_versions(settings: Settings, pipeline: str) -> list[int] | None:
    """The versions the application serves (its `/readyz`, asked with a key), or None where it
    does not answer."""
    import httpx

    key = serving_key(settings)
    try:
        headers = {"x-api-key": key} if key else {}
        answer = httpx.get(endpoint(settings, pipeline) + "/readyz", headers=headers, timeout=5)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    return [int(v) for v in answer.json().get("versions", [])]


def _wait(settings: Settings, pipeline: str, done: Callable[[list[int]], bool], timeout_s: float) -> float | None:
    """Poll the application's loaded versions until `done` holds; the seconds it took, or None."""
    started = time.monotonic()
    while not done(served_versions(settings, pipeline) or []):
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.2)
    return time.monotonic() - started


def wait_loaded(settings: Settings, pipeline: str, version: int, timeout_s: float = 120) -> float | None:
    """Wait until the application has `version` loaded (a reconfigure loads a new version in the
    replicas after `serve.run` returns); returns the seconds it took, or None where it cannot tell
    (no serving key here to ask `/readyz` with: a step pod holds none) or it did not within
    `timeout_s` (the caller goes on; what it measures then says so)."""
    if serving_key(settings) is None:
        return None
    return _wait(settings, pipeline, lambda loaded: version in loaded, timeout_s)


def served_state(settings: Settings, pipeline: str, timeout_s: float = 5) -> tuple[dict[str, Any] | None, str]:
    """What the application serves now (its `GET /`, asked with a key: versions, weights, shadow,
    the canary's state), or None and why it gave nothing."""
    import httpx

    key = serving_key(settings)
    if key is None:
        return None, "this server holds no serving key (MLCYCLE_SERVING_API_KEYS) to ask Serve with"
    try:
        answer = httpx.get(endpoint(settings, pipeline) + "/", headers={"x-api-key": key}, timeout=timeout_s)
    except httpx.HTTPError as err:
        return None, f"Serve did not answer ({type(err).__name__})"
    if answer.status_code != 200:
        return None, f"Serve answered HTTP {answer.status_code}: the pipeline is not deployed"
    return dict(answer.json()), "serving"


def wait_serving(settings: Settings, pipeline: str, version: int, timeout_s: float = 60) -> float:
    """Wait until the application serves `version` alone; returns the seconds it took."""
    took = _wait(settings, pipeline, lambda loaded: loaded == [version], timeout_s)
    if took is None:
        raise TimeoutError(f"{pipeline} does not serve v{version} alone after {timeout_s:.0f}s")
    return took


def rollback(
    settings: Settings, pipeline: str, to: int | None, actor: str, actor_kind: ActorKind, reason: str | None
) -> dict[str, Any]:
    """The champion moved back (`pipelines.io.steering.rollback_champion`), then Serve: the restored
    version alone, reconfigured in place. Returns what was done, with `serve_s` (alias moved to the
    application serving the restored version alone)."""
    done = steering.rollback_champion(settings, pipeline, to, actor, actor_kind, reason)
    try:
        connect(settings)
    except SettingsError as err:  # no Ray head: the alias moved, and a started Serve serves it
        done.update(serve_s=None, serving=f"{err}; `mlcycle serve start` (or serve-sync) serves v{done['to']}")
        return done
    started = time.monotonic()
    state = {"state": "serving", "champion": done["to"], "rolled_back": done["from"], "by": actor}
    serve_only(settings, pipeline, done["to"], state)
    wait_serving(settings, pipeline, done["to"])
    done.update(serve_s=round(time.monotonic() - started, 3), serving=f"v{done['to']} alone")
    return done


def sync_champion(settings: Settings, pipeline: str) -> str:
    """One pipeline of serve-sync: a champion alias moved outside mlcycle is recorded (audited as
    `external_alias`) and followed; an application that serves versions without the champion is
    moved to it; one that does not run gets the champion. Returns what happened."""
    champion = champion_version(settings, pipeline)  # SettingsError: no champion yet
    recorded = steering.last_recorded_champion(settings, pipeline)
    if moved_outside(recorded, champion):
        # mlcycle moves the alias, then records the move: a second look tells a move being recorded
        time.sleep(RECHECK_S)
        recorded = steering.last_recorded_champion(settings, pipeline)
    external = moved_outside(recorded, champion)
    if external:
        steering.record_external(settings, pipeline, recorded, champion)
        steering.swap_spaces(settings, pipeline, recorded, champion)
        log.warning("%s: the champion alias was moved outside mlcycle to v%s; following it", pipeline, champion)
    if serve_champion_if_idle(settings, pipeline):
        return f"deployed v{champion}"
    if follow_needed(champion, served_versions(settings, pipeline)):
        state = {"state": "serving", "champion": champion, "followed": "external" if external else "alias"}
        serve_only(settings, pipeline, champion, state)
        return f"followed the champion alias to v{champion}" + (" (moved outside mlcycle)" if external else "")
    return "running"


def sync_champions(settings: Settings, pipelines: list[str]) -> dict[str, str]:
    """`sync_champion` of every pipeline: what happened to each (or `no champion yet`, or the error).
    Serve's ingress is started first, champion or not: the platform's health check (and a client)
    meets it answering 404/503 before the first model is served, never a closed port."""
    connect(settings)
    out: dict[str, str] = {}
    for pipeline in pipelines:
        try:
            out[pipeline] = sync_champion(settings, pipeline)
        except SettingsError as err:
            out[pipeline] = "no champion yet" if "no `champion` alias" in str(err) else str(err)
    return out
