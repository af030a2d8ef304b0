"""A pipeline's batch predictions in the platform API (`GET /pipelines/{pipeline}/batch`) and on
the mlcycle page (its "Batch predictions" section): the published runs of `<name>_batch`, newest
first, read from `batch_runs` (docs/batch.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

from fastapi import Depends, FastAPI, Query  # FastAPI reads these names from the module
from mlcycle_page import link, run_page  # beside this file (sys.path)

from pipelines.core.resources import page_of
from pipelines.core.settings import Settings, load_settings, spec_for
from pipelines.core.spec import PipelineSpec
from pipelines.io.batch_history import output_location, published_page

PAGE_RUNS = 10
"""The newest runs the page lists (the API pages through all of them)."""


def add_batch_routes(app: FastAPI, readable: Callable[..., Any]) -> None:
    """`GET /pipelines/{pipeline}/batch`, behind reading the pipeline (`readable()`: 404, 403, 409)."""

    @app.get("/pipelines/{pipeline}/batch")
    def batch(
        name: str = Depends(readable()), limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)
    ) -> dict[str, Any]:
        """The pipeline's published batch runs, newest first: version, as_of, partitions, rows
        scored and quarantined, seconds, outputs, published_at; none for a spec without `batch`."""
        settings = load_settings()
        return {"pipeline": name, **batch_runs_page(settings, spec_for(settings, name), limit, offset)}


def batch_runs_page(settings: Settings, spec: PipelineSpec, limit: int, offset: int) -> dict[str, Any]:
    """A page of the spec's published batch runs; an empty one where it declares no `batch`."""
    if spec.batch is None:
        return page_of([], 0, limit, offset)
    return published_page(settings, spec.name, limit, offset)


def batch_for(settings: Settings, spec: PipelineSpec) -> str:
    """The page's section of the pipeline's batch runs ("" where its spec declares no `batch`)."""
    if spec.batch is None:
        return ""
    return batch_section(spec.name, published_page(settings, spec.name, PAGE_RUNS, 0)["items"])


def batch_section(pipeline: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """The section's HTML: the newest published batch runs (`run_json` rows), or how to start
    one. Pure."""
    head = "<h2>Batch predictions</h2>"
    if not runs:
        how = f"No batch run published yet: trigger {pipeline}_batch, or `mlcycle batch run --pipeline {pipeline}`."
        return f"{head}<p class='muted'>{escape(how)}</p>"
    rows = "".join(
        f"<tr><td class='when'>{escape(str(r['published_at'])[:19].replace('T', ' '))}</td>"
        f"<td>{link(run_page(f'{pipeline}_batch', str(r['run_id'])), str(r['run_id']))}</td>"
        f"<td>v{int(r['version'])}</td><td class='when'>{escape(str(r['as_of'])[:16].replace('T', ' '))}</td>"
        f"<td class='num'>{int(r['rows_scored'])}</td><td class='num'>{int(r['rows_quarantined'])}</td>"
        f"<td class='num'>{float(r['seconds']):.1f}</td><td>{escape(output_location(r))}</td></tr>"
        for r in runs
    )
    return (
        f"{head}<table id='batch'><tr><th>published (UTC)</th><th>run</th><th>version</th><th>as of</th>"
        f"<th>rows scored</th><th>quarantined</th><th>seconds</th><th>output</th></tr>{rows}</table>"
    )
