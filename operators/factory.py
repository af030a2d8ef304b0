"""The one DAG factory: every spec in the pipelines directory becomes `<name>_lifecycle`.

Parse-time work is reading small YAML files; no database, no network, no heavy imports.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from airflow.sdk import DAG

from operators.step import PipelineStepOperator

if TYPE_CHECKING:
    from pipelines.spec import PipelineSpec

START = datetime(2025, 1, 1)


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


def lifecycle_dag(spec: PipelineSpec, steps: list[str]) -> DAG:
    """`<name>_lifecycle`: the steps in order, one PipelineStepOperator each."""
    with DAG(
        dag_id=f"{spec.name}_lifecycle",
        schedule=spec.schedule,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        tags=["mlcycle", spec.name, *spec.tags],
        doc_md=doc_md(spec, steps),
        default_args={
            "owner": spec.owner,
            "retries": spec.retries,
            "retry_delay": timedelta(seconds=30),
            "retry_exponential_backoff": True,
        },
    ) as dag:
        previous = None
        for step in steps:
            task = PipelineStepOperator(task_id=step, pipeline=spec.name, step=step)
            if previous is not None:
                previous >> task
            previous = task
    return dag


def build_dags() -> dict[str, DAG]:
    """Every pipeline's DAGs, by dag id."""
    from pipelines.runner import lifecycle_steps
    from pipelines.settings import load_settings
    from pipelines.spec import load_specs

    steps = lifecycle_steps()
    dags = [lifecycle_dag(spec, steps) for spec in load_specs(load_settings().specs_path)]
    return {d.dag_id: d for d in dags}
