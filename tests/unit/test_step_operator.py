"""The operator's kubernetes runtime hands the provider exactly the rendered pod.

No cluster here: the provider's own pod construction (`build_pod_request_obj`, pure) stands in for
the launch, and the pod it would send to the API server is checked against the Kubernetes schema.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import ApiClient

from operators import PipelineStepOperator


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLCYCLE_PROFILE", "cluster")
    monkeypatch.setenv("MLCYCLE_DATABASE_URL", "postgresql://u:p@db/x")
    monkeypatch.setenv("MLCYCLE_ARTIFACT_ROOT", "s3://mlcycle-artifacts/runs")
    monkeypatch.setenv("MLCYCLE_IMAGE", "registry.example/mlcycle-step:0.1.0")
    monkeypatch.setenv("MLCYCLE_K8S_NAMESPACE", "ml")
    monkeypatch.setenv("MLCYCLE_K8S_ENV_SECRET", "mlcycle-env")


INTERVAL_END = datetime(2026, 11, 25, tzinfo=UTC)


def _context(run_id: str, params: dict[str, Any] | None = None, **dag_run: Any) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="churn_lifecycle", task_id="train", try_number=2, map_index=-1)
    run = {
        "run_type": "scheduled",
        "data_interval_end": INTERVAL_END,
        "run_after": INTERVAL_END + timedelta(minutes=1),
        "consumed_asset_events": [],
        **dag_run,
    }
    return {
        "ti": ti,
        "run_id": run_id,
        "dag": SimpleNamespace(dag_id="churn_lifecycle"),
        "params": params or {},
        "dag_run": SimpleNamespace(**run),
    }


def test_kubernetes_runtime_launches_the_rendered_pod(cluster_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: dict[str, Any] = {}

    def fake_execute(self: KubernetesPodOperator, context: Any) -> None:
        pod = self.build_pod_request_obj(context, dry_run=True)  # dry_run: no kube config here
        sent["pod"] = ApiClient().sanitize_for_serialization(pod)
        sent["namespace"] = self.namespace
        sent["skip_on_exit_code"] = list(self.skip_on_exit_code)

    # the step's result is what it recorded in step_runs (the database is the integration tests')
    recorded: list[tuple[Any, ...]] = []
    monkeypatch.setattr("operators.step.step_outputs", lambda _settings, *key: recorded.append(key) or {"rows": 1})
    monkeypatch.setattr(KubernetesPodOperator, "execute", fake_execute)
    op = PipelineStepOperator(task_id="train", pipeline="churn", step="train")
    op.run_key = "scheduled__2026-11-25T00:00:00+00:00"  # what templating renders
    params = {"n_trials": 3, "dry_run": True, "source_uri": None}  # the Trigger DAG form
    assert op.execute(_context(op.run_key, params)) == {"rows": 1}
    assert recorded == [("churn", op.run_key, "train", None)]

    pod = sent["pod"]
    kubernetes_validate.validate(pod, "1.34", strict=True)
    base = next(c for c in pod["spec"]["containers"] if c["name"] == "base")
    assert base["image"] == "registry.example/mlcycle-step:0.1.0"
    assert base["args"] == ["step", "train", "--pipeline", "churn", "--run-id", "scheduled__2026-11-25T00:00:00+00:00"]
    assert base["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in base["env"]}
    assert env["MLCYCLE_AIRFLOW_DAG_ID"] == "churn_lifecycle"
    assert env["MLCYCLE_AIRFLOW_TRY_NUMBER"] == "2"
    assert json.loads(env["MLCYCLE_RUN_PARAMS"]) == {
        "dry_run": True,
        "n_trials": 3,
        "trigger": "scheduled",
        "as_of": INTERVAL_END.isoformat(),  # a scheduled run reads up to its data interval's end
    }
    assert base["envFrom"] == [{"secretRef": {"name": "mlcycle-env"}}]
    assert not pod["spec"].get("nodeSelector")  # no GPU pool in these settings, none in the spec
    assert pod["metadata"]["namespace"] == sent["namespace"] == "ml"
    # No XCom sidecar: the provider reads it through pods/exec, which Airflow is not granted.
    assert [c["name"] for c in pod["spec"]["containers"]] == ["base"]
    assert sent["skip_on_exit_code"] == [100]


def test_local_runtime_failure_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from operators.local import LocalProcess, StepFailed

    monkeypatch.setenv("MLCYCLE_STATE_DIR", str(tmp_path))
    codes = iter([100, 3, 1])

    def fail(self: LocalProcess, log: Any) -> None:
        raise StepFailed(["mlcycle"], next(codes), ["boom"])

    monkeypatch.setattr(LocalProcess, "run", fail)
    # the attempt the process left is marked interrupted (the database is the integration tests'
    # business: a real one here would start the embedded PostgreSQL and leave it running)
    marked: list[str] = []
    monkeypatch.setattr("operators.step.interrupt_running", lambda *args: marked.append(args[-1]) or 0)
    op = PipelineStepOperator(task_id="validate", pipeline="churn", step="validate", runtime="local")
    op.run_key = "r1"
    with pytest.raises(AirflowSkipException, match="boom"):  # a failed gate: skip the rest of the run
        op.execute(_context("r1"))
    with pytest.raises(AirflowFailException):  # rejected data: no retry
        op.execute(_context("r1"))
    with pytest.raises(StepFailed):  # anything else: Airflow retries
        op.execute(_context("r1"))
    assert marked == [f"its process ended with {c} without recording its outcome" for c in (100, 3, 1)]


def test_dry_run_prints_the_pod(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import yaml

    monkeypatch.setenv("MLCYCLE_STATE_DIR", str(tmp_path))
    PipelineStepOperator(task_id="ingest", pipeline="churn", step="ingest").dry_run()
    pod = yaml.safe_load(capsys.readouterr().out)
    assert pod["spec"]["containers"][0]["args"][-1] == "{{ run_id }}"


def test_a_drift_triggered_run_carries_the_events_findings() -> None:
    """The retraining Asset's newest event: its time is the run's as_of, its extra the run's cause;
    another Asset's events are not this pipeline's findings."""
    op = PipelineStepOperator(task_id="ingest", pipeline="churn", step="ingest")
    found = datetime(2026, 11, 26, 8, tzinfo=UTC)

    def event(name: str, at: datetime, reasons: list[str]) -> SimpleNamespace:
        return SimpleNamespace(asset=SimpleNamespace(name=name), timestamp=at, extra={"reasons": reasons})

    context = _context(
        "asset_triggered__x",
        run_type="asset_triggered",
        data_interval_end=None,
        consumed_asset_events=[
            event("churn_retraining", found - timedelta(hours=2), ["older"]),
            event("churn_retraining", found, ["live roc_auc 0.61"]),
            event("other_retraining", found + timedelta(hours=1), ["not ours"]),
        ],
    )
    params = op.run_params(context)
    assert params == {"trigger": "asset", "as_of": found.isoformat(), "cause": {"reasons": ["live roc_auc 0.61"]}}
    manual = op.run_params(_context("manual__x", {"as_of": "2026-06-30T00:00:00+00:00"}, run_type="manual"))
    assert manual == {"trigger": "manual", "as_of": "2026-06-30T00:00:00+00:00"}  # the form's as_of wins


def _finished_pod(code: int) -> Any:
    from kubernetes.client import models as k8s

    terminated = k8s.V1ContainerStateTerminated(exit_code=code)
    status = k8s.V1ContainerStatus(
        name="base",
        image="i",
        image_id="",
        ready=False,
        restart_count=0,
        state=k8s.V1ContainerState(terminated=terminated),
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="mlcycle-churn-train-abc", namespace="ml", labels={}),
        status=k8s.V1PodStatus(phase="Succeeded" if code == 0 else "Failed", container_statuses=[status]),
    )


def test_kubernetes_runtime_keeps_the_exit_code_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's own cleanup decides; no API server here, so its calls to one are stubbed."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

    from operators.kubernetes import StepPodOperator, exit_code

    monkeypatch.setattr(StepPodOperator, "patch_already_checked", lambda self, pod, reraise=True: None)
    monkeypatch.setattr(StepPodOperator, "process_pod_deletion", lambda self, pod, reraise=True: None)
    monkeypatch.setattr(StepPodOperator, "is_istio_enabled", lambda self, pod: False)
    op = StepPodOperator(task_id="train__pod", name="p", image="i", do_xcom_push=False, log_events_on_failure=False)
    assert exit_code(_finished_pod(3), "base") == 3 and exit_code(_finished_pod(3), "other") is None
    with pytest.raises(AirflowFailException, match="exited 2: retrying cannot help"):  # a bad spec
        op.cleanup(_finished_pod(2), _finished_pod(2))
    with pytest.raises(AirflowFailException, match="exited 3"):  # rejected data
        op.cleanup(_finished_pod(3), _finished_pod(3))
    with pytest.raises(AirflowSkipException):  # nothing to do
        op.cleanup(_finished_pod(100), _finished_pod(100))
    with pytest.raises(AirflowException) as err:  # anything else: Airflow retries
        op.cleanup(_finished_pod(1), _finished_pod(1))
    assert not isinstance(err.value, AirflowFailException | AirflowSkipException)
    op.cleanup(_finished_pod(0), _finished_pod(0))


def test_a_retried_task_finds_its_running_pod_instead_of_starting_another(cluster_env: None) -> None:
    """The labels the provider puts on the pod of try 1 match the selector try 2 searches with."""
    from operators.kubernetes import StepPodOperator
    from pipelines.core.pod import pod_manifest, to_v1pod
    from pipelines.core.settings import load_settings, spec_for

    settings = load_settings()
    manifest = pod_manifest(spec_for(settings, "churn"), "train", "manual__1", settings)
    op = StepPodOperator(task_id="train__pod", full_pod_spec=to_v1pod(manifest), namespace="ml")
    assert op.durable and op.reattach_on_restart
    first = _context("manual__1")
    pod = op.build_pod_request_obj(first, dry_run=True)
    labels = pod.metadata.labels
    second = {**first, "ti": SimpleNamespace(**{**vars(first["ti"]), "try_number": 3})}
    selector = op._build_find_pod_label_selector(second)
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if term.startswith("!"):  # not a pod of an Airflow worker (KubernetesExecutor)
            assert term[1:] not in labels
        elif key.endswith("!"):  # already_checked!=True: a pod not yet processed by a finished try
            assert labels.get(key[:-1]) != value
        else:
            assert labels.get(key) == value, (key, labels)
    assert labels["mlcycle.io/step"] == "train" and labels["try_number"] == "2"
