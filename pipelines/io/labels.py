"""Delayed ground truth: labels from a file, S3 or a Postgres query into the `labels` table.

A label row names its entity (`entity_id` or the spec's join key), its outcome (`label` or the
spec's label column: 0 or 1, a class of a multiclass label (stored as its index among the
classes, the contract's `allowed`), or a number for a regression label), and optionally the request it
answers (`request_id`) and when the outcome was observed (`observed_at` or the spec's timestamp
column; default: now). A label without a request id belongs to the latest prediction served to
its entity at or before `observed_at` (see `pipelines.ml.abtest`). A load is all or nothing: one
bad row refuses the load and names the rows; loading the same labels again changes nothing, a
corrected label replaces the old one. A label's key is its entity, instant and request: two
outcomes of one entity at one instant for two requests are two labels.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import InvalidArgument
from pipelines.io.db import connect
from pipelines.io.sources import read_source
from pipelines.ml.labels import label_problem

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.core.settings import Settings
    from pipelines.core.spec import PipelineSpec, Source

SHOW_BAD_ROWS = 5


def _column(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in df.columns), None)


def _required_column(df: pd.DataFrame, names: tuple[str, ...]) -> str:
    found = _column(df, names)
    if found is None:
        raise InvalidArgument(f"labels: no column {' or '.join(names)} (columns: {sorted(map(str, df.columns))})")
    return found


def label_rows(df: pd.DataFrame, spec: PipelineSpec, now: datetime) -> list[tuple[Any, ...]]:
    """(pipeline, request_id, entity_id, label, observed_at) rows, or InvalidArgument naming the
    bad rows. Pure. A label with a request id and no time gets None: the load takes the time of
    that prediction, so loading the same file again finds the same key."""
    import pandas as pd

    entity = _required_column(df, ("entity_id", spec.entity.join_key))
    label = _required_column(df, ("label", spec.label.column))
    observed = _column(df, ("observed_at", spec.entity.timestamp))
    request = _column(df, ("request_id",))
    classes = spec.classes  # a multiclass label is stored as its class's index in `allowed`
    rows, bad = [], []
    for n, rec in enumerate(df.to_dict("records")):
        problems = []
        ent = rec[entity]
        if ent is None or (isinstance(ent, float) and pd.isna(ent)) or str(ent).strip() == "":
            problems.append(f"{entity} is empty")
        problem = label_problem(rec[label], spec.label.kind, classes)
        if problem:
            problems.append(f"{label} {rec[label]!r} is {problem}")
        rid = None
        if request and not pd.isna(rec[request]):
            try:
                rid = uuid.UUID(str(rec[request]))
            except ValueError:
                problems.append(f"request_id {rec[request]!r} is not a UUID")
        at = None
        if observed and not pd.isna(rec[observed]):
            stamp = pd.to_datetime(rec[observed], utc=True, errors="coerce")
            if pd.isna(stamp):
                problems.append(f"{observed} {rec[observed]!r} is not a time")
            else:
                at = stamp.to_pydatetime()
        if problems:
            bad.append(f"row {n}: {', '.join(problems)}")
            continue
        if isinstance(ent, float) and ent.is_integer():
            ent = int(ent)
        y = float(classes.index(str(rec[label]))) if classes else float(rec[label])
        rows.append((spec.name, rid, str(ent), y, at if at is not None or rid is not None else now))
    if bad:
        more = f" (and {len(bad) - SHOW_BAD_ROWS} more)" if len(bad) > SHOW_BAD_ROWS else ""
        raise InvalidArgument(f"labels: {len(bad)} bad rows, nothing loaded: {'; '.join(bad[:SHOW_BAD_ROWS])}{more}")
    return rows


def load_labels(settings: Settings, spec: PipelineSpec, source: Source) -> int:
    """Read labels from `source` and upsert them in one transaction; returns the rows loaded."""
    return upsert_labels(settings, label_rows(read_source(source, settings), spec, datetime.now(UTC)))


def upsert_labels(settings: Settings, rows: list[tuple[Any, ...]]) -> int:
    """Write `label_rows`' rows in one transaction (a corrected label replaces the old one)."""
    with connect(settings) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO labels (pipeline, request_id, entity_id, label, observed_at)"
            " SELECT %(p)s, %(r)s, %(e)s, %(y)s, COALESCE(%(at)s::timestamptz, (SELECT max(created_at)"
            " FROM inference_requests WHERE request_id = %(r)s AND entity_id = %(e)s), now())"
            " ON CONFLICT (pipeline, entity_id, observed_at, request_key) DO UPDATE SET label = EXCLUDED.label",
            [dict(zip(("p", "r", "e", "y", "at"), row, strict=True)) for row in rows],
        )
    return len(rows)
