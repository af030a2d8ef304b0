"""One pipeline: every section together, the label kind's evaluation defaults, and the checks
between sections (each reported at the field the user edits to fix it)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from pipelines.core.errors import field_path
from pipelines.core.spec.base import _NAME, Model
from pipelines.core.spec.batch import Batch
from pipelines.core.spec.contract import TASK_DEFAULTS, TASK_METRICS, Contract, Entity, Expectation, Features, Label
from pipelines.core.spec.model import ModelSpec, Training, hidden_widths
from pipelines.core.spec.operations import Canary, Drift, Embeddings, Evaluation, Promotion, Serving, StepResources
from pipelines.core.spec.sources import Source
from pipelines.core.steps import STEPS


class PipelineSpec(Model):
    """One pipeline: the whole lifecycle declared in one document."""

    name: str = Field(
        pattern=_NAME,
        description="the pipeline's name, as its file's (`churn` in churn.yaml): lowercase, digits, underscores",
    )
    description: str = Field(default="", description="what the pipeline predicts, shown on its lifecycle DAG's page")
    owner: str = Field(default="ml-platform", description="the team answering for it: the DAGs' owner")
    tags: list[str] = Field(
        default_factory=list, description="more tags for its lifecycle DAG, beside `mlcycle` and its name"
    )
    schedule: str | None = Field(
        default=None,
        description="a cron expression or Airflow preset that also starts the lifecycle; default: only when drift "
        "asks for retraining (or by hand)",
    )
    retries: int = Field(default=2, ge=0, le=10, description="times Airflow retries a failed lifecycle task")
    retry_delay_s: float = Field(
        default=30, ge=1, le=3600, description="seconds before a failed task's first retry (doubled for each next one)"
    )
    source: Source = Field(description="where the data comes from; `kind` picks file, s3, postgres, synthetic, dataset")
    entity: Entity = Field(description="the Feast entity predicted for, and the event-time column")
    label: Label = Field(description="the column the model predicts, and its kind")
    contract: Contract = Field(description="the data contract every row must meet, checked by the validate step")
    expectations: list[Expectation] = Field(
        default_factory=list, description="Great Expectations checks on the whole snapshot, beside the contract"
    )
    features: Features = Field(description="the Feast feature views and service, and the split by time")
    model: ModelSpec = Field(description="the model families searched, their inputs and search spaces")
    training: Training = Field(default=Training(), description="the search's budget, early stopping and checkpoints")
    resources: StepResources = Field(default=StepResources(), description="the pod resources of each step")
    evaluation: Evaluation = Field(default=Evaluation(), description="the gates a challenger passes to be promoted")
    promotion: Promotion = Field(
        default=Promotion(), description="whether a person approves a challenger before it is promoted"
    )
    canary: Canary = Field(default=Canary(), description="the traffic steps and SLOs of a challenger's rollout")
    serving: Serving = Field(default=Serving(), description="the Ray Serve application that answers requests")
    drift: Drift = Field(default=Drift(), description="the scheduled drift check that asks for retraining")
    embeddings: Embeddings | None = Field(
        default=None, description="vectors the model writes beside its score, in pgvector; default: none"
    )
    batch: Batch | None = Field(
        default=None,
        description="scheduled batch predictions of the champion (the `<name>_batch` DAG); default: none",
    )

    @property
    def classes(self) -> list[str]:
        """A multiclass label's classes, in the order of the contract's `allowed` (duplicates
        dropped): the order of the model's probabilities. Empty for any other kind."""
        if self.label.kind != "multiclass":
            return []
        column = self.contract.columns.get(self.label.column)
        return column.classes if column is not None else []

    def lifecycle_steps(self) -> list[str]:
        """The steps of this pipeline's lifecycle DAG, in order (`embed` only with `embeddings`)."""
        return [s.name for s in STEPS if s.lifecycle and (s.needs is None or getattr(self, s.needs) is not None)]

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """The evaluation defaults of the label's kind, under what the document sets."""
        if not isinstance(data, dict):
            return data
        label, evaluation = data.get("label"), data.get("evaluation", {})
        kind = label.get("kind", "binary") if isinstance(label, dict) else getattr(label, "kind", "binary")
        if kind in TASK_DEFAULTS and isinstance(evaluation, dict):
            return {**data, "evaluation": {**TASK_DEFAULTS[kind], **evaluation}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        problems = cross_section_problems(self)
        if problems:
            raise CrossSectionErrors(problems)
        return self


Loc = tuple[int | str, ...]


class CrossSectionErrors(ValueError):
    """Problems between two sections, each at the field the user edits to fix it: pydantic places a
    model validator's error at the document's root, so `format_validation_error` unpacks these."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field_path(loc)}: {msg}" for loc, msg in problems))


def cross_section_problems(spec: PipelineSpec) -> list[tuple[Loc, str]]:
    """Every reference from one section to another that does not resolve, at the referring field. Pure."""
    cols = spec.contract.columns
    problems: list[tuple[Loc, str]] = []

    def column(loc: Loc, name: str, used_as: str) -> None:
        if name not in cols:
            problems.append((loc, f"'{name}' ({used_as}) is not a column of the contract (contract.columns)"))

    column(("entity", "join_key"), spec.entity.join_key, "the entity's join key")
    column(("entity", "timestamp"), spec.entity.timestamp, "the event timestamp")
    column(("label", "column"), spec.label.column, "the label")
    kind = spec.label.kind
    if spec.evaluation.primary_metric not in TASK_METRICS[kind]:
        problems.append(
            (
                ("evaluation", "primary_metric"),
                f"{spec.evaluation.primary_metric} is not a metric of a {kind} label; "
                f"one of {', '.join(TASK_METRICS[kind])}",
            )
        )
    label_col = cols.get(spec.label.column)
    if kind == "regression" and label_col is not None and label_col.dtype not in ("int", "float"):
        problems.append(
            (("contract", "columns", spec.label.column, "dtype"), "a regression label must be an int or float column")
        )
    if kind == "multiclass" and label_col is not None and (label_col.dtype != "string" or len(label_col.classes) < 2):
        problems.append(
            (
                ("contract", "columns", spec.label.column, "allowed"),
                "a multiclass label must be a string column whose `allowed` lists its classes (two or more)",
            )
        )
    for v, view in enumerate(spec.features.views):
        for i, name in enumerate(view.features):
            column(("features", "views", v, "features", i), name, f"a feature of view '{view.name}'")
    served = set(spec.features.feature_names)
    for section in ("numeric_features", "categorical_features"):
        for i, name in enumerate(getattr(spec.model, section)):
            loc: Loc = ("model", section, i)
            column(loc, name, "a model feature")
            if name not in served:
                problems.append((loc, f"'{name}' is not a feature of any view of the feature service (features.views)"))
    ts = cols.get(spec.entity.timestamp)
    if ts is not None and ts.dtype != "datetime":
        problems.append(
            (("contract", "columns", spec.entity.timestamp, "dtype"), "the event timestamp must be a datetime column")
        )
    model_features = spec.model.numeric_features + spec.model.categorical_features
    for i, name in enumerate(spec.drift.ignore):
        if name not in model_features:
            problems.append((("drift", "ignore", i), f"'{name}' is not a feature the model uses"))
    emb = spec.embeddings
    if emb is not None and spec.model.families != ["tabular_mlp"]:
        problems.append(
            (
                ("model", "kind"),
                f"{spec.model.kind}: embeddings need the tabular_mlp family (its last hidden layer is the embedding; "
                "linear and lightgbm models have none): pin kind: tabular_mlp, or drop embeddings",
            )
        )
    elif emb is not None and emb.dimension is not None:
        widths = hidden_widths(spec.model.space_of("tabular_mlp"))
        if widths != {emb.dimension}:
            shown = f"{widths.start}..{widths.stop - 1}" if isinstance(widths, range) else sorted(widths, key=str)
            problems.append(
                (
                    ("embeddings", "dimension"),
                    f"{emb.dimension}, but the last hidden layer can be {shown} wide "
                    f"(model.search_space.hidden_units); pin it with {{type: categorical, choices: [{emb.dimension}]}}"
                    " or drop embeddings.dimension",
                )
            )
    return problems
