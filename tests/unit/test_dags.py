"""DAG integrity: every spec gives a DAG that imports cleanly, cheaply and correctly wired."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.settings import PROJECT_DIR
from tests.conftest import write_spec

DAGS = PROJECT_DIR / "dags"
HEAVY = [
    "torch",
    "feast",
    "mlflow",
    "ray",
    "great_expectations",
    "pandera",
    "evidently",
    "optuna",
    "psycopg",
    "pandas",
    "pyarrow",
    "kubernetes",
    "boto3",
]


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert "churn_lifecycle" in dagbag.dags


def test_the_bundled_churn_batch_scores_daily_in_two_mapped_partitions(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["churn_batch"]
    assert [t.task_id for t in dag.topological_sort()] == ["pin", "score", "publish"]
    assert dag.get_task("score").expand_input.value == {"worker": [0, 1]}
    assert dag.timetable.expression == "0 0 * * *" and dag.max_active_runs == 1
    assert all(t.retries >= 1 for t in dag.tasks)


def test_every_task_of_the_pipelines_dags_tells_alertmanager_when_it_fails_for_good(dagbag) -> None:  # type: ignore[no-untyped-def]
    from operators.notifier import AlertNotifier

    for dag_id in ("churn_lifecycle", "churn_drift", "churn_batch", "mlcycle_retention"):
        for task in dagbag.dags[dag_id].tasks:
            notifiers = [c for c in task.on_failure_callback or [] if isinstance(c, AlertNotifier)]
            assert len(notifiers) == 1, (dag_id, task.task_id)
            assert notifiers[0].pipeline == ("churn" if dag_id.startswith("churn") else task.task_id.split("_", 1)[1])


def test_lifecycle_wiring(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["churn_lifecycle"]
    order = ["ingest", "validate", "features", "train", "evaluate", "promote", "embed", "canary"]
    assert [t.task_id for t in dag.topological_sort()] == order
    for before, after in itertools.pairwise(order):
        assert dag.get_task(after).upstream_task_ids == {before}
    assert {"mlcycle", "churn"} <= set(dag.tags)
    assert dag.doc_md and "churn_features_v1" in dag.doc_md
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert type(task).__name__ == "PipelineStepOperator"
        assert task.run_key == "{{ run_id }}"


def test_a_new_deployment_waits_for_the_next_scheduled_time(dagbag) -> None:  # type: ignore[no-untyped-def]
    """No start date in the past: the scheduler's first automated run is the next cron time, not
    the latest "missed" one (which would start a training run the moment the stack comes up)."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    now = pendulum.now("UTC")
    for dag_id in ("churn_lifecycle", "churn_drift", "churn_batch"):
        dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dagbag.dags[dag_id]))
        restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=False)
        first = dag.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
        assert first is not None and first.run_after > now, (dag_id, first)


def test_parsing_imports_nothing_heavy_and_touches_no_database(tmp_path: Path) -> None:
    code = (
        "import json, runpy, sys\n"
        f"g = runpy.run_path({str(DAGS / 'lifecycle.py')!r})\n"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules],"
        " 'dags': sorted(k for k in g if k.startswith('churn_'))}))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "AIRFLOW_HOME": str(tmp_path / "af"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLCYCLE_STATE_DIR": str(tmp_path / "state"),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"heavy": [], "dags": ["churn_batch", "churn_drift", "churn_lifecycle"]}
    assert not (tmp_path / "state").exists()  # no embedded database started at parse time


def test_one_dag_per_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from operators.factory import build_dags

    write_spec(tmp_path, "alpha", schedule="@daily")
    write_spec(tmp_path, "beta", schedule=None, retries=0, retry_delay_s=5, batch=None)
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(tmp_path))
    dags = build_dags()
    assert sorted(dags) == [
        "alpha_batch",  # the bundled spec's batch section; beta has none
        "alpha_drift",
        "alpha_lifecycle",
        "beta_drift",
        "beta_lifecycle",
        "mlcycle_retention",
    ]
    assert dags["beta_lifecycle"].get_task("ingest").retries == 0
    assert dags["beta_lifecycle"].get_task("ingest").retry_delay.total_seconds() == 5
    assert dags["alpha_batch"].get_task("pin").retry_delay.total_seconds() == 30  # the default
    # one retention DAG for the installation: each pipeline's retention step, hourly, one at a time
    retention = dags["mlcycle_retention"]
    assert retention.timetable.expression == "0 * * * *"
    assert [(t.task_id, t.pipeline, t.step) for t in retention.topological_sort()] == [
        ("retention_alpha", "alpha", "retention"),
        ("retention_beta", "beta", "retention"),
    ]


