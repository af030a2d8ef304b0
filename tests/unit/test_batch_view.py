"""Batch predictions where people read them: the platform API's page of runs, the mlcycle page's
section, `mlcycle batch run`'s argument checks and its summary's output line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlcycle_batch import batch_runs_page, batch_section
from mlcycle_page import page_html

from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import Settings
from pipelines.core.spec import parse_spec
from pipelines.io.batch_history import output_location, run_json
from pipelines.local.follow import batch_conf
from tests.specs import churn_spec_dict
from tests.unit.test_page import overview

RUN: dict[str, Any] = {
    "run_id": "manual__2026-12-01<script>",
    "version": 3,
    "as_of": datetime(2026, 12, 1, tzinfo=UTC),
    "partitions": 2,
    "rows_scored": 2990,
    "rows_quarantined": 10,
    "seconds": 41.25,
    "outputs": {
        "table": "batch_predictions",
        "view": "churn_predictions_latest",
        "parquet": ["s3://mlcycle/churn/r1/batch/part-0.parquet", "s3://mlcycle/churn/r1/batch/part-1.parquet"],
        "quarantine": ["s3://mlcycle/churn/r1/batch/quarantine-0.parquet"],
    },
    "published_at": datetime(2026, 12, 1, 0, 1, 2, tzinfo=UTC),
}


def spec(**batch: Any) -> Any:
    data = churn_spec_dict()
    if batch:
        data["batch"] = batch
    else:
        data.pop("batch", None)
    return parse_spec(data, "churn.yaml")


def test_a_run_answers_in_json_with_iso_instants_and_its_outputs() -> None:
    answered = run_json(RUN)
    assert answered["as_of"] == "2026-12-01T00:00:00+00:00" and answered["published_at"] == "2026-12-01T00:01:02+00:00"
    assert answered["outputs"] == RUN["outputs"] and answered["rows_scored"] == 2990
    assert run_json({**RUN, "outputs": None})["outputs"] == {}


def test_the_output_location_is_the_view_and_the_parquet_folder() -> None:
    assert output_location(RUN) == "churn_predictions_latest, s3://mlcycle/churn/r1/batch/ (2 Parquet files)"
    assert output_location({"outputs": {"table": "batch_predictions"}}) == "batch_predictions"
    parquet = {"outputs": {"parquet": ["/data/r1/batch/part-0.parquet"]}}
    assert output_location(parquet) == "/data/r1/batch/ (1 Parquet file)"
    assert output_location({"outputs": {}}) == "–"
    removed = {**RUN, "rows_removed_at": "2026-12-07T10:00:00+00:00"}
    assert output_location(removed) == (
        "batch_predictions rows removed 2026-12-07, s3://mlcycle/churn/r1/batch/ (2 Parquet files)"
    )


def test_the_page_section_lists_each_run_escaped_newest_first_or_says_how_to_start_one() -> None:
    older = {**RUN, "run_id": "scheduled__2026-11-30", "version": 2, "rows_scored": 17}
    html = batch_section("churn", [run_json(RUN), run_json(older)])
    assert html.startswith("<h2>Batch predictions</h2><table id='batch'>")
    assert "<script>" not in html and "manual__2026-12-01&lt;script&gt;" in html
    assert html.index("manual__2026-12-01") < html.index("scheduled__2026-11-30")
    row = html.split("<tr>")[2]
    for cell in (
        "2026-12-01 00:01:02",
        "v3",
        "2026-12-01 00:00",
        ">2990<",
        ">10<",
        ">41.2<",
        "churn_predictions_latest",
    ):
        assert cell in row, (cell, row)
    assert "/dags/churn_batch/runs/manual__2026-12-01%3Cscript%3E" in row  # its Airflow run
    empty = batch_section("churn", [])
    assert "No batch run published yet" in empty and "mlcycle batch run --pipeline churn" in empty


def test_the_page_shows_the_batch_section_only_where_it_is_given() -> None:
    common: dict[str, Any] = {
        "pipelines": ["churn"],
        "selected": "churn",
        "data": overview(),
        "mlflow_base": "",
        "psi_threshold": 0.2,
    }
    assert "Batch predictions" not in page_html(**common)
    html = page_html(**common, batch=batch_section("churn", [run_json(RUN)]))
    assert html.index("<h2>Last runs</h2>") < html.index("<h2>Batch predictions</h2>")


def test_a_spec_without_batch_has_an_empty_page_of_runs_read_from_nowhere() -> None:
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")  # never connected to
    assert batch_runs_page(settings, spec(), 50, 0) == {
        "items": [],
        "total": 0,
        "limit": 50,
        "offset": 0,
        "next_offset": None,
    }


def test_batch_run_conf_is_refused_before_a_trigger_without_a_batch_section_or_a_readable_instant() -> None:
    with pytest.raises(InvalidArgument, match="churn declares no `batch:` section, so there is no churn_batch DAG"):
        batch_conf(spec(), None)
    assert batch_conf(spec(parallelism=2), None) == {}
    assert batch_conf(spec(parallelism=2), "2026-12-01T06:00:00+01:00") == {"as_of": "2026-12-01T06:00:00+01:00"}
    assert batch_conf(spec(parallelism=2), "2026-12-01") == {"as_of": "2026-12-01T00:00:00+00:00"}  # UTC
    with pytest.raises(InvalidArgument, match="--as-of 'yesterday': not an ISO 8601 instant"):
        batch_conf(spec(parallelism=2), "yesterday")
    with pytest.raises(InvalidArgument, match=r"--as-of: churn's batch.as_of \(2026-01-01T00:00:00\+00:00\) fixes"):
        batch_conf(spec(as_of="2026-01-01T00:00:00Z"), "2026-12-01")


def test_mlcycle_batch_run_of_a_pipeline_without_batch_exits_2_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    data = churn_spec_dict()
    data.pop("batch", None)
    (tmp_path / "churn.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(tmp_path))
    monkeypatch.setenv("MLCYCLE_STATE_DIR", str(tmp_path / "state"))  # no platform runs there
    assert main(["batch", "run", "--pipeline", "churn", "--wait"]) == 2
    err = capsys.readouterr().err
    assert "churn declares no `batch:` section" in err and "not running" not in err
