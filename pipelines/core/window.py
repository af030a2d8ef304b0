"""The data window of a run: every run reads the data of its own time.

A run has an `as_of` instant: the trigger form's or `conf`'s value (manual), the triggering Asset
event's time (drift-triggered retraining), or the run's data interval end (scheduled). A source's
`lookback_days` bounds how far back it reads; the window is `(as_of - lookback, as_of]`, or
everything up to `as_of` without a lookback. Pure.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

FIELDS = ("as_of", "start", "end")
"""The names a source location (a file path, an S3 URI) may use: `{as_of:%Y-%m-%d}`."""
QUERY_PARAMS = FIELDS
"""The bound parameters a Postgres source's query may use: `%(start)s`, `%(end)s`, `%(as_of)s`."""
_QUERY_PARAM = re.compile(r"%\((\w+)\)s")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    """`start` (exclusive; None: no lower bound) to `end` (inclusive, the run's as_of)."""

    start: datetime | None
    end: datetime

    @property
    def as_of(self) -> datetime:
        return self.end

    def to_dict(self) -> dict[str, str | None]:
        return {"start": self.start.isoformat() if self.start else None, "end": self.end.isoformat()}

    def names(self) -> dict[str, datetime]:
        """The values a location template or a query's parameters see (`start` without a lower
        bound is the Unix epoch, so a query's `> %(start)s` still reads everything)."""
        return {"as_of": self.end, "start": self.start or _EPOCH, "end": self.end}


def utc(moment: datetime) -> datetime:
    """An aware UTC instant (a naive one is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def data_window(as_of: datetime, lookback_days: float | None) -> Window:
    end = utc(as_of)
    return Window(end - timedelta(days=lookback_days) if lookback_days else None, end)


def template_fields(template: str) -> list[str]:
    """The names a location template uses, or ValueError for a malformed one or an unknown name."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"malformed template {template!r}: {err}") from None
    unknown = sorted({n for n in names if n not in FIELDS})
    if unknown:
        raise ValueError(f"unknown name {unknown} in {template!r}: use {{as_of:%Y-%m-%d}}, {{start:...}}, {{end:...}}")
    return names


def render_location(template: str, window: Window) -> str:
    """A file path or S3 URI for the window: `s3://b/churn/dt={as_of:%Y-%m-%d}/` ->
    `s3://b/churn/dt=2026-11-26/`."""
    if not template_fields(template):
        return template
    return template.format(**window.names())


def query_params(query: str) -> list[str]:
    """The named parameters a query binds, or ValueError for one the window does not give."""
    names = _QUERY_PARAM.findall(query)
    unknown = sorted({n for n in names if n not in QUERY_PARAMS})
    if unknown:
        raise ValueError(f"unknown query parameter {unknown}: the window gives %(start)s, %(end)s and %(as_of)s")
    return names
