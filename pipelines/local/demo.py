"""`mlcycle demo`: the churn lifecycle through Airflow on the embedded profile.

Airflow's home (SQLite metadata) lives in the state directory; the DAG runs with `airflow dags
test`, each task through `PipelineStepOperator` on the local runtime, so every step is the same
`mlcycle step ...` command a pod would run. At the end it prints where the outputs are.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pipelines.core.settings import load_settings
from pipelines.core.spec import spec_for
from pipelines.core.system import executable
from pipelines.io.runs import latest_run_id, render_run, run_steps
from pipelines.io.status import pipeline_status, render_status
from pipelines.io.tracking import mlflow_uri
from pipelines.local.local_airflow import LocalAirflow, airflow_env
from pipelines.local.traffic import SteadyTraffic, predict_rows
from pipelines.ml.datagen import ChurnConfig, generate_churn
from serving import embedded
from serving.deploy import endpoint, serve_champion_if_idle


def _airflow(args: list[str], env: dict[str, str], quiet: bool = False) -> None:
    exe = executable("airflow")
    out = subprocess.DEVNULL if quiet else None
    subprocess.run([exe, *args], env=env, check=True, stdout=out)


def run_demo(pipeline: str = "churn") -> int:
    settings = load_settings()
    env = airflow_env(settings)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"==> Airflow metadata in {env['AIRFLOW_HOME']}", flush=True)
    _airflow(["db", "migrate"], env, quiet=True)

    print(f"==> Ray Serve on http://{settings.serve_host}:{settings.serve_port} (a local Ray head)", flush=True)
    key = embedded.start(settings)
    print(f"==> running {pipeline}_lifecycle through Airflow (runtime local)", flush=True)
    try:
        _airflow(["dags", "test", f"{pipeline}_lifecycle"], env)
    except subprocess.CalledProcessError:
        print("mlcycle demo: the DAG run failed; see the task output above", file=sys.stderr)
        return 1

    if serve_champion_if_idle(settings, pipeline):  # the run's canary was skipped on a fresh head
        print(f"==> deployed {pipeline}'s champion from the registry on Ray Serve", flush=True)
    print(f"\n==> done in {time.monotonic() - started:.0f}s. Outputs of the run:")
    run_id = latest_run_id(settings, pipeline)
    print(render_run(pipeline, run_id, run_steps(settings, pipeline, run_id) if run_id else []))
    print()
    print(render_status(pipeline_status(settings, pipeline)))
    mlflow = executable("mlflow")
    print(
        f"\n==> the MLflow UI on the demo's database (runs, trials, the registry and its aliases):\n"
        f"    {mlflow} ui --host 127.0.0.1 --port 5000 --backend-store-uri '{mlflow_uri(settings)}'"
    )

    url = endpoint(settings, pipeline)
    body = '{"instances": [{"entity_id": 42}]}'
    print(f"\n==> the champion on Ray Serve (the key is in {settings.state_path / 'serving-api-key'}):")
    print(f"    curl -s -H 'x-api-key: {key}' -H 'content-type: application/json' -d '{body}' {url}/predict")
    print(f"    curl -s {url}/      # versions, weights, canary state")
    print("    `make stop` stops Ray and the database")
    return 0


def run_drift_demo(pipeline: str = "churn", port: int = 8080) -> int:
    """After `mlcycle demo`: drifted traffic to the served champion, the drift DAG, and the
    retraining run its Asset event starts, all through a real Airflow (api-server, scheduler,
    dag-processor) on 127.0.0.1:`port`."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    settings = load_settings()
    spec = spec_for(settings, pipeline)
    started = time.monotonic()
    key = embedded.start(settings)
    url = endpoint(settings, pipeline)
    print(f"==> Airflow (api-server, scheduler, dag-processor) on http://127.0.0.1:{port}", flush=True)
    with LocalAirflow(settings, port=port) as airflow:
        print(
            f"    UI login: admin / the password in {airflow.env['AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE']}"
        )
        airflow.wait_for_dag(f"{pipeline}_drift")
        airflow.wait_for_dag(f"{pipeline}_lifecycle")
        cfg = spec.source.model_dump() if spec.source.kind == "synthetic" else {"customers": 3000, "months": 12}
        history = generate_churn(
            ChurnConfig(
                customers=cfg["customers"], months=cfg["months"], seed=cfg.get("seed", 7) + 1, covariate_drift=1.0
            )
        )
        recent = history[history["event_timestamp"] == history["event_timestamp"].max()]
        rows = recent.sample(min(len(recent), 2 * spec.drift.min_requests), random_state=0)
        features = spec.model.numeric_features + spec.model.categorical_features
        sent = predict_rows(url, key, rows, spec.entity.join_key, features)
        print(f"==> sent {sent} predictions of drifted customers (covariate drift) to {url}", flush=True)
        time.sleep(2)  # the request log is written off the request path
        check = airflow.trigger(f"{pipeline}_drift")
        print(f"==> {pipeline}_drift {check}: {airflow.wait_run(f'{pipeline}_drift', check)['state']}", flush=True)
        print(f"    tasks: {airflow.task_states(f'{pipeline}_drift', check)}")
        events = airflow.asset_events(f"{pipeline}_retraining")
        if not events:
            print("    no retraining asked (see the drift task's log); nothing more to show")
            return 1
        for reason in events[-1]["extra"]["reasons"]:
            print(f"    asset event reason: {reason}")
        print(f"    Evidently report: {events[-1]['extra'].get('report')}")
        with SteadyTraffic(url, key, max_s=1800) as steady:
            print("==> waiting for the retraining run the event starts (live traffic runs for its canary)", flush=True)
            deadline = time.monotonic() + 300
            while not (
                runs := [r for r in airflow.runs(f"{pipeline}_lifecycle") if r["run_type"] == "asset_triggered"]
            ):
                if time.monotonic() > deadline:
                    print("    the scheduler started no run", file=sys.stderr)
                    return 1
                time.sleep(3)
            run_id = runs[-1]["dag_run_id"]
            state = airflow.wait_run(f"{pipeline}_lifecycle", run_id, timeout=3600)["state"]
        print(f"==> {pipeline}_lifecycle {run_id}: {state}; {steady.sent} live predictions, {steady.failed} failed")
        print(f"    tasks: {airflow.task_states(f'{pipeline}_lifecycle', run_id)}")
    print(render_status(pipeline_status(settings, pipeline)))
    print(f"\n==> drift demo done in {time.monotonic() - started:.0f}s")
    return 0 if state == "success" else 1
