"""`PipelineStepOperator`: one lifecycle step as one Kubernetes pod, or the same pod run locally.

The operator is small on purpose: it renders the pod at run time from the worker's settings
(`pipelines.core.pod`, pure) and hands it to a runtime: `kubernetes` delegates to the cncf.kubernetes
provider's `KubernetesPodOperator` (logs, XCom sidecar, pod cleanup), `local` runs the container's
command as a process (`operators.local`). Nothing heavy is imported when a DAG file is parsed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

from operators.container import DockerContainer, container_config
from operators.hook import connection_settings_env
from operators.links import MlflowLink, ReportLink
from operators.local import LocalProcess, StepFailed, exit_description
from operators.trigger import retraining_asset
from pipelines.core.errors import NO_RETRY_EXIT_CODES, SKIP_EXIT_CODE
from pipelines.core.params import ENV, run_params
from pipelines.core.pod import docker_env_from, pod_manifest, to_v1pod
from pipelines.core.settings import load_settings, scoped_environ, spec_for
from pipelines.io.runs import interrupt_running, step_outputs

if TYPE_CHECKING:
    from airflow.sdk import Context

Runtime = Literal["local", "docker", "kubernetes"]


class PipelineStepOperator(BaseOperator):
    """Run `mlcycle step <step> --pipeline <pipeline> --run-id <run>`.

    Args:
        pipeline: the pipeline (a spec in the settings' pipelines directory).
        step: the lifecycle step.
        runtime: `local`, `docker` or `kubernetes`; default from the settings (`MLCYCLE_RUNTIME`, else
            `local` in the embedded profile and `kubernetes` in the cluster profile).
        run_key: the run id the step writes under (templated; default the DAG run's id).
        worker: which trial worker (step `trials`, mapped over `range(training.parallelism)`).
    """

    template_fields = ("run_key",)
    ui_color = "#e8f0fe"
    operator_extra_links = (MlflowLink(), ReportLink())

    def __init__(
        self,
        *,
        pipeline: str,
        step: str,
        runtime: Runtime | None = None,
        run_key: str = "{{ run_id }}",
        worker: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.step = step
        self.worker = worker
        self.runtime = runtime
        self.run_key = run_key
        self._runner: Any = None
        self.result: Any = None  # the step's result, for the extra links
        self._pod_operator: Any = None

    # ------------------------------------------------------------------------- building (pure)
    def render_pod(self, run_id: str, airflow: dict[str, str] | None = None) -> dict[str, Any]:
        """The pod this task runs, from the current settings and the pipeline's spec."""
        settings = load_settings()
        return pod_manifest(spec_for(settings, self.pipeline), self.step, run_id, settings, airflow, self.worker)

    def dry_run(self) -> None:
        """Print the pod this task would run, as YAML."""
        import yaml

        print(yaml.safe_dump(self.render_pod(self.run_key), sort_keys=False))

    def run_params(self, context: Context) -> dict[str, Any]:
        """The step pods' run parameters, from the run's form values, type, interval and the
        retraining Asset's events that triggered it."""
        dag_run = context["dag_run"]
        asset = retraining_asset(self.pipeline).name
        events = [
            (e.timestamp, e.extra or {})
            for e in getattr(dag_run, "consumed_asset_events", None) or []
            if getattr(e.asset, "name", None) == asset
        ]
        return run_params(
            context.get("params") or {},
            str(dag_run.run_type),
            getattr(dag_run, "data_interval_end", None),
            dag_run.run_after,
            events,
        )

    # ------------------------------------------------------------------------------------- I/O
    def execute(self, context: Context) -> Any:
        """Run the step with the settings of the `mlcycle` connection where the Airflow has one
        (over the environment's), else the environment's."""
        with scoped_environ(connection_settings_env()):
            return self._execute(context)

    def _execute(self, context: Context) -> Any:
        ti = context["ti"]
        airflow_env = {
            "MLCYCLE_AIRFLOW_DAG_ID": ti.dag_id,
            "MLCYCLE_AIRFLOW_RUN_ID": str(context["run_id"]),
            "MLCYCLE_AIRFLOW_TRY_NUMBER": str(ti.try_number),
        }

        # the Trigger DAG form's values (validated by Airflow), the run's as_of and its cause
        params = self.run_params(context)
        airflow_env[ENV] = json.dumps(params, sort_keys=True, default=str)
        if params.get("cause"):
            self.log.info("retraining because: %s", "; ".join(params["cause"].get("reasons") or ["(no reason given)"]))
        self.log.info("data as of %s (%s run)", params["as_of"], params["trigger"])
        manifest = self.render_pod(self.run_key, airflow_env)
        settings = load_settings()
        runtime = self.runtime or settings.effective_runtime
        self.log.info("step %s of %s, run %s, runtime %s", self.step, self.pipeline, self.run_key, runtime)
        if runtime == "kubernetes":
            try:
                self.result = self._run_on_kubernetes(manifest, settings, context)
            except Exception as err:
                self._record_lost(settings, f"its pod failed without recording its outcome: {err}")
                raise
            return self.result

        self._runner = self._runner_for(runtime, manifest, settings)
        try:
            self.result = self._runner.run(self.log.info)
            return self.result
        except StepFailed as err:
            self._record_lost(
                settings, f"its process ended with {exit_description(err.returncode)} without recording its outcome"
            )
            if err.returncode == SKIP_EXIT_CODE:
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(err.tail[-1] if err.tail else "skipped") from err
            if err.returncode in NO_RETRY_EXIT_CODES:
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(str(err)) from err
            raise

    def _record_lost(self, settings: Any, reason: str) -> None:
        """The step's process is gone: an attempt it left `running` (killed before it could record
        how it ended) is marked `interrupted` with the reason; a no-op when it recorded its outcome."""
        try:
            marked = interrupt_running(settings, self.pipeline, self.run_key, self.step, self.worker, reason)
        except Exception as err:  # the record is best effort: the task's own error is what matters
            self.log.warning("could not mark the step's attempt interrupted: %s", err)
            return
        if marked:
            self.log.error("step %s %s; its attempt is marked interrupted", self.step, reason)

    @staticmethod
    def _runner_for(runtime: str, manifest: dict[str, Any], settings: Any) -> Any:
        """The process (`local`) or container (`docker`) that runs the pod's step container."""
        if runtime == "docker":
            import os

            labels = manifest["metadata"]["labels"]
            spec = spec_for(settings, labels["mlcycle.io/pipeline"])
            taken = docker_env_from(settings, labels["mlcycle.io/step"], spec)
            config = container_config(manifest, os.environ, taken, settings.docker_network)
            return DockerContainer(manifest, config, settings.image_pull_policy, settings.docker_gpu)

        return LocalProcess(manifest, cwd=str(settings.project_dir))

    def _run_on_kubernetes(self, manifest: dict[str, Any], settings: Any, context: Context) -> Any:
        from operators.kubernetes import StepPodOperator  # heavy: the cncf.kubernetes provider

        self._pod_operator = StepPodOperator(
            task_id=f"{self.task_id}__pod",
            full_pod_spec=to_v1pod(manifest),
            namespace=settings.k8s_namespace,
            kubernetes_conn_id=settings.k8s_conn_id,
            get_logs=True,
            # no XCom sidecar: the provider reads it through `pods/exec`, which Airflow is not
            # granted; the step's result is what it recorded in `step_runs`
            do_xcom_push=False,
            on_finish_action="delete_pod",
            startup_timeout_seconds=settings.k8s_startup_timeout_s,
            schedule_timeout_seconds=settings.k8s_schedule_timeout_s,
            log_events_on_failure=True,
        )
        self._pod_operator.execute(context)
        return step_outputs(settings, self.pipeline, self.run_key, self.step, self.worker)

    def on_kill(self) -> None:
        if self._runner is not None:
            self._runner.terminate()
        if self._pod_operator is not None:
            self._pod_operator.on_kill()
