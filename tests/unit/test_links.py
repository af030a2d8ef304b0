"""The operator's extra links, from a step's result (pure)."""

from __future__ import annotations

from types import SimpleNamespace

from operators.links import MlflowLink, ReportLink, mlflow_url, report_url


def test_mlflow_url_of_a_training_run_and_of_a_registered_version() -> None:
    train = {"mlflow_run_id": "abc", "mlflow_experiment_id": "7"}
    assert mlflow_url("http://mlflow:5000/", "train", train) == "http://mlflow:5000/#/experiments/7/runs/abc"
    promoted = {"model": "mlcycle-churn", "version": 3}
    assert mlflow_url("http://m", "promote", promoted) == "http://m/#/models/mlcycle-churn/versions/3"
    assert mlflow_url("http://m", "ingest", {"rows": 1}) == ""


def test_report_url_names_the_step_report_under_the_plugin() -> None:
    url = report_url("churn_lifecycle", "manual__2026-11-25T06:15:35+00:00", "validate")
    assert url == "/mlcycle/artifacts/churn_lifecycle/manual__2026-11-25T06%3A15%3A35%2B00%3A00/validate/report.html"
    assert report_url("churn_drift", "r1", "drift").endswith("/drift/report.html")


def test_links_come_from_the_operator_that_ran() -> None:
    key = SimpleNamespace(dag_id="churn_lifecycle", run_id="r1")
    ran = SimpleNamespace(step="evaluate", result={"verdict": {"passed": True}})
    assert ReportLink().get_link(ran, ti_key=key) == "/mlcycle/artifacts/churn_lifecycle/r1/evaluate/report.html"  # type: ignore[arg-type]
    failed = SimpleNamespace(step="evaluate", result=None)  # no result: no report to open
    assert ReportLink().get_link(failed, ti_key=key) == ""  # type: ignore[arg-type]
    no_report = SimpleNamespace(step="features", result={"rows": 1})
    assert ReportLink().get_link(no_report, ti_key=key) == ""  # type: ignore[arg-type]
    assert MlflowLink().get_link(SimpleNamespace(step="train", result={}), ti_key=key) == ""  # type: ignore[arg-type]
