"""The operator's extra links, from a step's result (pure)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

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
    assert '<iframe src="/mlcycle/artifacts/churn_lifecycle/r%3A1/validate/report.html" sandbox="allow-scripts"' in html
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


def test_a_browser_without_a_session_is_sent_to_airflows_login_and_back() -> None:
    from plugins.mlcycle_plugin import login_url, needs_login

    assert (
        login_url("", "/mlcycle/page?pipeline=churn") == "/api/v2/auth/login?next=%2Fmlcycle%2Fpage%3Fpipeline%3Dchurn"
    )
    assert login_url("/airflow/", "/mlcycle/page").startswith("/airflow/api/v2/auth/login?next=")  # under a base path
    assert needs_login(401, "Not authenticated") and needs_login(401, "Token Expired")
    assert needs_login(403, "Invalid JWT token")  # a cookie this server cannot read: log in again
    assert not needs_login(403, "Forbidden") and not needs_login(404, "Not Found")


def test_the_plugins_errors_share_one_shape_and_name_no_server_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handlers on a real FastAPI app: an error whose text names the specs directory (what
    `spec_for` answers for an unknown pipeline) reaches the client without it."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pipelines.core.errors import SpecError
    from pipelines.core.settings import load_settings, spec_for
    from plugins.mlcycle_plugin import api_error, install_error_handlers, unknown_pipeline

    specs = tmp_path / "srv" / "pipelines"
    specs.mkdir(parents=True)
    (specs / "churn.yaml").write_text("{}")
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(specs))
    monkeypatch.setenv("MLCYCLE_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(SpecError) as raised:
        spec_for(load_settings(), "nope")
    assert str(specs) in str(raised.value)  # what the API used to answer

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/spec/{name}")
    def spec(name: str) -> dict[str, str]:
        try:
            spec_for(load_settings(), name)
        except SpecError as err:
            raise api_error(404, str(err), "pipeline") from None
        return {}

    @app.get("/page")
    def page(limit: int) -> dict[str, int]:
        return {"limit": limit}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"cannot open {tmp_path / 'state' / 'secret'}")

    client = TestClient(app, raise_server_exceptions=False)
    missing = client.get("/spec/nope")
    assert missing.status_code == 404
    body = missing.json()
    assert set(body) == {"error", "reason", "field"} and body["error"] == "not_found" and body["field"] == "pipeline"
    assert str(tmp_path) not in missing.text and "nope" in body["reason"] and "<pipelines dir>" in body["reason"]
    invalid = client.get("/page", params={"limit": "x"})
    assert invalid.status_code == 422 and invalid.json()["field"] == "query.limit"
    assert invalid.json()["reason"].startswith("query.limit:")
    failed = client.get("/boom")
    assert failed.status_code == 500 and failed.json() == {
        "error": "internal_error",
        "reason": "internal error: the api-server's log has the details",
        "field": None,
    }
    assert client.get("/nowhere").json() == {"error": "not_found", "reason": "Not Found", "field": None}
    assert unknown_pipeline("nope", ["churn"]) == "no pipeline 'nope' that you may read (known: ['churn'])"


def test_the_page_without_a_session_redirects_to_the_login_and_the_api_answers_401() -> None:
    """The plugin's own apps, mounted as Airflow mounts them: no cookie, no token."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from plugins.mlcycle_plugin import _api, _app

    server = FastAPI()
    server.mount("/mlcycle", _app())
    server.mount("/api/ml", _api())
    client = TestClient(server)
    page = client.get("/mlcycle/page", params={"pipeline": "churn"}, follow_redirects=False)
    assert page.status_code == 307
    assert page.headers["location"] == "/api/v2/auth/login?next=%2Fmlcycle%2Fpage%3Fpipeline%3Dchurn"
    api = client.get("/api/ml/pipelines")
    assert api.status_code == 401 and api.json() == {
        "error": "unauthorized",
        "reason": "Not authenticated",
        "field": None,
    }


def test_a_report_is_only_of_a_dag_the_factory_makes_for_a_known_pipeline_with_that_step() -> None:
    from plugins.mlcycle_plugin import report_pipeline

    known = ["churn", "churn_v2", "tumours"]
    assert report_pipeline("churn_lifecycle", "validate", known) == "churn"
    assert report_pipeline("churn_v2_lifecycle", "evaluate", known) == "churn_v2"
    assert report_pipeline("churn_drift", "drift", known) == "churn"
    assert report_pipeline("churn_drift", "validate", known) is None  # the drift DAG runs no validate
    assert report_pipeline("churn_lifecycle", "drift", known) is None  # nor the lifecycle a drift check
    assert report_pipeline("nope_lifecycle", "validate", known) is None  # no such pipeline
    assert report_pipeline("churn_v2_x_lifecycle", "validate", known) is None
    assert report_pipeline("tumours_anything", "validate", known) is None  # what `<name>_*` used to allow
    assert report_pipeline("_lifecycle", "validate", known) is None


def test_every_report_file_is_its_own_sandboxed_origin_and_never_sniffed() -> None:
    from plugins.mlcycle_plugin import PAGE_CSP, REPORT_HEADERS

    assert REPORT_HEADERS == {"Content-Security-Policy": "sandbox allow-scripts", "X-Content-Type-Options": "nosniff"}
    assert "allow-same-origin" not in REPORT_HEADERS["Content-Security-Policy"]
    assert "default-src 'none'" in PAGE_CSP and "script-src" not in PAGE_CSP  # the page itself runs no script
