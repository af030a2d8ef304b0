"""The mlcycle page of the Airflow UI, and the catalog's pure parts it draws from."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from mlcycle_page import (
    DRIFTED_COLOUR,
    canary_walk_svg,
    drifted_cell,
    heat,
    live_metric_svg,
    live_series,
    metric_value,
    page_html,
    page_url,
    version_roles,
    window_dates,
)

from pipelines.core.steps import dag_of_run
from pipelines.io.catalog import canary_state, drift_matrix, judged_features, last_of_version, live_figure

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
    challenger = re.search(r'<div class="card" data-alias="challenger">.*?</div></div>', html, re.S)
    assert challenger is not None and '<b class="big">no challenger</b>' in challenger.group(0)
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
    v1 = {**overview()["detail"]["champion"], "version": 1}
    html = render(overview(canary=canary, champion=v1))
    assert "<b>rolled_back</b>, traffic now v1 100%" in html and "Since then" not in html
    assert html.count("<circle") == 2 and "#dc2626" in html  # the rollback step in red
    assert "p99 over" in html
    first = render(
        overview(canary={**canary, "steps": [], "outcome": "deployed", "weights": {"1": 100.0}}, champion=v1)
    )
    assert "<b>deployed</b>, traffic now v1 100%" in first and "<svg" not in first
    assert "No canary has run" in render(overview())


def test_a_champion_moved_after_the_last_canary_is_what_the_serving_section_says_serves() -> None:
    promoted = {"run_id": "manual__3", "champion": 1, "challenger": 2, "steps": []}
    promoted.update(canary_state("success", {"champion": 1, "challenger": 2, "steps": [], "outcome": "promoted"}))
    v1 = {**overview()["detail"]["champion"], "version": 1}  # rolled back from v2 since
    rollback = {"at": "2026-12-06 17:13:13", "actor": "admin", "actor_kind": "user", "action": "rollback",
                "version": 1, "run_id": "manual__1", "reason": "p99 <doubled>", "detail": {}}  # fmt: skip
    html = render({**overview(canary=promoted, champion=v1), "audit": [rollback]})
    assert "<b>promoted</b>, traffic then v2 100%" in html
    assert "<b>Since then</b>: v1 is champion and serves all traffic (rollback by admin: p99 &lt;doubled&gt;)" in html
    still = render({**overview(canary=promoted), "audit": [rollback]})  # v2 is champion: nothing moved
    assert "traffic now v2 100%" in still and "Since then" not in still


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
    assert "v2 (champion): live roc_auc <b>0.8300</b> on 500 labels against its evaluation 0.8395" in html
    assert "v1 (retired): last live 0.7100 on 300 labels" in html
    assert "v2 (champion): no live figure yet: no labelled predictions yet." in render(overview())
    assert "No drift check has scored" in render(overview(champion=None))


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
    assert dag_of_run("churn", {"batch_pin", "batch", "batch_publish"}) == "churn_batch"
    assert dag_of_run("churn", {"batch_pin"}) == "churn_batch"
    assert metric_value("roc_auc=0.8395") == ("roc_auc", 0.8395)
    assert metric_value(None) is None and metric_value("garbled") is None and metric_value("a=b") is None
    assert window_dates(None) == "–"
    assert page_url("churn", request_id="r 1") == "/mlcycle/page?pipeline=churn&request_id=r+1"


def card(html: str, alias: str) -> str:
    found = re.search(rf'<div class="card" data-alias="{alias}">.*?</div></div>', html, re.S)
    assert found is not None, html
    return found.group(0)


def test_a_first_model_that_is_champion_and_challenger_shows_no_challenger() -> None:
    first = {"version": 1, "metric": "roc_auc=0.81", "run_id": "manual__1"}
    html = render(overview(champion=first, challenger=dict(first)))
    assert "v1</b>" in card(html, "champion")
    assert '<b class="big">no challenger</b>' in card(html, "challenger") and "v1</b>" not in card(html, "challenger")
    assert "v1 is the champion" in card(html, "challenger")
    # a challenger of its own is shown as one
    waiting = render(overview(challenger={"version": 3, "metric": "roc_auc=0.85", "run_id": "manual__3"}))
    assert "v3</b> roc_auc <b>0.8500</b>" in card(waiting, "challenger")
    nothing = render(overview(champion=None))
    assert '<b class="big">no champion yet</b>' in card(nothing, "champion")
    assert '<b class="big">no challenger</b>' in card(nothing, "challenger")


LIVE_V1 = [
    {"version": 1, "metric": "roc_auc", "value": 0.71, "rows": 300, "at": "2026-11-26T09:58:00+00:00"},
    {"version": 1, "metric": "roc_auc", "value": 0.69, "rows": 320, "at": "2026-11-26T10:58:00+00:00"},
]
PROMOTED = [  # v2 promoted by the canary: v1 retired, no alias left on it
    {"version": 2, "aliases": ["champion"], "metric": "roc_auc=0.8395", "lineage": {}},
    {"version": 1, "aliases": [], "metric": "roc_auc=0.8100", "lineage": {}},
]


def now(value: float | None, rows: int, short: str | None = None) -> dict[str, Any]:
    return {
        "version": 2,
        "metric": "roc_auc",
        "value": value,
        "rows": rows,
        "need": 30,
        "short": short,
        "at": "2026-11-26T12:00:00+00:00",
        "window_hours": 24.0,
    }


def test_after_a_promotion_the_live_chart_shows_the_champions_figure_and_the_retired_ones_history() -> None:
    data = {**overview(), "versions": PROMOTED, "live": LIVE_V1, "champion_live": now(0.8123, 64)}
    html = render(data)
    section = html[html.index("<h2>Live metric</h2>") : html.index("<h2>Drift per feature</h2>")]
    assert "v2 (champion): live roc_auc <b>0.8123</b> on 64 labels of the last 24 h against its evaluation 0.8395" in (
        section
    )
    assert "v1 (retired): last live 0.6900 on 320 labels" in section
    assert re.search(r'<circle [^>]*r="6" fill="[^"]+" data-version="2">', section)  # the champion's point, ringed
    assert section.count('data-version="1">') == 3  # two checks of v1 and its evaluation line
    assert "■ v2 champion" in section and "■ v1 retired" in section
    # no labels for the champion yet: it says so, and still draws its evaluation line beside v1's history
    short = "12 labelled predictions in the last 24 h, a figure needs 30"
    waiting = render({**data, "champion_live": now(None, 12, short)})
    assert f"v2 (champion): no live figure yet: {short}. Its evaluation: 0.8395." in waiting
    assert 'stroke-dasharray="5,4" data-version="2"' in waiting


def test_live_series_adds_the_champions_figure_now_unless_a_later_check_scored_it() -> None:
    points = live_series(LIVE_V1, 2, now(0.8, 40))
    assert [(p["version"], p["now"]) for p in points] == [(1, False), (1, False), (2, True)]
    checked = [
        *LIVE_V1,
        {"version": 2, "metric": "roc_auc", "value": 0.82, "rows": 50, "at": "2026-11-26T13:00:00+00:00"},
    ]
    assert [p["now"] for p in live_series(checked, 2, now(0.8, 40))] == [False, False, False]
    later = {**checked[-1], "at": "2026-11-26T14:00:00+02:00"}  # 12:00 UTC: not after the figure of 12:00 UTC
    assert live_series([later], 2, now(0.8, 40))[-1]["now"] is False
    assert live_series([{**later, "at": "2026-11-26T13:59:00+02:00"}], 2, now(0.8, 40))[-1]["now"] is True
    assert len(live_series(LIVE_V1, 2, now(None, 3, "short"))) == 2  # no figure: nothing invented
    assert len(live_series(LIVE_V1, 1, now(0.8, 40))) == 2  # a figure of another version than the champion
    assert version_roles(PROMOTED, 2) == {2: "champion", 1: "retired"}
    assert version_roles([{"version": 3, "aliases": ["challenger"]}, *PROMOTED], 2)[3] == "challenger"


def test_the_pipelines_live_metric_is_its_champions_latest() -> None:
    assert last_of_version(LIVE_V1, 1) == LIVE_V1[-1]
    assert last_of_version(LIVE_V1, 2) is None and last_of_version(LIVE_V1, None) is None


def test_a_live_figure_needs_enough_labels_of_both_classes() -> None:
    def share_right(y: Any, p: Any) -> float:  # a metric of the rows given: the share of right answers
        return float(((p > 0.5) == (y > 0.5)).mean())

    rows = [(2, 0.9 if i % 3 else 0.2, float(i % 2)) for i in range(40)]
    figure = live_figure(rows, "accuracy", "binary", share_right)
    expected = sum((s > 0.5) == (y > 0.5) for _, s, y in rows) / 40
    assert figure["value"] == pytest.approx(expected) and figure["rows"] == 40 and figure["short"] is None
    few = live_figure(rows[:29], "accuracy", "binary", share_right, where=" in the last 24 h")
    assert few["value"] is None and few["short"] == "29 labelled predictions in the last 24 h, a figure needs 30"
    one_class = live_figure([(2, 0.9, 1.0)] * 40, "accuracy", "binary", share_right)
    assert one_class["value"] is None and "one class" in one_class["short"]
    regression = live_figure([(2, 1.0, 1.0)] * 30, "mae", "regression", lambda y, p: float(abs(y - p).mean()))
    assert regression["value"] == 0.0


def manifest(drifted: dict[str, tuple[bool, float, bool]]) -> dict[str, Any]:
    """A drift check's manifest: per feature (Evidently's test failed, PSI, counted as drifted)."""
    return {
        "features": {
            f: {
                "psi": psi,
                "test": "ks",
                "p_value": 0.01,
                "evidently": {"method": "wasserstein", "threshold": 0.1, "drifted": test, "score": 0.3},
                "drifted": counted,
            }
            for f, (test, psi, counted) in drifted.items()
        }
    }


def test_heat_cells_are_red_where_the_check_counted_the_feature_as_drifted() -> None:
    """The verdict's rule: Evidently's test failed or PSI past the spec's threshold; a check says
    drift with 2 of 3 features drifted by Evidently's tests while every PSI is under 0.2."""
    at = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    rows = [("c1", at, "drift", "plan", 0.05), ("c1", at, "drift", "tenure", 0.12), ("c1", at, "drift", "age", 0.01)]
    judged = {
        "c1": judged_features(
            manifest({"plan": (True, 0.05, True), "tenure": (True, 0.12, True), "age": (False, 0.01, False)})
        )
    }
    matrix = drift_matrix(rows, judged)
    assert matrix["judged"]["plan"][0]["drifted"] is True and matrix["judged"]["age"][0]["drifted"] is False
    html = render({**overview(), "drift": matrix}, drift_ignored=frozenset({"tenure"}))
    table = html[html.index("<table class='heat'>") :]
    assert table.count(f"background:{DRIFTED_COLOUR}") == 1  # plan; tenure drifted too but is ignored
    assert table.count("data-drifted") == 1
    assert "Evidently's drift test for the feature failed, or its PSI passed 0.2 (the spec's" in html
    assert "red past" not in html
    # the rule itself
    assert drifted_cell(0.05, {"drifted": True}, 0.2) is True
    assert drifted_cell(0.5, {"drifted": False}, 0.2) is False  # the check's own judgement wins
    assert drifted_cell(0.25, None, 0.2) is True and drifted_cell(0.15, None, 0.2) is False  # no judgement: PSI
    assert drifted_cell(None, None, 0.2) is None
    assert heat(0.05, 0.2, True) == DRIFTED_COLOUR and heat(0.31, 0.2, False) != DRIFTED_COLOUR
    assert heat(0.31, 0.2) == DRIFTED_COLOUR and heat(0.1, 0.5) != DRIFTED_COLOUR  # the spec's threshold, not 0.2
    # a check without a readable manifest is coloured by PSI alone, and its cell says so
    bare = render({**overview(), "drift": drift_matrix([("c2", at, "ok", "plan", 0.3)])}, drift_ignored=frozenset())
    assert "no judgement recorded: PSI rule only" in bare and f"background:{DRIFTED_COLOUR}" in bare


