"""Reports are safe to open, through a real Airflow (api-server with the mlcycle plugin, scheduler,
dag-processor) and Debian's headless Chromium.

A report in the artifact store that holds `</script><script>` (what Evidently wrote for a served
category carrying markup: it embeds its data in a `<script>` unescaped) is opened framed in the
report page and on its own: its script runs in an opaque origin of its own (`Content-Security-
Policy: sandbox allow-scripts`, the frame `sandbox`ed), so nothing reaches Airflow's origin: no
marker on the page, no title changed, nothing in its storage, no run triggered with the user's
session. The drift step's own Evidently report still draws its charts in that sandbox. The plugin
serves a report only of a DAG the factory makes, for a run of that DAG; a run's `source_uri`
outside the pipeline's prefixes is refused by Airflow's Trigger (the DAG's params) and by the
platform API.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines.core.settings import Settings
from pipelines.io.storage import open_storage
from pipelines.local.local_airflow import LocalAirflow
from tests.integration.helpers import small_spec
from tests.services import free_port_pairs
from tests.specs import churn_spec_dict

pytestmark = pytest.mark.e2e

PAYLOAD = (
    "</script><script>"
    "window.__ran=1;"
    "try{window.top.__pwned=1}catch(e){};"
    "try{window.top.document.title='pwned'}catch(e){};"
    "try{localStorage.setItem('pwned','1')}catch(e){};"
    "fetch('/api/ml/pipelines/churn/runs',{method:'POST',credentials:'include',"
    "headers:{'content-type':'application/json'},body:JSON.stringify({conf:{dry_run:true}})}).catch(function(){});"
    "</script><script>"
)


@pytest.fixture(scope="module")
def airflow(platform: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirflow]:
    """A real Airflow on the session database, with the churn pipeline's two DAGs paused (a run
    triggered stays queued: nothing runs, its run id exists)."""
    root = tmp_path_factory.mktemp("reports")
    settings = platform.model_copy(update={"pipelines_dir": root / "pipelines", "artifact_root": str(root / "art")})
    settings.pipelines_dir.mkdir()  # type: ignore[union-attr]
    drift = {**churn_spec_dict()["drift"], "schedule": None}
    small_spec(settings, {"kind": "synthetic", "customers": 50, "months": 3}, schedule=None, drift=drift)
    env = {"MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir), "MLCYCLE_ARTIFACT_ROOT": str(settings.artifact_root)}
    af = LocalAirflow(settings, port=free_port_pairs(1)[0], extra_env=env)
    with af:
        for dag_id in ("churn_lifecycle", "churn_drift"):
            af.wait_for_dag(dag_id)
            af.api("PATCH", f"/dags/{dag_id}", json={"is_paused": True})
        yield af


def evidently_html(current_plan: list[Any]) -> bytes:
    """The drift step's Evidently report of a served window whose `plan` holds `current_plan`."""
    from pipelines.steps.drift import evidently_report, unseen_as_one

    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"plan": rng.choice(["basic", "pro"], 300), "score": rng.random(300)})
    current = pd.DataFrame({"plan": (current_plan * 200)[:200], "score": rng.random(200)})
    html, _ = evidently_report(reference, unseen_as_one(reference, current, ["plan"]), [], ["plan"], 0.5)
    return html


def planted_html() -> bytes:
    """What the drift step wrote before it showed unseen values as `(unseen)`: Evidently's report
    with the served value in its data, unescaped."""
    from pipelines.steps.drift import evidently_report

    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"plan": rng.choice(["basic", "pro"], 300), "score": rng.random(300)})
    current = pd.DataFrame({"plan": ["basic", PAYLOAD] * 100, "score": rng.random(200)})
    html, _ = evidently_report(reference, current, [], ["plan"], 0.5)
    assert PAYLOAD.encode() in html
    return html


@pytest.fixture(scope="module")
def runs(airflow: LocalAirflow) -> dict[str, str]:
    """A queued run of each DAG, with reports in the artifact store: the validate report of the
    lifecycle run holds the payload; the drift check's is the drift step's own."""
    lifecycle, drift = airflow.trigger("churn_lifecycle"), airflow.trigger("churn_drift")
    storage = open_storage(airflow.settings)
    storage.write_bytes(f"churn/{lifecycle}/validate/report.html", planted_html())
    storage.write_bytes(f"churn/{lifecycle}/drift/report.html", b"<p>a drift report under a lifecycle run</p>")
    storage.write_bytes(f"churn/{drift}/drift/report.html", evidently_html(["basic", "pro", "enterprise<b>"]))
    return {"lifecycle": lifecycle, "drift": drift}


def lifecycle_runs(airflow: LocalAirflow) -> int:
    return len(airflow.runs("churn_lifecycle"))


