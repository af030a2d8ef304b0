"""The one table of steps: every fact about a step that other code looks up. Pure data.

The spec validates step names against it, the runner imports `module`, the DAG factory wires the
steps with `lifecycle` in this order, the CLI shows a run in this order, and the operator's
"Report" link and the plugin's artifact view serve `report`. It lives in `core` because the spec
(the lowest layer that names steps) reads it; `pipelines.steps` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from pipelines.core.errors import InvalidArgument


@dataclass(frozen=True)
class Report:
    """A step's report: the link's name in the Airflow UI and the artifact's file name."""

    title: str
    file: str


@dataclass(frozen=True)
class Step:
    """One step: its name, the module whose `run(ctx)` it calls, its report and what it does."""

    name: str
    module: str
    summary: str
    report: Report | None = None
    lifecycle: bool = True
    """In the lifecycle DAG (`drift` has a DAG of its own; `trials` fans out before `train` where
    a spec asks for parallel trial workers)."""
    needs: str | None = None
    """The spec section without which the step is left out of a pipeline's lifecycle."""


STEPS: tuple[Step, ...] = (
    Step("ingest", "pipelines.steps.ingest", "source -> Parquet snapshot, content hash, manifest"),
    Step(
        "validate",
        "pipelines.steps.validate",
        "data contract (pandera) and expectations (Great Expectations); bad rows quarantined",
        Report("Validation report", "report.html"),
    ),
    Step("features", "pipelines.steps.features", "Feast apply, materialize, point-in-time training set, time split"),
    Step(
        "trials",
        "pipelines.steps.trials",
        "one of `training.parallelism` trial workers on the run's one Optuna study",
        lifecycle=False,
    ),
    Step("train", "pipelines.steps.train", "Optuna study of torch trials, tracked in MLflow; ONNX of the best"),
    Step(
        "evaluate",
        "pipelines.steps.evaluate",
        "challenger vs champion on one test set: bootstrap CIs, slices, gates",
        Report("Evaluation report", "report.html"),
    ),
    Step("promote", "pipelines.steps.promote", "register the version, ONNX parity, alias `challenger`"),
    Step(
        "embed",
        "pipelines.steps.embed",
        "the challenger's pgvector space: every entity embedded, COPYed, indexed; recall@10 gate",
        needs="embeddings",
    ),
    Step(
        "canary",
        "pipelines.steps.canary",
        "challenger beside champion on Ray Serve, weighted; promote or roll back",
        Report("Canary report", "report.png"),
    ),
    Step(
        "drift",
        "pipelines.steps.drift",
        "served traffic vs the training reference (Evidently, PSI/KS); drift triggers retraining",
        Report("Evidently report", "report.html"),
        lifecycle=False,
    ),
    Step(
        "retention",
        "pipelines.steps.retention",
        "request-log partitions made and dropped, old labels and run folders removed (not a version's lineage)",
        lifecycle=False,
    ),
    Step(
        "batch_pin",
        "pipelines.steps.batch_pin",
        "a batch run's champion version and as_of, read once for every partition",
        lifecycle=False,
    ),
    Step(
        "batch",
        "pipelines.steps.batch",
        "one partition of the batch's entities: contract, point-in-time features, ONNX scores, written idempotently",
        lifecycle=False,
    ),
    Step(
        "batch_publish",
        "pipelines.steps.batch_publish",
        "every partition done: the run's summary recorded and its predictions published at once",
        lifecycle=False,
    ),
)
"""Every step, in lifecycle order."""

BATCH_STEPS: frozenset[str] = frozenset({"batch_pin", "batch", "batch_publish"})
"""The steps of a pipeline's `<name>_batch` DAG."""

STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}
LIFECYCLE: tuple[str, ...] = tuple(s.name for s in STEPS if s.lifecycle)
REPORT_FILES: frozenset[str] = frozenset({"report.json", *(s.report.file for s in STEPS if s.report)})
"""The files the plugin serves from a step's folder (`report.json` beside each rendered report)."""


RETENTION_DAG = "mlcycle_retention"
"""The DAG of the retention step: one task per pipeline, every hour."""

ARTIFACT_PREFIX = "/mlcycle/artifacts"
REPORT_PREFIX = "/mlcycle/reports"


def artifact_url(dag_id: str, run_id: str, step: str, name: str) -> str:
    """The mlcycle plugin's URL of one report file of a step, relative to the api-server. Pure."""
    return f"{ARTIFACT_PREFIX}/{quote(dag_id)}/{quote(run_id, safe='')}/{step}/{name}"


def dag_of_run(pipeline: str, steps: set[str]) -> str:
    """The DAG a run belongs to, from the steps it ran: a drift check has a DAG of its own. Pure."""
    if steps == {"retention"}:
        return RETENTION_DAG
    if steps and steps <= BATCH_STEPS:
        return f"{pipeline}_batch"
    return f"{pipeline}_drift" if steps == {"drift"} else f"{pipeline}_lifecycle"


def report_url(dag_id: str, run_id: str, step: str) -> str:
    """The mlcycle plugin's page of a step's report (the report with a way back to the run),
    relative to the api-server: what the Report link and the platform API point to. Pure."""
    if BY_NAME[step].report is None:
        raise ValueError(f"step '{step}' writes no report")
    return f"{REPORT_PREFIX}/{quote(dag_id)}/{quote(run_id, safe='')}/{step}"


def step(name: str) -> Step:
    """The step called `name`, or a clear error listing the steps. Pure."""
    if name not in BY_NAME:
        raise InvalidArgument(f"unknown step '{name}'; steps are {list(STEP_NAMES)}")
    return BY_NAME[name]
