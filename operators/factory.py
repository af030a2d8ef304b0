"""The one DAG factory: every spec in the pipelines directory becomes `<name>_lifecycle` and
`<name>_drift` (and `<name>_batch` where it declares `batch`).

Parse-time work is reading small YAML files; no database, no network, no heavy imports.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable

from operators.approval import PromotionApproval
from operators.notifier import AlertNotifier
from operators.step import PipelineStepOperator
from operators.trigger import RetrainingTrigger, predictions_asset, retraining_asset
from pipelines.core import approval
from pipelines.core.errors import SpecError
from pipelines.core.params import airflow_params
from pipelines.core.settings import load_settings
from pipelines.core.spec import read_specs
from pipelines.core.steps import RETENTION_DAG

if TYPE_CHECKING:
    from pipelines.core.settings import Settings
    from pipelines.core.spec import PipelineSpec


def doc_md(spec: PipelineSpec, steps: list[str]) -> str:
    source = spec.source.kind
    return (
        f"### {spec.name} lifecycle\n\n{spec.description}\n\n"
        f"Steps: {' → '.join(f'`{s}`' for s in steps)}. Source: `{source}`. "
        f"Feature service: `{spec.features.feature_service}`. Owner: {spec.owner}.\n\n"
        f"Each task runs `mlcycle step <step> --pipeline {spec.name} --run-id <run_id>` in a pod "
        "(runtime `kubernetes`) or as a local process (runtime `local`); see the task's rendered pod "
        f"with `mlcycle pod render --pipeline {spec.name} --step <step>`."
    )


def cron(expression: str) -> CronTriggerTimetable:
    """A cron schedule in UTC that never starts the latest "missed" run on a new deployment:
    `run_immediately=False` is read by the scheduler as "within 10% of the interval (at least five
    minutes)", so an hourly check deployed at 10:05 would run for 10:00 at once; a zero buffer
    waits for the next time."""
    return CronTriggerTimetable(expression, timezone="UTC", run_immediately=timedelta(0))


def lifecycle_schedule(spec: PipelineSpec) -> Any:
    """The retraining Asset, or the spec's cron as well: whichever comes first starts a run.

    No DAG has a start date, so a cron schedule waits for its next time: a new deployment does not
    start the latest "missed" run (with a start date in the past, Airflow would)."""
    asset = retraining_asset(spec.name)
    if spec.schedule is None:
        return [asset]
    return AssetOrTimeSchedule(timetable=cron(spec.schedule), assets=asset)


def step_defaults(spec: PipelineSpec) -> dict[str, Any]:
    """The default arguments of a pipeline's step tasks: its owner, its retries, backing off, and
    Alertmanager told of a task that failed for good."""
    return {
        "owner": spec.owner,
        "retries": spec.retries,
        "retry_delay": timedelta(seconds=spec.retry_delay_s),
        "retry_exponential_backoff": True,
        "on_failure_callback": AlertNotifier(spec.name),
    }


def lifecycle_dag(spec: PipelineSpec, steps: list[str], settings: Settings | None = None) -> DAG:
    """`<name>_lifecycle`: the steps in order, one PipelineStepOperator each; with an approval
    (`promotion`), the `approval` task between `evaluate` and `promote`."""
    with DAG(
        dag_id=f"{spec.name}_lifecycle",
        schedule=lifecycle_schedule(spec),
        catchup=False,
        max_active_runs=1,
        tags=["mlcycle", spec.name, *spec.tags],
        doc_md=doc_md(spec, steps),
        params=airflow_params(spec, settings or load_settings()),
        default_args=step_defaults(spec),
    ) as dag:
        previous: Any = None
        for step in steps:
            if step == "train" and spec.training.parallelism > 1:
                # N trial workers (dynamic task mapping: one pod each), then `train` exports the best
                workers = PipelineStepOperator.partial(task_id="trials", pipeline=spec.name, step="trials").expand(
                    worker=list(range(spec.training.parallelism))
                )
                previous >> workers
                previous = workers
            if step == "promote" and spec.promotion.asks_for_approval():
                # a person (or the spec's conditions) lets the challenger through: Required actions
                gate = PromotionApproval(
                    task_id=approval.TASK_ID, pipeline=spec.name, timeout_h=spec.promotion.approval_timeout_h
                )
                previous >> gate
                previous = gate
            task = PipelineStepOperator(task_id=step, pipeline=spec.name, step=step)
            if previous is not None:
                previous >> task
            previous = task
    return dag


def drift_dag(spec: PipelineSpec) -> DAG:
    """`<name>_drift`: the drift check on its schedule, then the retraining Asset if it asks."""
    with DAG(
        dag_id=f"{spec.name}_drift",
        schedule=cron(spec.drift.schedule) if spec.drift.schedule else None,
        catchup=False,
        max_active_runs=1,
        tags=["mlcycle", spec.name, "drift"],
        doc_md=(
            f"### {spec.name} drift\n\nCompares the served champion's last {spec.drift.window_hours:g} h of "
            "requests with its training reference (Evidently, PSI, KS/chi-squared, live metric on labels). "
            f"When it asks for retraining, `trigger_retraining` emits the `{spec.name}_retraining` Asset "
            f"that schedules `{spec.name}_lifecycle`; otherwise that task is skipped."
        ),
        default_args={
            "owner": spec.owner,
            "retries": 1,
            "retry_delay": timedelta(seconds=spec.retry_delay_s),
            "on_failure_callback": AlertNotifier(spec.name),
        },
    ) as dag:
        PipelineStepOperator(task_id="drift", pipeline=spec.name, step="drift") >> RetrainingTrigger(
            task_id="trigger_retraining", pipeline=spec.name
        )
    return dag


RUNTIMES = {"pods": "a task each", "ray": "a Ray Data job on the platform's Ray cluster"}


def batch_dag(spec: PipelineSpec) -> DAG:
    """`<name>_batch`: pin the champion and as_of, score the partitions as mapped tasks (one pod
    or process each), then publish, whose outlet emits `mlcycle://<name>/predictions`."""
    if spec.batch is None:
        raise ValueError(f"{spec.name}: the spec has no `batch` section")
    batch = spec.batch
    with DAG(
        dag_id=f"{spec.name}_batch",
        schedule=cron(batch.schedule) if batch.schedule else None,
        catchup=False,
        max_active_runs=1,
        tags=["mlcycle", spec.name, "batch"],
        doc_md=(
            f"### {spec.name} batch predictions\n\nThe champion (pinned once by `pin`) scores the "
            f"`{batch.entities.kind}` entities in {batch.parallelism} partition(s) of `{batch.chunk_rows}`-row "
            f"chunks ({RUNTIMES[batch.runtime]}); `publish` flips `{spec.name}_predictions_latest` and emits the "
            f"`{predictions_asset(spec.name).uri}` Asset."
        ),
        default_args=step_defaults(spec),
    ) as dag:
        pin = PipelineStepOperator(task_id="pin", pipeline=spec.name, step="batch_pin")
        score: Any = (
            PipelineStepOperator(task_id="score", pipeline=spec.name, step="batch", worker=0)  # submits a Ray job
            if batch.runtime == "ray"
            else PipelineStepOperator.partial(task_id="score", pipeline=spec.name, step="batch").expand(
                worker=list(range(batch.parallelism))
            )
        )
        done = PipelineStepOperator(
            task_id="publish", pipeline=spec.name, step="batch_publish", outlets=[predictions_asset(spec.name)]
        )
        pin >> score >> done
    return dag


def retention_dag(specs: list[PipelineSpec]) -> DAG:
    """`mlcycle_retention`: every hour, the retention step of each pipeline, one after another."""
    with DAG(
        dag_id=RETENTION_DAG,
        schedule=cron("@hourly"),
        catchup=False,
        max_active_runs=1,
        tags=["mlcycle", "retention"],
        doc_md=(
            "### mlcycle retention\n\nMakes the request log's day partitions ahead and drops them behind, "
            "deletes labels no window reads and expires run folders (never a registered version's lineage), "
            "as the installation's `MLCYCLE_RETENTION_*` settings say; each task reports what it removed."
        ),
        default_args={"owner": "mlcycle", "retries": 1, "retry_delay": timedelta(minutes=5)},
    ) as dag:
        previous = None
        for spec in specs:
            task = PipelineStepOperator(
                task_id=f"retention_{spec.name}",
                pipeline=spec.name,
                step="retention",
                on_failure_callback=AlertNotifier(spec.name),
            )
            if previous is not None:
                previous >> task
            previous = task
    return dag


def build_dags() -> dict[str, DAG]:
    """The DAGs of every valid pipeline spec, by dag id: an invalid spec costs only its own DAGs
    (`raise_spec_errors` names it)."""
    dags = []
    settings = load_settings()
    specs, _ = read_specs(settings.specs_path)
    for spec in specs:
        dags += [lifecycle_dag(spec, spec.lifecycle_steps(), settings), drift_dag(spec)]
        if spec.batch is not None:
            dags.append(batch_dag(spec))
    if specs:
        dags.append(retention_dag(specs))
    return {d.dag_id: d for d in dags}


def raise_spec_errors() -> None:
    """Raise one error naming every invalid spec and why, if any: raised by a DAG file of its own
    (dags/spec_errors.py), it is an import error of that file in Airflow's UI and API, while
    dags/lifecycle.py keeps the DAGs of the valid specs."""
    _, errors = read_specs(load_settings().specs_path)
    if errors:
        raise SpecError(
            f"{len(errors)} invalid pipeline spec(s); their DAGs are not loaded, the others are:\n"
            + "\n".join(str(e) for e in errors)
        )
