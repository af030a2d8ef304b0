"""Alertmanager of the Compose stack: its config from the MLCYCLE_ALERTS_* variables, then the
binary (Debian's `prometheus-alertmanager`) in this process.

One route, every alert grouped by `alertname` and `pipeline`, to the receiver `mlcycle`: the
webhook `MLCYCLE_ALERTS_WEBHOOK_URL` and/or e-mail to `MLCYCLE_ALERTS_EMAIL_TO` through
`MLCYCLE_ALERTS_SMTP_SMARTHOST`; neither: alerts are only listed (`mlcycle alerts`, the page).
It is the route `mlcycle up` writes (`pipelines/core/alerts.py:alertmanager_config`; a unit test
holds the two equal), written as JSON, which Alertmanager reads as YAML: this image has the
standard library only. Cluster gossip is off: nothing listens but the API on 9093.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

CONFIG = "/data/alertmanager.yml"


def config(env: Mapping[str, str]) -> dict[str, Any]:
    """The config of the variables in `env`. Pure."""
    receiver: dict[str, Any] = {"name": "mlcycle"}
    webhook = env.get("MLCYCLE_ALERTS_WEBHOOK_URL", "").strip()
    if webhook:
        receiver["webhook_configs"] = [{"url": webhook, "send_resolved": True}]
    to, smarthost = env.get("MLCYCLE_ALERTS_EMAIL_TO", "").strip(), env.get("MLCYCLE_ALERTS_SMTP_SMARTHOST", "").strip()
    if to and smarthost:
        sender = env.get("MLCYCLE_ALERTS_EMAIL_FROM", "").strip() or "mlcycle@localhost"
        receiver["email_configs"] = [{"to": to, "from": sender, "smarthost": smarthost, "send_resolved": True}]
    route = {
        "receiver": "mlcycle",
        "group_by": ["alertname", "pipeline"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
    }
    return {"route": route, "receivers": [receiver]}


def main() -> None:
    with open(CONFIG, "w", encoding="utf-8") as out:
        json.dump(config(os.environ), out, indent=1)
    argv = [
        "prometheus-alertmanager",
        f"--config.file={CONFIG}",
        "--storage.path=/data",
        "--web.listen-address=0.0.0.0:9093",
        "--cluster.listen-address=",
        *sys.argv[1:],
    ]
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