def test_reports_are_served_sandboxed_and_only_for_a_run_of_the_dag_that_makes_them(
    airflow: LocalAirflow, runs: dict[str, str]
) -> None:
    admin = airflow.auth_headers()
    base = f"{airflow.url}/mlcycle"
    file = httpx.get(
        f"{base}/artifacts/churn_lifecycle/{quote(runs['lifecycle'], safe='')}/validate/report.html",
        headers=admin,
        timeout=60,
    )
    assert file.status_code == 200 and file.headers["content-type"] == "text/html; charset=utf-8"
    assert file.headers["content-security-policy"] == "sandbox allow-scripts"
    assert file.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(f"{base}/reports/churn_lifecycle/{quote(runs['lifecycle'], safe='')}/validate", headers=admin)
    assert page.status_code == 200 and 'sandbox="allow-scripts"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]

    def refused(dag_id: str, run_id: str, step: str) -> dict[str, Any]:
        answer = httpx.get(f"{base}/artifacts/{dag_id}/{quote(run_id, safe='')}/{step}/report.html", headers=admin)
        assert answer.status_code == 404, answer.text
        return dict(answer.json())

    # the file is there, but the run is the lifecycle's: the drift DAG does not show it
    assert refused("churn_drift", runs["lifecycle"], "drift")["field"] == "run_id"
    assert refused("churn_lifecycle", runs["drift"], "validate")["field"] == "run_id"  # nor the other way
    assert refused("churn_drift", runs["lifecycle"], "validate")["field"] == "dag_id"  # no validate there
    assert refused("churn_anything", runs["lifecycle"], "validate")["field"] == "dag_id"  # no such DAG
    assert refused("nope_lifecycle", runs["lifecycle"], "validate")["field"] == "dag_id"


def test_a_run_outside_the_pipelines_source_prefixes_is_refused_by_the_trigger_and_the_api(
    airflow: LocalAirflow, runs: dict[str, str]
) -> None:
    before = lifecycle_runs(airflow)
    admin = airflow.auth_headers()
    other = f"{airflow.settings.artifact_uri}/tumours/r1/features/train.parquet"
    for uri in ("/etc/passwd.csv", other, "s3://lake/tumours/in.parquet"):
        api = httpx.post(
            f"{airflow.url}/api/ml/pipelines/churn/runs", json={"conf": {"source_uri": uri}}, headers=admin
        )
        assert api.status_code == 422 and api.json()["field"] == "conf.source_uri", api.text
        assert api.json()["reason"].startswith(f"source_uri: {uri} is ")
        trigger = httpx.post(  # what the Trigger form sends: Airflow validates the DAG's params
            f"{airflow.url}/api/v2/dags/churn_lifecycle/dagRuns",
            json={"logical_date": None, "conf": {"source_uri": uri}},
            headers=admin,
            timeout=60,
        )
        assert trigger.status_code == 400 and "source_uri" in trigger.text, trigger.text
    data = airflow.settings.state_path / "data" / "in.csv"
    taken = httpx.post(
        f"{airflow.url}/api/ml/pipelines/churn/runs", json={"conf": {"source_uri": str(data)}}, headers=admin
    )
    assert taken.status_code == 201, taken.text
    assert lifecycle_runs(airflow) == before + 1


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through its WebDriver (`make tools` installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "no chromium/chromedriver: `make tools` installs Debian's (tools/browser.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    session = webdriver.Chrome(options=options, service=Service(driver))
    session.implicitly_wait(20)
    try:
        yield session
    finally:
        session.quit()


def login(browser: Any, airflow: LocalAirflow, next_path: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{airflow.url}/api/v2/auth/login?next={quote(next_path, safe='')}")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(airflow.password())
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: next_path in browser.current_url, f"the login did not lead to {next_path}")


def nothing_reached_airflows_origin(browser: Any, airflow: LocalAirflow, runs_before: int) -> None:
    """The page of Airflow's origin has no marker, its title and storage are untouched, and the
    payload's credentialed POST made no run (given time to arrive)."""
    import time

    time.sleep(5)  # the payload's fetch, had it gone through, is answered by now
    assert browser.execute_script("return window.__pwned === undefined") is True
    assert browser.title != "pwned"
    assert browser.execute_script("return window.localStorage.getItem('pwned')") is None
    assert lifecycle_runs(airflow) == runs_before


def test_a_report_holding_script_runs_none_on_airflows_origin_and_evidently_still_draws(
    airflow: LocalAirflow, runs: dict[str, str], browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    lifecycle = quote(runs["lifecycle"], safe="")
    report = f"/mlcycle/reports/churn_lifecycle/{lifecycle}/validate"
    before = lifecycle_runs(airflow)
    login(browser, airflow, report)
    frame = browser.find_element(By.CSS_SELECTOR, "iframe")
    title = browser.title
    nothing_reached_airflows_origin(browser, airflow, before)
    assert browser.title == title
    browser.switch_to.frame(frame)  # the payload did run, in the frame's own opaque origin
    assert browser.execute_script("return [window.__ran, window.origin]") == [1, "null"]
    browser.switch_to.default_content()
    assert frame.get_attribute("sandbox") == "allow-scripts"

    # the file opened on its own, as a link to it would: its own origin still
    browser.get(f"{airflow.url}/mlcycle/artifacts/churn_lifecycle/{lifecycle}/validate/report.html")
    assert browser.execute_script("return [window.__ran, window.origin]") == [1, "null"]
    browser.get(f"{airflow.url}{report}")  # back on Airflow's origin
    assert browser.execute_script("return window.origin") == airflow.url
    nothing_reached_airflows_origin(browser, airflow, before)

    # the drift step's own Evidently report draws its charts inside the sandbox
    browser.get(f"{airflow.url}/mlcycle/reports/churn_drift/{quote(runs['drift'], safe='')}/drift")
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe"))
    wait_for(
        lambda: "plan" in browser.find_element(By.CSS_SELECTOR, "[id^=root_]").text,
        "Evidently's report drew nothing in the sandboxed frame",
        timeout=60,
    )
    assert browser.execute_script("return document.querySelectorAll('svg').length") > 0
    assert "(unseen)" in browser.page_source and "enterprise<b>" not in browser.page_source


def wait_for(condition: Any, message: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):  # the element is not there yet
            if condition():
                return
        assert time.monotonic() < deadline, message
        time.sleep(0.5)
