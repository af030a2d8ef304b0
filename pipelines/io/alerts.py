"""Alertmanager's API v2: events sent as alerts (`send`), what fires now (`firing`).

Sending never fails its caller: without `MLCYCLE_ALERTMANAGER_URL` it logs what it would have sent
and returns; an Alertmanager that does not answer costs a warning, not the step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.core.settings import Settings

log = logging.getLogger("mlcycle.alerts")
TIMEOUT_S = 5.0


def local_url(settings: Settings) -> str:
    """The Alertmanager that `mlcycle up` runs on this machine."""
    return f"http://127.0.0.1:{settings.alertmanager_port}"


def send(settings: Settings, alerts: Sequence[dict[str, Any]]) -> bool:
    """POST the alerts to the settings' Alertmanager; whether it took them. Never raises."""
    import httpx

    names = [a["labels"]["alertname"] for a in alerts]
    url = settings.alertmanager_url
    if not url:
        log.info("alerts %s not sent: no Alertmanager (MLCYCLE_ALERTMANAGER_URL is unset)", names)
        return False
    try:
        httpx.post(f"{url.rstrip('/')}/api/v2/alerts", json=list(alerts), timeout=TIMEOUT_S).raise_for_status()
    except (httpx.HTTPError, httpx.InvalidURL) as err:  # a URL httpx cannot parse is no HTTPError
        log.warning("alerts %s not sent to %s: %s", names, url, err)
        return False
    log.info("alerts %s sent to %s", names, url)
    return True


def firing(url: str) -> list[dict[str, Any]]:
    """The active alerts (neither silenced nor inhibited) of the Alertmanager at `url`."""
    import httpx

    params = {"active": "true", "silenced": "false", "inhibited": "false"}
    answer = httpx.get(f"{url.rstrip('/')}/api/v2/alerts", params=params, timeout=TIMEOUT_S)
    answer.raise_for_status()
    alerts: list[dict[str, Any]] = answer.json()
    return alerts
