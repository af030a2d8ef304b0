"""`mlcycle demo`: the churn lifecycle through Airflow on the embedded profile.

Airflow's home (SQLite metadata) lives in the state directory; the DAG runs with `airflow dags
test`, each task through `PipelineStepOperator` on the local runtime, so every step is the same
`mlcycle step ...` command a pod would run. At the end it prints where the outputs are.

The bundled world drifts in its recent months: the demo trains the champion as of the month before
(`demo_as_of`), and `mlcycle drift-demo` closes the loop up to today.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.settings import load_settings
from pipelines.core.spec import FileSource, Source, SyntheticSource, spec_for
from pipelines.core.system import executable
from pipelines.io.registry import champion_version, load_onnx_model, model_name
from pipelines.io.runs import latest_run_id, render_run, run_steps
from pipelines.io.sources import synthetic_config
from pipelines.io.status import pipeline_status, render_status
from pipelines.io.tracking import mlflow_uri
from pipelines.local.local_airflow import LocalAirflow, airflow_env
from pipelines.local.traffic import SteadyTraffic, known_entities, predict_rows
from pipelines.ml.datagen import auto_start, generate_churn
from serving import embedded
from serving.deploy import endpoint, serve_champion_if_idle

if TYPE_CHECKING:
    import pandas as pd


def _airflow(args: list[str], env: dict[str, str], quiet: bool = False) -> None:
    exe = executable("airflow")
    out = subprocess.DEVNULL if quiet else None
    subprocess.run([exe, *args], env=env, check=True, stdout=out)


def demo_as_of(source: Source, today: date) -> datetime | None:
    """For a synthetic world of the calendar (`start: auto`) that drifts from a month on: the
    first instant of that month, so the champion knows the world before it changed. Pure."""
    if not isinstance(source, SyntheticSource) or source.start != "auto" or source.drift_from_month is None:
        return None
    first = date.fromisoformat(auto_start(source.months, today))
    month = first.year * 12 + first.month - 1 + source.drift_from_month
    return datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC)


def run_demo(pipeline: str = "churn") -> int:
    settings = load_settings()
    env = airflow_env(settings)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"==> Airflow metadata in {env['AIRFLOW_HOME']}", flush=True)
    _airflow(["db", "migrate"], env, quiet=True)

    print(f"==> Ray Serve on http://{settings.serve_host}:{settings.serve_port} (a local Ray head)", flush=True)
    key = embedded.start(settings)
    as_of = demo_as_of(spec_for(settings, pipeline).source, datetime.now(UTC).date())
    conf = ["-c", json.dumps({"as_of": as_of.isoformat()})] if as_of else []
    print(f"==> running {pipeline}_lifecycle through Airflow (runtime local)", flush=True)
    if as_of:
        print(f"    data as of {as_of:%Y-%m-%d}, before the bundled world drifts (`make drift-demo`: up to today)")
    try:
        _airflow(["dags", "test", f"{pipeline}_lifecycle", *conf], env)
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


def drifted_world(source: SyntheticSource, seed_offset: int, today: date) -> pd.DataFrame:
    """Other customers of the spec's own synthetic world (another seed): its last two snapshots,
    which the drift has reached."""
    world = generate_churn(synthetic_config(source, today, seed_offset))
    stamps = sorted(world["event_timestamp"].unique())[-2:]
    return world[world["event_timestamp"].isin(stamps)]


def run_drift_demo(pipeline: str = "churn", port: int = 8080) -> int:
    """After `mlcycle demo`: the world drifts, its customers are served and their outcomes arrive;
    the drift DAG finds it and its Asset event starts the retraining run, which reads the data up to
    today plus the labelled traffic, beats the champion and walks the canary under live traffic, all
    through a real Airflow (api-server, scheduler, dag-processor) on 127.0.0.1:`port`. Prints the
    time of each stage and the old and new champion's metric on the same labelled customers."""
    import logging

    from pipelines.io.labels import load_labels
    from pipelines.ml.metrics import metric_functions
    from pipelines.ml.model import onnx_session, predict_onnx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    settings = load_settings()
    spec = spec_for(settings, pipeline)
    if not isinstance(spec.source, SyntheticSource):
        print(f"mlcycle drift-demo: {pipeline} reads a {spec.source.kind} source; the demo needs the synthetic world")
        return 2
    today = datetime.now(UTC).date()
    key = embedded.start(settings)
    url = endpoint(settings, pipeline)
    before = champion_version(settings, pipeline)
    features = spec.model.numeric_features + spec.model.categorical_features
    join, ts = spec.entity.join_key, spec.entity.timestamp
    stages: dict[str, float] = {}
    print(f"==> Airflow (api-server, scheduler, dag-processor) on http://127.0.0.1:{port}", flush=True)
    with LocalAirflow(settings, port=port) as airflow:
        print(
            f"    UI login: admin / the password in {airflow.env['AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE']}"
        )
        airflow.wait_for_dag(f"{pipeline}_drift")
        airflow.wait_for_dag(f"{pipeline}_lifecycle")
        recent = drifted_world(spec.source, 1, today)
        served = recent.sample(min(len(recent), 3 * spec.drift.min_requests), random_state=0)
        started = time.monotonic()
        predict_rows(url, key, served, join, features)
        stages["serve the drifted traffic"] = time.monotonic() - started
        print(f"==> served {len(served)} customers of the drifted world (v{before}) at {url}", flush=True)
        mark = time.monotonic()
        labels = settings.state_path / "drift-demo-labels.csv"
        served[[join, spec.label.column]].to_csv(labels, index=False)
        loaded = load_labels(settings, spec, FileSource(kind="file", path=str(labels)))
        stages["their labels arrive"] = time.monotonic() - mark
        print(f"==> {loaded} of their outcomes arrived (`mlcycle labels load`)", flush=True)
        time.sleep(2)  # the request log is written off the request path
        mark = time.monotonic()
        check = airflow.trigger(f"{pipeline}_drift")
        print(f"==> {pipeline}_drift {check}: {airflow.wait_run(f'{pipeline}_drift', check)['state']}", flush=True)
        stages["drift check"] = time.monotonic() - mark
        events = airflow.asset_events(f"{pipeline}_retraining")
        if not events:
            print(f"    no retraining asked: {airflow.task_states(f'{pipeline}_drift', check)}")
            return 1
        for reason in events[-1]["extra"]["reasons"]:
            print(f"    asset event reason: {reason}")
        print(f"    Evidently report: {events[-1]['extra'].get('report')}")
        entities = known_since(spec.source, demo_as_of(spec.source, today), today, join, ts)
        with SteadyTraffic(url, key, entities, max_s=1800) as steady:
            print("==> waiting for the retraining run the event starts (live traffic runs for its canary)", flush=True)
            mark = time.monotonic()
            deadline = mark + 300
            while not (
                runs := [r for r in airflow.runs(f"{pipeline}_lifecycle") if r["run_type"] == "asset_triggered"]
            ):
                if time.monotonic() > deadline:
                    print("    the scheduler started no run", file=sys.stderr)
                    return 1
                time.sleep(3)
            stages["the scheduler starts the run"] = time.monotonic() - mark
            run_id = runs[-1]["dag_run_id"]
            state = airflow.wait_run(f"{pipeline}_lifecycle", run_id, timeout=3600)["state"]
        for task, seconds in airflow.task_durations(f"{pipeline}_lifecycle", run_id).items():
            stages[f"lifecycle: {task}"] = seconds
        stages["first drifted request to the new champion (wall)"] = time.monotonic() - started
        print(f"==> {pipeline}_lifecycle {run_id}: {state}; {steady.sent} live predictions, {steady.failed} failed")
        print(f"    tasks: {airflow.task_states(f'{pipeline}_lifecycle', run_id)}")
    print("==> where the time went:")
    for stage, seconds in stages.items():
        print(f"    {stage:<52} {seconds:7.1f} s")
    after = champion_version(settings, pipeline)
    record: dict[str, Any] = {"state": state, "before": before, "after": after, "stages_s": stages}
    if after != before:
        holdout = drifted_world(spec.source, 2, today)  # customers neither model has seen
        y = holdout[spec.label.column].to_numpy()
        metric = metric_functions(spec.evaluation.threshold)[spec.evaluation.primary_metric]
        name, metric_name = model_name(pipeline), spec.evaluation.primary_metric
        for label, version in (("old champion", before), ("new champion", after)):
            session = onnx_session(load_onnx_model(settings, pipeline, name, version))
            value = metric(y, predict_onnx(session, holdout))
            record[label.replace(" ", "_")] = {"version": version, metric_name: value, "customers": len(holdout)}
            print(f"    {label} v{version}: {metric_name} {value:.4f} on {len(holdout)} labelled customers of today")
    # what bench/drift.py --loop reports
    (settings.state_path / "drift-demo.json").write_text(json.dumps(record, indent=2))
    print(render_status(pipeline_status(settings, pipeline)))
    print(f"\n==> drift demo done in {time.monotonic() - started:.0f}s")
    return 0 if state == "success" and after != before else 1


def known_since(source: SyntheticSource, as_of: datetime | None, today: date, join: str, ts: str) -> list[Any]:
    """Customers of the spec's synthetic world the online store knows since `as_of` (any time,
    without) and still active at its last snapshot: every champion from then on answers for them."""
    world = generate_churn(synthetic_config(source, today))
    return known_entities(world, join, ts, as_of or world[ts].max())
