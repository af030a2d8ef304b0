"""The mlcycle page of the Airflow UI, and the catalog's pure parts it draws from."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from mlcycle_page import (
    canary_walk_svg,
    heat,
    live_metric_svg,
    metric_value,
    page_html,
    page_url,
    window_dates,
)

from pipelines.core.steps import dag_of_run
from pipelines.io.catalog import canary_state, drift_matrix

WALK = [
    {"percent": 5, "decision": "advance", "seconds": 60, "reasons": ["ok"], "figures": {}},
    {"percent": 25, "decision": "rollback", "seconds": 20, "reasons": ["p99 over"], "figures": {}},
]


def overview(**detail: Any) -> dict[str, Any]:
    base = {
        "pipeline": "churn",
        "model": "mlcycle-churn",
        "champion": {
            "version": 2,
            "metric": "roc_auc=0.839512",
            "data_hash": "sha256:27f94c6cc100aaaa",
            "run_id": "manual__1",
            "data_window": "2026-06-19T09:58:53+00:00 .. 2026-11-26T09:58:53+00:00",
            "since": "2026-11-26 10:03:52",
            "by": "churn/manual__1/canary",
        },
        "challenger": None,
        "runs": [
            {"run_id": "manual__1", "started": "2026-11-26 09:57:13", "outcome": "ok through canary", "cause": None},
            {"run_id": "scheduled__2", "started": "2026-11-26 10:00:01", "outcome": "ok through drift", "cause": None},
        ],
        "canary": None,
    }
    return {
        "detail": {**base, **detail},
        "versions": [
            {"version": 2, "metric": "roc_auc=0.8395", "lineage": {"validation_report": "/mlcycle/reports/x/v"}},
            {"version": 1, "metric": "roc_auc=0.8100", "lineage": {}},
        ],
        "live": [],
        "drift": {"checks": [], "features": {}},
        "runs": {
            "manual__1": {
                "dag_id": "churn_lifecycle",
                "steps": {"train": "succeeded", "validate": "succeeded"},
                "reports": {"validate": "/mlcycle/reports/churn_lifecycle/manual__1/validate"},
                "mlflow": {"mlflow_run_id": "abc", "mlflow_experiment_id": "7"},
            },
            "scheduled__2": {"dag_id": "churn_drift", "steps": {"drift": "succeeded"}, "reports": {}, "mlflow": None},
        },
    }


def render(data: dict[str, Any], **kw: Any) -> str:
    return page_html(
        pipelines=["churn", "tumours"],
        selected="churn",
        data=data,
        mlflow_base="http://m:5000",
        psi_threshold=0.2,
        **kw,
    )


def test_the_page_shows_the_champion_with_its_figure_and_links_that_leave_the_frame() -> None:
    html = render(overview())
    card = re.search(r'<div class="card" data-alias="champion">.*?</div></div>', html, re.S)
    assert card is not None
    assert "v2</b> roc_auc <b>0.8395</b>" in card.group(0) and "2026-06-19 .. 2026-11-26" in card.group(0)
    assert '<a href="/dags/churn_lifecycle/runs/manual__1" target="_top">training run</a>' in card.group(0)
    assert 'href="http://m:5000/#/models/mlcycle-churn/versions/2" target="_blank">MLflow' in card.group(0)
    assert '<div class="card"><div class="muted">challenger</div><b class="big">none</b>' in html
    assert f'href="{page_url("tumours")}"' in html and " class=on>churn</a>" in html  # a tab per pipeline


def test_the_last_runs_link_each_run_in_its_own_dag_with_its_reports_and_mlflow() -> None:
    html = render(overview())
    assert 'href="/dags/churn_drift/runs/scheduled__2"' in html  # a drift check's run lives in the drift DAG
    assert 'href="/mlcycle/reports/churn_lifecycle/manual__1/validate" target="_top">validate' in html
    assert 'href="http://m:5000/#/experiments/7/runs/abc" target="_blank"' in html
    empty = render({**overview(), "detail": {**overview()["detail"], "runs": []}})
    assert "No run yet." in empty


def test_the_canary_section_plots_the_walk_and_tables_each_step() -> None:
    canary = {
        "run_id": "manual__3",
        "champion": 1,
        "challenger": 2,
        "steps": WALK,
        **canary_state("failed", {"champion": 1, "challenger": 2, "steps": WALK, "outcome": "rolled_back"}),
    }
    html = render(overview(canary=canary))
    assert "<b>rolled_back</b>, traffic now v1 100%" in html
    assert html.count("<circle") == 2 and "#dc2626" in html  # the rollback step in red
    assert "p99 over" in html
    first = render(overview(canary={**canary, "steps": [], "outcome": "deployed", "weights": {"1": 100.0}}))
    assert "<b>deployed</b>, traffic now v1 100%" in first and "<svg" not in first
    assert "No canary has run" in render(overview())


def test_the_walk_is_a_step_line_over_the_canarys_time() -> None:
    svg = canary_walk_svg(WALK, "rolled_back")
    path = re.search(r'<path d="([^"]+)"', svg)
    assert path is not None and path.group(1).startswith("M") and path.group(1).count("M") == 1  # one line
    assert "80 s · rolled_back" in svg
    assert canary_walk_svg([], "deployed") == ""


def test_the_live_metric_is_drawn_against_each_versions_evaluation_figure() -> None:
    live = [
        {"version": 1, "metric": "roc_auc", "value": 0.71, "rows": 300, "at": "2026-11-26T09:58:00+00:00"},
        {"version": 2, "metric": "roc_auc", "value": 0.83, "rows": 500, "at": "2026-11-26T11:00:00+00:00"},
    ]
    svg = live_metric_svg(live, {1: 0.81, 2: 0.8395})
    assert svg.count('stroke-dasharray="5,4"') == 2 and svg.count("<circle") == 2
    html = render({**overview(), "live": live})
    assert "v2: live roc_auc <b>0.8300</b> on 500 labels against its evaluation 0.8395" in html
    assert "No drift check has scored" in render(overview())


def test_drift_per_feature_is_a_heat_table_and_ignored_features_are_not_coloured() -> None:
    at = [datetime(2026, 11, 26, 9, 58, tzinfo=UTC), datetime(2026, 11, 26, 10, 0, tzinfo=UTC)]
    matrix = drift_matrix(
        [
            ("c1", at[0], "ok", "plan", 0.05),
            ("c1", at[0], "ok", "tenure_months", 0.6),
            ("c2", at[1], "drift", "plan", 0.31),
            ("c2", at[1], "drift", "<b>x</b>", 0.1),
        ]
    )
    assert [c["run_id"] for c in matrix["checks"]] == ["c1", "c2"]
    assert matrix["features"] == {"<b>x</b>": [None, 0.1], "plan": [0.05, 0.31], "tenure_months": [0.6, None]}
    html = render({**overview(), "drift": matrix}, drift_ignored=frozenset({"tenure_months"}))
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html  # names are escaped
    assert "tenure_months (ignored)" in html
    assert 'href="/mlcycle/reports/churn_drift/c2/drift"' in html  # a column opens its check's report
    assert heat(0.31, 0.2) == "#fca5a5" and heat(None, 0.2) == "#f9fafb" and heat(0.0, 0.2).startswith("rgba(")


def test_a_trace_lists_each_answer_down_to_its_validation_report() -> None:
    answer = {
        "pipeline": "churn",
        "entity_id": "850",
        "score": 0.5453,
        "status": "ok",
        "shadow": False,
        "served_at": "2026-11-26T10:08:54.196+00:00",
        "label": None,
        "model": {
            "version": 2,
            "aliases": ["champion"],
            "lineage": {"lifecycle_run": "manual__1", "data_hash": "sha256:abc", "validation_report": "/r/v"},
        },
    }
    html = render(overview(), trace_query="0f0e", trace=[answer])
    row = re.search(r"<table id='trace'>.*?</table>", html, re.S)
    assert row is not None and "v2 champion" in row.group(0) and 'href="/r/v"' in row.group(0)
    assert 'href="/dags/churn_lifecycle/runs/manual__1"' in row.group(0)
    missing = render(overview(), trace_query="<nope>", trace_error="no prediction '<nope>'")
    assert "<p class='bad' id='trace-error'>no prediction &#x27;&lt;nope&gt;&#x27;</p>" in missing
    assert "value='&lt;nope&gt;'" in missing


@pytest.mark.parametrize(
    ("status", "report", "outcome", "weights"),
    [
        ("succeeded", {"champion": 1, "challenger": 2, "steps": WALK, "outcome": "promoted"}, "promoted", {"2": 100}),
        (
            "failed",
            {"champion": 1, "challenger": 2, "steps": WALK, "outcome": "rolled_back"},
            "rolled_back",
            {"1": 100},
        ),
        ("succeeded", {"champion": 1, "challenger": 1, "steps": [], "outcome": "deployed"}, "deployed", {"1": 100}),
        ("running", {"champion": 1, "challenger": 2, "steps": WALK[:1]}, "running", {"1": 95, "2": 5}),
        ("running", {}, "running", {}),
    ],
)
def test_canary_state(status: str, report: dict[str, Any], outcome: str, weights: dict[str, float]) -> None:
    state = canary_state(status, report)
    assert state["outcome"] == outcome and state["weights"] == weights


def test_small_helpers() -> None:
    assert dag_of_run("churn", {"drift"}) == "churn_drift"
    assert dag_of_run("churn", {"ingest", "validate"}) == "churn_lifecycle"
    assert metric_value("roc_auc=0.8395") == ("roc_auc", 0.8395)
    assert metric_value(None) is None and metric_value("garbled") is None and metric_value("a=b") is None
    assert window_dates(None) == "–"
    assert page_url("churn", request_id="r 1") == "/mlcycle/page?pipeline=churn&request_id=r+1"
