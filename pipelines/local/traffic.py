"""Client traffic for a served pipeline: what the drift demo and the end-to-end tests send.

Both are bounded (by count and by time) and talk to 127.0.0.1 through the public endpoint with an
API key, like any client.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def predict_rows(url: str, key: str, rows: pd.DataFrame, entity: str, features: list[str], batch: int = 50) -> int:
    """Predictions for the rows with their features given in the request; returns how many."""
    import httpx

    with httpx.Client(headers={"x-api-key": key}, timeout=60) as client:
        for start in range(0, len(rows), batch):
            part = rows.iloc[start : start + batch]
            instances = [
                {"entity_id": _plain(r[entity]), "features": {f: _plain(r[f]) for f in features}}
                for _, r in part.iterrows()
            ]
            answer = client.post(f"{url}/predict", json={"instances": instances})
            if answer.status_code != 200:
                raise RuntimeError(f"{url}/predict answered {answer.status_code}: {answer.text[:300]}")
    return len(rows)


class SteadyTraffic:
    """Single-entity predictions on the online features, in a thread, until stopped (at most
    `max_requests` or `max_s`); counts what failed."""

    def __init__(
        self,
        url: str,
        key: str,
        entities: int | list[int] = 400,
        max_requests: int = 50_000,
        max_s: float = 900,
    ) -> None:
        """`entities`: the ids to cycle through, or how many of 1, 2, ... (they need online features)."""
        self.url, self.key = url, key
        self.entities = list(range(1, entities + 1)) if isinstance(entities, int) else list(entities)
        self.max_requests, self.max_s = max_requests, max_s
        self.sent = self.failed = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        deadline = time.monotonic() + self.max_s
        with httpx.Client(headers={"x-api-key": self.key}, timeout=60) as client:
            while not self._done.is_set() and time.monotonic() < deadline and self.sent < self.max_requests:
                body = {"instances": [{"entity_id": self.entities[self.sent % len(self.entities)]}]}
                try:
                    self.failed += client.post(f"{self.url}/predict", json=body).status_code != 200
                except httpx.HTTPError:
                    self.failed += 1
                self.sent += 1
                time.sleep(0.02)

    def __enter__(self) -> SteadyTraffic:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(60)


def known_entities(world: pd.DataFrame, key: str, timestamp: str, as_of: Any, n: int = 400) -> list[Any]:
    """Entities the online store knows since `as_of` and that are still active at the world's last
    snapshot: live traffic for them is answered by every champion from that time on. Pure."""
    import pandas as pd

    before = set(world.loc[world[timestamp] < pd.Timestamp(as_of), key])
    last = world[world[timestamp] == world[timestamp].max()][key]
    return [_plain(k) for k in sorted(k for k in last.unique() if k in before)][:n]
