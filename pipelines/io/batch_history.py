"""Published batch runs as the platform API, the mlcycle page and `mlcycle batch run --wait` read
them (`batch_runs`, migration 0022): a page of a pipeline's runs, newest first, or one run."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.resources import page_of
from pipelines.core.settings import Settings
from pipelines.io import db

if TYPE_CHECKING:
    import pandas as pd

PUBLISHED = "FROM batch_runs WHERE pipeline=%s AND published_at IS NOT NULL"
COLUMNS = (
    "run_id, version, as_of, partitions, rows_scored, rows_quarantined, seconds, outputs, published_at, rows_removed_at"
)


def run_json(row: dict[str, Any]) -> dict[str, Any]:
    """A `batch_runs` row as the platform API answers it: instants in ISO 8601, outputs as
    published (`table`, `view`, `parquet` and `quarantine` files); `rows_removed_at`: when retention
    removed its rows of the table (None: they are there). Pure."""
    out = {**row, "outputs": row.get("outputs") or {}}
    for key in ("as_of", "published_at", "rows_removed_at"):
        if isinstance(out.get(key), datetime):
            out[key] = out[key].isoformat()
    return out


def output_location(run: Mapping[str, Any]) -> str:
    """Where a run's predictions are read: the latest view (else the table; where retention removed
    the run's rows, when), and the folder of its Parquet files where it wrote some. Pure."""
    outputs, rows_removed_at = run.get("outputs") or {}, run.get("rows_removed_at")
    table = str(outputs.get("view") or outputs.get("table") or "")
    if table and rows_removed_at:
        table = f"{outputs.get('table') or table} rows removed {str(rows_removed_at)[:10]}"
    where = [table]
    parquet = list(outputs.get("parquet") or [])
    if parquet:
        folder = str(parquet[0]).rsplit("/", 1)[0]
        where.append(f"{folder}/ ({len(parquet)} Parquet file{'s' if len(parquet) > 1 else ''})")
    return ", ".join(w for w in where if w) or "–"


def published_page(settings: Settings, pipeline: str, limit: int, offset: int) -> dict[str, Any]:
    """One page of the pipeline's published batch runs, newest first (`page_of`'s shape)."""
    with db.connect(settings) as conn:
        (total,) = conn.execute(f"SELECT count(*) {PUBLISHED}", (pipeline,)).fetchone() or (0,)
        rows = (  # an offset past the end is not asked for (nor one past PostgreSQL's bigint)
            db.fetch_dicts(
                conn,
                f"SELECT {COLUMNS} {PUBLISHED} ORDER BY published_at DESC, run_id DESC LIMIT %s OFFSET %s",
                (pipeline, limit, offset),
            )
            if offset < total
            else []
        )
    return page_of([run_json(r) for r in rows], int(total), limit, offset)


def published_run(settings: Settings, pipeline: str, run_id: str) -> dict[str, Any] | None:
    """One published batch run (as `batch_runs` and `render_batch_runs` take it), or None where
    the run was not published (it failed, or is still going)."""
    with db.connect(settings) as conn:
        rows = db.fetch_dicts(conn, f"SELECT {COLUMNS} {PUBLISHED} AND run_id=%s", (pipeline, run_id))
    return rows[0] if rows else None


def newest_answers(
    settings: Settings, pipeline: str, version: int, start: datetime, end: datetime, rows: int
) -> tuple[str, pd.DataFrame] | None:
    """The newest published batch run of `version` whose `as_of` lies in `[start, end)`: its run
    id and a random sample of at most `rows` of its answers (`score`, `predicted_class`: a
    multiclass model's class); None where there is none (or its rows are gone)."""
    import pandas as pd

    with db.connect(settings) as conn:
        found = conn.execute(
            f"SELECT run_id {PUBLISHED} AND version = %s AND as_of >= %s AND as_of < %s AND rows_removed_at IS NULL"
            " AND outputs ? 'table' ORDER BY published_at DESC, run_id DESC LIMIT 1",
            (pipeline, version, start, end),
        ).fetchone()
        if found is None:
            return None
        answers = conn.execute(
            "SELECT score, class FROM batch_predictions WHERE pipeline = %s AND run_id = %s ORDER BY random() LIMIT %s",
            (pipeline, found[0], rows),
        ).fetchall()
    if not answers:
        return None
    return str(found[0]), pd.DataFrame(answers, columns=["score", "predicted_class"])