def test_judged_features_reads_what_the_check_decided_per_feature() -> None:
    got = judged_features(manifest({"plan": (True, 0.05, True)}))
    assert got == {
        "plan": {
            "drifted": True,
            "evidently": {"method": "wasserstein", "score": 0.3, "threshold": 0.1, "drifted": True},
        }
    }
    assert judged_features({"status": "insufficient_data", "features": {}}) == {}
    assert judged_features({"features": {"x": {"psi": 0.1}}}) == {}  # nothing judged: nothing claimed


def test_a_run_waiting_for_approval_shows_its_summary_a_reason_and_the_two_buttons() -> None:
    """Only while a run waits: its subject and body (escaped), a reason field, Approve and Reject
    that post to the platform API's approvals of the pipeline, as the logged-in user."""
    waiting = [
        {
            "run_id": "manual__3",
            "subject": "Promote churn's challenger of run manual__3?",
            "body": "**Why a person decides:** <manual>",
        }
    ]
    assert "data-decision" not in render(overview()) and "Waiting for approval" not in render(overview())
    html = render(overview(), approvals=waiting)
    form = re.search(r'<form class="approval".*?</form>', html, re.S)
    assert form is not None
    assert 'data-run="manual__3" data-api="/api/ml/pipelines/churn/approvals"' in form.group(0)
    assert "&lt;manual&gt;" in form.group(0) and "<manual>" not in html
    assert '<button type="button" data-decision="approve">' in form.group(0)
    assert '<button type="button" data-decision="reject">' in form.group(0)
    assert 'href="/dags/churn_lifecycle/runs/manual__3"' in form.group(0)
    assert 'fetch(form.dataset.api, {method: "POST", credentials: "same-origin"' in html


