"""pipelines.io.runs: how a run is shown (pure), in the order of the table of steps."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipelines.io.runs import StepRow, headline, outputs_summary, render_run


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


def test_an_attempt_that_wrote_nothing_shows_no_made_up_figures_and_its_error() -> None:
    """A train attempt killed mid-study (or failed) has no outputs: no `study: None ... None=0.0000`."""
    assert outputs_summary("train", {}) == []
    text = render_run(
        "churn",
        "r1",
        [
            StepRow("train", "interrupted", 1, timedelta(seconds=40), {}, "ended without recording its outcome"),
            StepRow("evaluate", "failed", 1, None, {}, "GateError: parity 0.1 > 0.0001"),
        ],
    )
    assert "None" not in text
    assert "      error: ended without recording its outcome" in text
    assert "      error: GateError: parity 0.1 > 0.0001" in text


def test_a_failure_is_recorded_with_the_cause_a_library_wrapped() -> None:
    """Optuna's "invalid data in the commit" over the database shutdown that caused it: both."""
    from pipelines.steps.runner import describe_error

    def commit(hide_cause: bool) -> None:
        try:
            raise ConnectionError("terminating connection due to administrator command")
        except ConnectionError as cause:
            raise RuntimeError("An exception is raised during the commit") from (None if hide_cause else cause)

    with pytest.raises(RuntimeError) as hidden:
        commit(hide_cause=True)
    assert describe_error(hidden.value) == "RuntimeError: An exception is raised during the commit"
    with pytest.raises(RuntimeError) as wrapped:
        commit(hide_cause=False)
    assert describe_error(wrapped.value) == (
        "RuntimeError: An exception is raised during the commit"
        " (caused by ConnectionError: terminating connection due to administrator command)"
    )


def test_the_embed_step_is_summarised_by_its_space() -> None:
    out = {
        "version": 3,
        "entities": 2000,
        "dimension": 32,
        "distance": "cosine",
        "state": "ready",
        "recall_at_10": 0.99,
    }
    assert headline("embed", out) == "vector space: v3: 2000 entities x 32 dims (cosine), ready"
    assert dict(outputs_summary("embed", out))["recall@10"] == "0.99 against exact search"


def test_an_auto_search_is_summarised_by_its_winning_family_and_each_family() -> None:
    out = {
        "study": "churn:r1",
        "trials": {"complete": 9, "pruned": 3},
        "best_trial": 4,
        "best_family": "lightgbm",
        "metric": "val_roc_auc",
        "best_value": 0.84321,
        "families": {
            "linear": {"trials": 5, "best": 0.8211, "seconds": 3.2},
            "lightgbm": {"trials": 6, "best": 0.84321, "seconds": 20.9},
            "tabular_mlp": {"trials": 1, "best": None, "seconds": 7.0},
        },
    }
    summary = dict(outputs_summary("train", out))
    assert summary["best"] == "trial 4 (lightgbm): val_roc_auc=0.8432"
    assert summary["families"] == (
        "linear 5 trials best 0.8211 in 3s; lightgbm 6 trials best 0.8432 in 21s; tabular_mlp 1 trials best - in 7s"
    )


def test_a_retention_run_says_what_it_removed_per_kind() -> None:
    out = {
        "request_log": {"partitions_dropped": ["2026-11-01", "2026-11-02"], "partitions_created": ["2026-12-13"]}
        | {"rows": 120, "bytes": 81920},
        "labels": {"rows": 3, "bytes": 150, "kept_from": "2026-09-07T17:00:00+00:00"},
        "runs": {"folders": 1, "objects": 3, "bytes": 4096},
    }
    assert outputs_summary("retention", out) == [
        ("request log", "2 day partition(s) dropped, 120 rows, 81920 bytes; 1 made"),
        ("labels", "3 rows, 150 bytes (kept from 2026-09-07T17:00:00+00:00)"),
        ("runs", "1 folder(s), 3 objects, 4096 bytes"),
    ]
