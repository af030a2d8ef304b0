"""The operator's extra links, from a step's result (pure)."""

from __future__ import annotations

from types import SimpleNamespace

from operators.links import MlflowLink, ReportLink, mlflow_url
from pipelines.core.steps import artifact_url, report_url


def test_mlflow_url_of_a_training_run_and_of_a_registered_version() -> None:
    train = {"mlflow_run_id": "abc", "mlflow_experiment_id": "7"}
    assert mlflow_url("http://mlflow:5000/", "train", train) == "http://mlflow:5000/#/experiments/7/runs/abc"
    promoted = {"model": "mlcycle-churn", "version": 3}
    assert mlflow_url("http://m", "promote", promoted) == "http://m/#/models/mlcycle-churn/versions/3"
    assert mlflow_url("http://m", "ingest", {"rows": 1}) == ""
    assert mlflow_url("http://m", "evaluate", train) == "http://m/#/experiments/7/runs/abc"  # it logs there


def test_report_url_names_the_step_report_under_the_plugin() -> None:
    url = report_url("churn_lifecycle", "manual__2026-11-25T06:15:35+00:00", "validate")
    assert url == "/mlcycle/reports/churn_lifecycle/manual__2026-11-25T06%3A15%3A35%2B00%3A00/validate"
    assert (
        artifact_url("churn_drift", "r1", "drift", "report.html")
        == "/mlcycle/artifacts/churn_drift/r1/drift/report.html"
    )


def test_the_report_page_frames_the_report_and_leads_back_to_the_run() -> None:
    from plugins.mlcycle_plugin import report_page_html

    html = report_page_html("churn_lifecycle", "r:1", "validate", "Validation report", ["report.html"], None)
    assert '<a href="/dags/churn_lifecycle/runs/r%3A1">' in html
    assert '<iframe src="/mlcycle/artifacts/churn_lifecycle/r%3A1/validate/report.html"' in html
    plot = report_page_html("churn_lifecycle", "r1", "canary", "Canary report", ["report.png", "report.json"], "{}")
    assert '<img src="/mlcycle/artifacts/churn_lifecycle/r1/canary/report.png"' in plot
    first = report_page_html("churn_lifecycle", "r1", "canary", "Canary report", ["report.json"], '{"outcome": "<x>"}')
    assert "&quot;outcome&quot;: &quot;&lt;x&gt;&quot;" in first  # the decisions, escaped


def test_links_come_from_the_operator_that_ran() -> None:
    key = SimpleNamespace(dag_id="churn_lifecycle", run_id="r1")
    ran = SimpleNamespace(step="evaluate", result={"verdict": {"passed": True}})
    assert ReportLink().get_link(ran, ti_key=key) == "/mlcycle/reports/churn_lifecycle/r1/evaluate"  # type: ignore[arg-type]
    failed = SimpleNamespace(step="evaluate", result=None)  # no result: no report to open
    assert ReportLink().get_link(failed, ti_key=key) == ""  # type: ignore[arg-type]
    no_report = SimpleNamespace(step="features", result={"rows": 1})
    assert ReportLink().get_link(no_report, ti_key=key) == ""  # type: ignore[arg-type]
    assert MlflowLink().get_link(SimpleNamespace(step="train", result={}), ti_key=key) == ""  # type: ignore[arg-type]
