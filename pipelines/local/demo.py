"""`mlcycle demo`: the churn lifecycle on the embedded platform (`mlcycle up`).

The platform's services start (or are reused), then one `churn_lifecycle` run is triggered through
Airflow's REST API v2 and followed task by task (`mlcycle run churn --wait` does the same); each
task runs through `PipelineStepOperator` on the local runtime, so every step is the same `mlcycle
step ...` command a pod would run. The platform stays up: the Airflow UI, the MLflow UI and the
endpoint are there to open. Where the pipeline declares `batch:`, its `<name>_batch` run is then
triggered too (beside the endpoint's start) and the demo says where its predictions landed.

The bundled world drifts in its recent months: the demo trains the champion as of the month before
(`demo_as_of`), and `mlcycle drift-demo` closes the loop up to today.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.settings import Settings, load_settings, spec_for
from pipelines.core.spec import FileSource, Source, SyntheticSource
from pipelines.io import vectors
from pipelines.io.registry import champion_version, load_onnx_model, model_name
from pipelines.io.sources import synthetic_config
from pipelines.io.status import pipeline_status, render_status
from pipelines.local.follow import batch_summary, run_pipeline, summary, without_champion
from pipelines.local.local_airflow import AirflowClient
from pipelines.local.platform import Platform, open_these
from pipelines.local.traffic import SteadyTraffic, known_entities, predict_rows
from pipelines.ml.datagen import auto_start, generate_churn
from serving import embedded
from serving.deploy import endpoint

if TYPE_CHECKING:
    import pandas as pd


def demo_as_of(source: Source, today: date) -> datetime | None:
    """For a synthetic world of the calendar (`start: auto`) that drifts from a month on: the
    first instant of that month, so the champion knows the world before it changed. Pure."""
    if not isinstance(source, SyntheticSource) or source.start != "auto" or source.drift_from_month is None:
        return None
    first = date.fromisoformat(auto_start(source.months, today))
    month = first.year * 12 + first.month - 1 + source.drift_from_month
    return datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC)


def run_demo(pipeline: str = "churn") -> int:
    """The platform up (or reused), then one lifecycle run of `pipeline` through Airflow's REST
    API, followed task by task; the platform stays up with its UIs and the endpoint."""
    settings = load_settings()
    started = time.monotonic()
    plat = Platform(settings)
    plat.up()
    spec = spec_for(settings, pipeline)
    today = datetime.now(UTC).date()
    as_of = demo_as_of(spec.source, today)
    conf = {"as_of": as_of.isoformat()} if as_of else {}
    if as_of:
        print(f"==> data as of {as_of:%Y-%m-%d}, before the bundled world drifts (`make drift-demo`: up to today)")
    traffic: Any = contextlib.nullcontext()
    if serving_now(settings, pipeline):  # a champion serves: the challenger's canary is judged on live traffic
        entities: Any = 400
        if isinstance(spec.source, SyntheticSource):
            entities = known_since(spec.source, as_of, today, spec.entity.join_key, spec.entity.timestamp)
        traffic = SteadyTraffic(endpoint(settings, pipeline), embedded.api_key(settings), entities, max_s=1800)
        print("==> a champion is served: live traffic runs beside the run, for its canary")
    client = plat.client()
    with traffic:
        run_id, state = run_pipeline(client, settings, pipeline, conf, wait=True)
    print(f"\n==> {pipeline}_lifecycle {run_id}: {state} ({time.monotonic() - started:.0f}s with the platform's start)")
    print(summary(settings, pipeline, run_id))
    print()
    print(render_status(pipeline_status(settings, pipeline)))
    waiting = without_champion(settings, pipeline, run_id, state)
    promoted = state == "success" and waiting is None and spec.batch is not None
    batch = start_batch(client, settings, pipeline, conf) if promoted else None  # goes on while Serve starts
    if state == "success":
        wait_serving(settings, pipeline)
        if spec_for(settings, pipeline).embeddings is not None:
            print(similar_example(settings, pipeline))
    ended = finish_batch(client, settings, pipeline, batch) if batch else None
    print()
    print(open_these(plat, pipeline, waiting))
    return 0 if state == "success" and ended in (None, "success") else 1


def start_batch(client: AirflowClient, settings: Settings, pipeline: str, conf: dict[str, Any]) -> str:
    """Trigger the champion's `<pipeline>_batch` run, as of the lifecycle's own instant (the
    offline store holds the entities of then); returns its run id."""
    print()
    run_id, _ = run_pipeline(client, settings, pipeline, conf, wait=False, dag=f"{pipeline}_batch")
    return run_id


def finish_batch(client: AirflowClient, settings: Settings, pipeline: str, run_id: str) -> str:
    """Wait for the batch run; print what it scored and where its predictions landed. Its state."""
    state = str(client.wait_run(f"{pipeline}_batch", run_id)["state"])
    print(f"\n==> {pipeline}_batch {run_id}: {state}")
    print(batch_summary(settings, pipeline, run_id, state))
    return state


def serving_now(settings: Settings, pipeline: str) -> bool:
    """Whether the pipeline's endpoint answers now (a champion is served)."""
    import httpx

    try:
        return httpx.get(f"{endpoint(settings, pipeline)}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_serving(settings: Settings, pipeline: str, timeout: float = 120) -> None:
    """Until the endpoint serves the champion (serve-sync deploys it where the run's canary did
    not, every 10 s)."""
    import httpx

    url = f"{endpoint(settings, pipeline)}/readyz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    print(f"    {url} does not answer yet; see `mlcycle ps` and {settings.state_path / 'platform' / 'logs'}")


def similar_example(settings: Settings, pipeline: str, k: int = 5) -> str:
    """A similarity query on the endpoint for an entity of the champion's vector space, and its answer."""
    import httpx

    entity = vectors.champion_entity(settings, pipeline, model_name(pipeline))
    if entity is None:
        return "    the champion has no vector space yet (see the run's `embed` task)"
    url = f"{endpoint(settings, pipeline)}/similar"
    answer = httpx.get(
        url, params={"entity_id": entity, "k": k}, headers={"x-api-key": embedded.api_key(settings)}, timeout=30
    )
    if answer.status_code != 200:
        return f"    GET {url}?entity_id={entity}&k={k} answered {answer.status_code}: {answer.text[:300]}"
    body = answer.json()
    near = ", ".join(f"{n['entity_id']} ({n['distance']:.3f})" for n in body["neighbours"])
    return (
        f"\n==> GET {url}?entity_id={entity}&k={k}: v{body['version']}'s space ({body['distance']}) answers\n"
        f"    the {k} customers nearest {entity}: {near}"
    )


def drifted_world(source: SyntheticSource, seed_offset: int, today: date) -> pd.DataFrame:
    """Other customers of the spec's own synthetic world (another seed): its last two snapshots,
    which the drift has reached."""
    world = generate_churn(synthetic_config(source, today, seed_offset))
    stamps = sorted(world["event_timestamp"].unique())[-2:]
    return world[world["event_timestamp"].isin(stamps)]


def run_drift_demo(pipeline: str = "churn") -> int:
    """After `mlcycle demo`: the world drifts, its customers are served and their outcomes arrive;
    the drift DAG finds it and its Asset event starts the retraining run, which reads the data up to
    today plus the labelled traffic, beats the champion and walks the canary under live traffic, all
    through the platform's Airflow (api-server, scheduler, dag-processor, triggerer). Prints the
    time of each stage and the old and new champion's metric on the same labelled customers."""
    import logging

    from pipelines.io.labels import load_labels
    from pipelines.ml.imbalance import session_threshold
    from pipelines.ml.metrics import live_metric
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
    plat = Platform(settings)
    plat.up()
    print(f"==> on the platform's Airflow at {plat.airflow_url} (admin, password in {plat.passwords_file()})")
    with contextlib.nullcontext(plat.client()) as airflow:
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
        name, metric_name = model_name(pipeline), spec.evaluation.primary_metric
        for label, version in (("old champion", before), ("new champion", after)):
            session = onnx_session(load_onnx_model(settings, pipeline, name, version))
            threshold = session_threshold(session)
            value = live_metric(spec.evaluation, spec.label.kind, threshold)(y, predict_onnx(session, holdout))
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
