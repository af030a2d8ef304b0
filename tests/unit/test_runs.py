"""pipelines.io.runs: how a run is shown (pure), in the order of the table of steps."""

from __future__ import annotations

from datetime import timedelta

from pipelines.io.runs import StepRow, outputs_summary, render_run


def test_a_run_is_shown_in_lifecycle_order_with_its_outputs() -> None:
    rows = [
        StepRow(
            "promote",
            "succeeded",
            1,
            timedelta(seconds=2.5),
            {"model": "mlcycle-churn", "version": 3, "aliases": ["challenger"]},
        ),
        StepRow(
            "ingest",
            "reused",
            2,
            timedelta(seconds=0.25),
            {"snapshot": "s3://b/x.parquet", "rows": 10, "content_hash": "sha256:a"},
        ),
        StepRow("canary", "running", 1, None, {}),
    ]
    text = render_run("churn", "r1", rows).splitlines()
    assert text[0] == "churn run r1"
    assert [line.split()[0] for line in text if not line.startswith("      ")][1:] == ["ingest", "promote", "canary"]
    assert "  ingest    reused    attempt 2  0.2s" in text
    assert "      model version: mlcycle-churn v3 aliases ['challenger']" in text
    assert "  canary    running   attempt 1  -" in text


def test_no_run_yet() -> None:
    assert render_run("churn", None, []) == "no runs of churn yet"


def test_a_skipped_step_shows_its_reason() -> None:
    assert outputs_summary("promote", {"reason": "gate failed"}) == [("reason", "gate failed")]
    assert outputs_summary("canary", {"reason": "dry run"}) == [("reason", "dry run")]