def test_a_bad_spec_costs_only_its_own_dags_and_is_an_import_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow's own DagBag over the dags folder: the valid spec's DAGs load; the invalid spec is an
    import error of dags/spec_errors.py naming its file, field and problem."""
    from airflow.dag_processing.dagbag import DagBag

    write_spec(tmp_path, "alpha")
    bad = write_spec(tmp_path, "beta", merge=True, training={"n_trials": 0})
    (tmp_path / "gamma.yaml").write_text("name: gamma\nsource: [unclosed\n")
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(DAGS))
    assert sorted(bag.dags) == ["alpha_batch", "alpha_drift", "alpha_lifecycle", "mlcycle_retention"]
    assert [Path(f).name for f in bag.import_errors] == ["spec_errors.py"]
    error = next(iter(bag.import_errors.values()))
    assert "2 invalid pipeline spec(s)" in error
    assert f"{bad}: training.n_trials: Input should be greater than or equal to 1" in error
    assert f"{tmp_path / 'gamma.yaml'}: not valid YAML" in error


def test_lifecycle_is_scheduled_on_the_retraining_asset_and_its_cron(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import AssetOrTimeSchedule

    from operators.trigger import retraining_asset

    lifecycle = dagbag.dags["churn_lifecycle"]
    assert isinstance(lifecycle.timetable, AssetOrTimeSchedule)  # @weekly or drift, whichever first
    assert lifecycle.timetable.asset_condition == retraining_asset("churn")
    drift = dagbag.dags["churn_drift"]
    assert [t.task_id for t in drift.topological_sort()] == ["drift", "trigger_retraining"]
    assert drift.get_task("trigger_retraining").outlets == [retraining_asset("churn")]
    assert drift.timetable.expression == "0 * * * *"  # the spec's @hourly


def test_a_spec_without_cron_is_scheduled_on_the_asset_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

    from operators.factory import build_dags

    write_spec(tmp_path, "gamma", schedule=None)
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(tmp_path))
    assert isinstance(build_dags()["gamma_lifecycle"].timetable, AssetTriggeredTimetable)


def test_parallel_trials_fan_out_into_mapped_worker_pods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """training.parallelism: 3 puts a `trials` task mapped over three workers between features and
    train; each worker's pod runs `--worker K` with the train step's resources (its GPU)."""
    from operators.factory import build_dags
    from pipelines.core.pod import container_of, pod_manifest
    from pipelines.core.settings import load_settings, spec_for

    write_spec(tmp_path, "delta", merge=True, schedule=None, training={"parallelism": 3})
    write_spec(tmp_path, "epsilon", schedule=None)
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(tmp_path))
    dags = build_dags()
    delta = dags["delta_lifecycle"]
    trials = delta.get_task("trials")
    assert trials.expand_input.value == {"worker": [0, 1, 2]}
    assert trials.upstream_task_ids == {"features"} and delta.get_task("train").upstream_task_ids == {"trials"}
    assert "trials" not in dags["epsilon_lifecycle"].task_ids  # one worker: train runs the study itself
    pod = pod_manifest(spec_for(load_settings(), "delta"), "trials", "r1", load_settings(), worker=2)
    assert container_of(pod)["args"][-2:] == ["--worker", "2"] and pod["metadata"]["name"].endswith("-2")
    assert pod["metadata"]["labels"]["mlcycle.io/worker"] == "2"
    assert container_of(pod)["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the train step's GPU


def test_an_approval_sits_between_evaluate_and_promote_only_where_the_spec_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """promotion.approval: manual (or auto with manual_when) puts Airflow's HITL ApprovalOperator
    between evaluate and promote, rejecting on its timeout and skipping everything after a reject;
    plain auto keeps evaluate -> promote."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from operators.factory import build_dags

    write_spec(tmp_path, "manual", merge=True, promotion={"approval": "manual", "approval_timeout_h": 2})
    write_spec(tmp_path, "gated", merge=True, promotion={"manual_when": {"primary_gain_below": 0.01}})
    write_spec(tmp_path, "plain", schedule=None)
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(tmp_path))
    dags = build_dags()
    for name in ("manual", "gated"):
        dag = dags[f"{name}_lifecycle"]
        gate = dag.get_task("approval")
        assert isinstance(gate, ApprovalOperator)
        assert gate.upstream_task_ids == {"evaluate"} and dag.get_task("promote").upstream_task_ids == {"approval"}
        assert gate.defaults == ["Reject"] and gate.ignore_downstream_trigger_rules is True
        assert "reason" in gate.params
    assert dags["manual_lifecycle"].get_task("approval").response_timeout.total_seconds() == 2 * 3600
    plain = dags["plain_lifecycle"]
    assert "approval" not in plain.task_ids and plain.get_task("promote").upstream_task_ids == {"evaluate"}


def test_a_batch_section_gives_a_batch_dag_pin_mapped_partitions_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`batch:` adds `<name>_batch`: pin, then `score` mapped over the partitions (each runs
    `mlcycle step batch --worker N`), then publish, whose outlet is `mlcycle://<name>/predictions`;
    a spec without the section gets no batch DAG."""
    from operators.factory import build_dags
    from operators.trigger import predictions_asset
    from pipelines.core.pod import container_of, pod_manifest
    from pipelines.core.settings import load_settings, spec_for

    write_spec(tmp_path, "scored", merge=True, batch={"schedule": "@daily", "parallelism": 3})
    write_spec(tmp_path, "plain", schedule=None, batch=None)
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(tmp_path))
    dags = build_dags()
    assert "plain_batch" not in dags and "scored_batch" in dags
    batch = dags["scored_batch"]
    assert batch.timetable.expression == "0 0 * * *"
    score = batch.get_task("score")
    assert score.expand_input.value == {"worker": [0, 1, 2]}
    assert score.upstream_task_ids == {"pin"} and batch.get_task("publish").upstream_task_ids == {"score"}
    publish = batch.get_task("publish")
    assert publish.outlets == [predictions_asset("scored")]
    assert predictions_asset("scored").uri == "mlcycle://scored/predictions"
    assert [(t.task_id, t.step) for t in (batch.get_task("pin"), publish)] == [
        ("pin", "batch_pin"),
        ("publish", "batch_publish"),
    ]
    pod = pod_manifest(spec_for(load_settings(), "scored"), "batch", "r1", load_settings(), worker=2)
    assert container_of(pod)["args"][-2:] == ["--worker", "2"]
    assert "batch" in container_of(pod)["args"]