def test_the_alerts_section_lists_what_fires_escaped_or_says_why_it_cannot_tell() -> None:
    from mlcycle_alerts import alerts_section, firing_for

    from pipelines.core.alerts import by_pipeline
    from pipelines.core.settings import Settings
    from tests.services import free_port_pairs

    (closed,) = free_port_pairs(1)
    answer = [  # Alertmanager's GET /api/v2/alerts, an event posted by anyone who reaches it included
        {
            "labels": {"alertname": "MlcycleCanaryRolledBack", "pipeline": "churn", "severity": "warning"},
            "annotations": {"summary": "v2 rolled back at 20% <script>alert(1)</script>"},
            "startsAt": "2026-12-06T21:40:00.123Z",
        },
        {"labels": {"alertname": "MlcycleDriftFound", "pipeline": "wine"}, "startsAt": "2026-12-06T20:00:00Z"},
    ]
    html = alerts_section(by_pipeline(answer)["churn"])
    assert "(1 firing)" in html and "MlcycleCanaryRolledBack" in html and "2026-12-06T21:40:00" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "MlcycleDriftFound" not in html
    assert "None fires." in alerts_section([])
    unset, why = firing_for(Settings(alertmanager_url=None), "churn")
    assert unset is None and "No Alertmanager is configured" in alerts_section(unset, why)
    away, why = firing_for(Settings(alertmanager_url=f"http://127.0.0.1:{closed}"), "churn")
    assert away is None and "Alertmanager did not answer (ConnectError)" in alerts_section(away, why)
