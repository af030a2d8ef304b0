"""The pipeline spec: one YAML document per pipeline, validated into frozen pydantic models.

A spec declares everything the lifecycle needs: where the data comes from, its contract, the
distribution-level expectations, the Feast entity and feature service, the label, the model's
search space and training budget, pod resources per step, the evaluation gates, the canary plan,
the drift thresholds and the schedule. Every model forbids unknown keys, so a typo fails loudly with
the path of the bad field.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from pipelines.core.errors import SpecError, field_path
from pipelines.core.families import DEFAULT_HIDDEN_UNITS, family_names
from pipelines.core.families import card as family_card
from pipelines.core.k8s import Toleration
from pipelines.core.steps import STEP_NAMES, STEPS
from pipelines.core.window import query_params, template_fields

if TYPE_CHECKING:
    from pipelines.core.settings import Settings


_NAME = r"^[a-z][a-z0-9_]{1,40}$"
_K8S_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"


class Model(BaseModel):
    """Base of every spec model: frozen, strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------- source
class SourceBase(Model):
    """What every source kind shares: which time window a run reads, and whether the platform's
    own labelled traffic joins it.

    A run reads up to its `as_of` instant (see `pipelines.core.window`); `lookback_days` bounds
    how far back. Rows are kept by the entity timestamp, so a run never sees data from after its
    own time, and a run of next month reads next month's data."""

    lookback_days: float | None = Field(default=None, gt=0, description="read at most this many days before as_of")
    feedback: bool = Field(
        default=False,
        description="add the served predictions that got a label (request log joined with labels) in the window, "
        "with the features exactly as they were served",
    )


def _check_template(value: str) -> str:
    template_fields(value)
    return value


class FilesBase(SourceBase):
    """What file and object sources share: the format and, for CSV, the field separator."""

    format: Literal["csv", "parquet"] | None = Field(default=None, description="default: from the file's suffix")
    delimiter: str = Field(
        default=",", min_length=1, max_length=1, description="CSV's field separator (e.g. ';' or a tab)"
    )


class FileSource(FilesBase):
    """A CSV or Parquet file on the local disk, or a directory of them (rows kept by the entity
    timestamp). The path may name the window: `data/churn/dt={as_of:%Y-%m-%d}.parquet`."""

    kind: Literal["file"]
    path: str

    _template = field_validator("path")(_check_template)


class S3Source(FilesBase):
    """A CSV or Parquet object in S3, or every such object under a prefix ending in `/` (endpoint
    and credentials come from the settings). The URI may name the window:
    `s3://bucket/churn/dt={as_of:%Y-%m-%d}/`."""

    kind: Literal["s3"]
    uri: str = Field(pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+")

    _template = field_validator("uri")(_check_template)


class PostgresSource(SourceBase):
    """A SQL query against PostgreSQL.

    The query may bind the window as parameters, `%(start)s`, `%(end)s` and `%(as_of)s` (never
    formatted into the text): `SELECT * FROM snapshots WHERE ts > %(start)s AND ts <= %(end)s`.
    The connection URL is read from the environment variable `url_env`, so no secret lives in a
    spec; when unset the platform database is used.
    """

    kind: Literal["postgres"]
    query: str = Field(min_length=1)
    url_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")

    @field_validator("query")
    @classmethod
    def _params(cls, v: str) -> str:
        query_params(v)
        return v


class SyntheticSource(SourceBase):
    """The bundled churn generator: deterministic data for demos, tests and benchmarks. Its months
    run from `start` (`auto`: the `months` that end with the last full month, by the calendar); a
    run reads those up to its as_of, and the injected drifts ramp in from `drift_from_month` over
    `drift_ramp_months` (default: over the second half of the range)."""

    kind: Literal["synthetic"]
    customers: int = Field(default=2000, ge=10, le=5_000_000)
    months: int = Field(default=12, ge=2, le=120)
    seed: int = 7
    start: str = Field(default="2025-01-01", pattern=r"^(\d{4}-\d{2}-\d{2}|auto)$")
    covariate_drift: float = Field(default=0.0, ge=0.0, le=1.0)
    concept_drift: float = Field(default=0.0, ge=0.0, le=1.0)
    drift_from_month: int | None = Field(default=None, ge=0)
    drift_ramp_months: int | None = Field(default=None, ge=1)
    fault_rate: float = Field(default=0.0, ge=0.0, le=0.5)


class DatasetSource(SourceBase):
    """An example dataset that ships inside an installed package, no download
    (`pipelines.ml.datasets`): `diabetes` (regression, 442 rows) or `wine` (multiclass, 178 rows),
    dated over the `months` that end at `end` (`auto`: today)."""

    kind: Literal["dataset"]
    name: Literal["diabetes", "wine"]
    months: int = Field(default=6, ge=1, le=120)
    seed: int = 7
    end: str = Field(default="auto", pattern=r"^(\d{4}-\d{2}-\d{2}|auto)$")


Source = Annotated[
    FileSource | S3Source | PostgresSource | SyntheticSource | DatasetSource, Field(discriminator="kind")
]


# ------------------------------------------------------------------------------------ contract
class ColumnContract(Model):
    """One column of the data contract (checked by pandera)."""

    dtype: Literal["int", "float", "string", "bool", "datetime"]
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None

    @property
    def classes(self) -> list[str]:
        """The `allowed` values without repeats, in order: a multiclass label's classes."""
        return list(dict.fromkeys(self.allowed or []))

    @model_validator(mode="after")
    def _bounds(self) -> ColumnContract:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.allowed is not None and self.dtype != "string":
            raise ValueError("allowed values apply to string columns only")
        if (self.min is not None or self.max is not None) and self.dtype not in ("int", "float"):
            raise ValueError("min/max apply to int and float columns only")
        return self


class Contract(Model):
    """The data contract: types, ranges, nullability and uniqueness, plus the tolerance."""

    columns: dict[str, ColumnContract] = Field(min_length=1)
    unique: list[str] = Field(default_factory=list)
    max_bad_fraction: float = Field(default=0.01, ge=0.0, le=1.0)
    min_rows: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _unique_columns_declared(self) -> Contract:
        missing = [c for c in self.unique if c not in self.columns]
        if missing:
            raise ValueError(f"unique names undeclared columns: {missing}")
        return self


class Expectation(Model):
    """One Great Expectations expectation, by its snake_case name, e.g.
    `expect_column_mean_to_be_between`, with its keyword arguments."""

    expectation: str = Field(pattern=r"^expect_[a-z0-9_]+$")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    severity: Literal["error", "warning"] = "error"


# ------------------------------------------------------------------------- entity and features
class Entity(Model):
    """The Feast entity the pipeline predicts for, and the event-time column."""

    name: str = Field(pattern=_NAME)
    join_key: str
    timestamp: str = "event_timestamp"


class FeatureView(Model):
    """A Feast feature view over the validated snapshot."""

    name: str = Field(pattern=_NAME)
    features: list[str] = Field(min_length=1)
    ttl_days: int = Field(default=90, ge=1)


SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""The data splits, oldest data first."""


class Split(Model):
    """Fractions of the time range for train, validation and test (oldest to newest)."""

    train: float = Field(default=0.7, gt=0.0, lt=1.0)
    validation: float = Field(default=0.15, gt=0.0, lt=1.0)
    test: float = Field(default=0.15, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> Split:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1, got {total:g}")
        return self


class Features(Model):
    """The Feast side: feature views and the versioned feature service the model reads."""

    feature_service: str = Field(pattern=r"^[a-z][a-z0-9_]*_v[0-9]+$")
    views: list[FeatureView] = Field(min_length=1)
    split: Split = Split()

    @property
    def feature_names(self) -> list[str]:
        """All features of the service, in view order."""
        return [f for v in self.views for f in v.features]


LabelKind = Literal["binary", "multiclass", "regression"]

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "log_loss", "f1", "calibration_error"),
    "multiclass": ("macro_f1", "accuracy", "multi_log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
"""The metrics of each label kind (`evaluation.primary_metric` is one of its kind's)."""

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "binary": {"primary_metric": "roc_auc", "min_primary": 0.6},
    "multiclass": {"primary_metric": "macro_f1", "min_primary": None},
    "regression": {"primary_metric": "rmse", "min_primary": None},
}
"""What `evaluation` defaults to for each label kind (a regression error has the label's units,
chance in a multiclass one depends on the classes: no default bound)."""


class Label(Model):
    """The label column and what kind of target it is: `binary` (0 or 1; the model's `score` is the
    probability of 1), `multiclass` (one of the contract's `allowed` values of the label column, in
    that order; the model answers each class's probability, the most likely class and its
    probability as `score`) or `regression` (a number; `score` is the predicted value)."""

    column: str
    kind: LabelKind = "binary"


def label_problem(value: Any, kind: str, classes: list[str]) -> str | None:
    """Why a value cannot be a label of its kind (`not 0 or 1`, `not a finite number`, `not one of
    the classes [...]`), None where it can: the one judgement of validation (per row, beside the
    contract) and of `mlcycle labels load`. Pure."""
    if kind == "multiclass":
        return None if str(value) in classes else f"not one of the classes {classes}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if kind == "regression":
        return None if math.isfinite(number) else "not a finite number"
    return None if number in (0.0, 1.0) else "not 0 or 1"


def decode_label(value: float, classes: list[str]) -> Any:
    """A label as the `labels` table holds it, back as the source has it: a multiclass label's
    class name from its index (an index that is no class stays as stored, for validation to
    reject). Pure."""
    if not classes:
        return value
    index = int(value) if float(value).is_integer() else -1
    return classes[index] if 0 <= index < len(classes) else value


# ------------------------------------------------------------------------ model and training
class FloatParam(Model):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntParam(Model):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False


class CategoricalParam(Model):
    type: Literal["categorical"]
    choices: list[int | float | str] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


Family = str
"""A model family's name: one of the family table's (`pipelines.core.families`), cheapest first."""


def _space(**params: Any) -> dict[str, Param]:
    return {name: TypeAdapter(Param).validate_python(p) for name, p in params.items()}


def default_spaces() -> dict[str, dict[str, Param]]:
    """Each family's search space where the spec gives none (`model.search_spaces`): its card's."""
    return {name: _space(**family_card(name).space) for name in family_names()}


def _unknown_families(names: list[Any], auto: bool) -> None:
    unknown = [n for n in names if n not in family_names() and not (auto and n == "auto")]
    if unknown:
        raise ValueError(
            f"{', '.join(map(repr, unknown))}: not a model family; kind is one of {list(family_names())}, "
            "`auto` (all of them) or a list of families"
        )


class ModelSpec(Model):
    """The model family (or `auto`: every family in one search, or a list of families), its inputs
    and its search space."""

    kind: Family | list[Family] = Field(
        default="tabular_mlp",
        description="a model family (linear, lightgbm, tabular_mlp, or one registered beside them), "
        "`auto` (every family) or a list of families",
    )
    numeric_features: list[str] = Field(default_factory=list)
    categorical_features: list[str] = Field(default_factory=list)
    search_space: dict[str, Param] = Field(
        default_factory=dict, description="the search space of a pinned family (`kind` names one)"
    )
    search_spaces: dict[Family, dict[str, Param]] = Field(
        default_factory=dict,
        description="per family, for `kind: auto` or a list; a family not named searches its default space",
    )

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, v: Any) -> Any:
        _unknown_families(v if isinstance(v, list) else [v], auto=not isinstance(v, list))
        return v

    @property
    def families(self) -> list[Family]:
        """The families the search tries, cheapest first."""
        if self.kind == "auto":
            return list(family_names())
        if isinstance(self.kind, list):
            return [f for f in family_names() if f in self.kind]
        return [self.kind]

    def space_of(self, family: str) -> dict[str, Param]:
        """The search space of one family: a pinned family's `search_space`, else its entry of
        `search_spaces`, else its default."""
        if not isinstance(self.kind, list) and self.kind == family:
            return self.search_space
        return self.search_spaces.get(family) or default_spaces()[family]

    @model_validator(mode="after")
    def _has_inputs(self) -> ModelSpec:
        if not self.numeric_features and not self.categorical_features:
            raise ValueError("the model needs at least one feature (numeric_features, categorical_features or both)")
        both = sorted(set(self.numeric_features) & set(self.categorical_features))
        if both:
            raise ValueError(f"{both} listed as numeric and as categorical; a feature is one or the other")
        if isinstance(self.kind, list) and len(set(self.kind)) != len(self.kind):
            raise ValueError(f"kind: {self.kind} names a family twice")
        if isinstance(self.kind, list) and not self.kind:
            raise ValueError("kind: an empty list; name at least one family, or `auto`")
        pinned = self.kind if isinstance(self.kind, str) and self.kind != "auto" else None
        if self.search_space and pinned is None:
            raise ValueError(
                "search_space is the space of a pinned family; with several, use search_spaces: {family: ...}"
            )
        spaces = {**self.search_spaces, **({pinned: self.search_space} if pinned else {})}
        for family, space in spaces.items():
            tuned = family_card(family).params
            unknown = sorted(set(space) - tuned)
            if unknown:
                raise ValueError(f"unknown search-space parameters {unknown}; {family} tunes {sorted(tuned)}")
        extra = sorted(set(self.search_spaces) - set(self.families))
        if extra:
            raise ValueError(f"search_spaces names {extra}, which the search does not try ({self.families})")
        return self

    @field_validator("search_space")
    @classmethod
    def _ranges(cls, v: dict[str, Param]) -> dict[str, Param]:
        for name, p in v.items():
            if isinstance(p, FloatParam | IntParam) and p.low > p.high:
                raise ValueError(f"{name}: low ({p.low}) is greater than high ({p.high})")
        return v

    @field_validator("search_spaces")
    @classmethod
    def _family_ranges(cls, v: dict[Family, dict[str, Param]]) -> dict[Family, dict[str, Param]]:
        _unknown_families(list(v), auto=False)
        for family, space in v.items():
            for name, p in space.items():
                if isinstance(p, FloatParam | IntParam) and p.low > p.high:
                    raise ValueError(f"{family}.{name}: low ({p.low}) is greater than high ({p.high})")
        return v


class Training(Model):
    """The training budget, pruning, early stopping and checkpointing."""

    n_trials: int | None = Field(default=20, ge=1)
    timeout_s: int | None = Field(default=None, ge=1)
    time_budget_s: int | None = Field(
        default=None,
        ge=1,
        description="seconds of training the search may spend, summed over its trials and kept across retries "
        "(a killed run resumes with what is left); a trial running when it is spent stops with its best so far",
    )
    max_epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=256, ge=1)
    early_stopping_patience: int = Field(default=5, ge=1)
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    checkpoint_minutes: float = Field(default=10.0, gt=0.0)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    parallelism: int = Field(
        default=1,
        ge=1,
        le=64,
        description="trial workers: N > 1 fans the study out into N `trials` pods (each with the train step's "
        "resources, a GPU too) sharing the run's one Optuna study; `train` then exports the best",
    )
    ensemble: bool = Field(
        default=True,
        description="with several families: export the weighted average of the families' best models (weights "
        "chosen greedily on the validation rows) where it beats the best model alone there by ensemble_min_gain",
    )
    ensemble_min_gain: float = Field(
        default=0.001,
        ge=0.0,
        description="the relative gain in the primary metric on the validation rows an ensemble needs over the "
        "best model alone to be exported (0.001: 0.1 %); an ensemble costs the sum of its members' latency",
    )

    @model_validator(mode="after")
    def _has_budget(self) -> Training:
        if self.n_trials is None and self.timeout_s is None and self.time_budget_s is None:
            raise ValueError("set n_trials, time_budget_s (or timeout_s): the study needs a budget")
        return self


class Resources(Model):
    """Pod resources of a step: requests equal limits unless `limit_*` widen them."""

    cpu: str = Field(default="1", pattern=_K8S_QUANTITY)
    memory: str = Field(default="2Gi", pattern=_K8S_QUANTITY)
    gpu: int = Field(default=0, ge=0, le=16)
    gpu_resource: str | None = Field(
        default=None,
        description="the GPU's extended resource; default: the platform's (nvidia.com/gpu, or the chart's)",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="more labels, on top of the platform's GPU pool (avoid naming cluster labels)"
    )
    tolerations: list[Toleration] = Field(default_factory=list)


class StepResources(Model):
    """Resources per step; a step without its own entry uses `default`."""

    default: Resources = Resources()
    steps: dict[str, Resources] = Field(default_factory=dict)

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, v: dict[str, Resources]) -> dict[str, Resources]:
        unknown = sorted(set(v) - set(STEP_NAMES))
        if unknown:
            raise ValueError(f"unknown steps {unknown}; steps are {list(STEP_NAMES)}")
        return v

    def for_step(self, step: str) -> Resources:
        """A step's resources; a trial worker has the train step's unless it has its own."""
        if step in self.steps:
            return self.steps[step]
        if step == "trials" and "train" in self.steps:
            return self.steps["train"]
        return self.default


# ------------------------------------------------------------------ evaluation, canary, drift
class Evaluation(Model):
    """The promotion gates."""

    primary_metric: Literal[
        "roc_auc", "pr_auc", "log_loss", "f1", "macro_f1", "accuracy", "multi_log_loss", "rmse", "mae", "r2"
    ] = Field(
        default="roc_auc",
        description="default: roc_auc for a binary label, macro_f1 for a multiclass one, rmse for a regression one",
    )
    min_primary: float | None = Field(
        default=0.6,
        description="the bound the primary metric must meet (a minimum, or a maximum where lower is better); "
        "default: 0.6 for a binary label, none for a multiclass or regression one",
    )
    min_improvement: float = 0.0
    beat_baseline: bool = Field(
        default=True,
        description="the challenger's primary metric must beat a trivial model's on the same test rows: the "
        "training class prior for a binary label, the majority class for a multiclass one, the training mean "
        "for a regression one (a chance-level model is never promoted)",
    )
    bootstrap_samples: int = Field(default=500, ge=50)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    slices: list[str] = Field(default_factory=list)
    max_latency_ms_per_row: float | None = Field(default=None, gt=0.0)
    onnx_parity_tolerance: float = Field(
        default=1e-4,
        gt=0.0,
        description="the largest difference between ONNX and the model's own scores; for a regression label, "
        "relative to the largest score's magnitude",
    )


class Canary(Model):
    """The canary plan: traffic percentages with a dwell time each, and the SLOs."""

    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100], min_length=1)
    dwell_s: float = Field(default=60.0, gt=0.0)
    min_requests: int = Field(default=50, ge=1)
    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_p99_latency_ms: float = Field(default=250.0, gt=0.0)
    max_score_shift: float = Field(default=0.2, gt=0.0)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(not 0 < s <= 100 for s in v):
            raise ValueError("every step is a percentage in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError("steps must increase")
        if v[-1] != 100:
            raise ValueError("the last step must be 100")
        return v


class Serving(Model):
    """Ray Serve settings of the pipeline's application."""

    max_batch_size: int = Field(
        default=32, ge=1, description="a batch takes what queued while the previous one ran, up to this many"
    )
    version_deployments: bool = Field(
        default=False,
        description="each version in a Serve deployment of its own (its own resources, e.g. a GPU replica); "
        "default: the versions are scored in the ingress's process (one hop)",
    )
    max_payload_bytes: int = Field(default=1_048_576, ge=1024)
    max_concurrent_requests: int = Field(
        default=128,
        ge=1,
        le=4096,
        description="requests a replica holds at once (being answered or waiting for their batch); past it "
        "the endpoint answers 503 with Retry-After at once instead of queueing without bound",
    )
    replicas: int = Field(default=1, ge=1)
    gpus: float = Field(
        default=0.0,
        ge=0.0,
        le=8.0,
        description="GPUs per replica (a fraction shares one): the replica lands on a Ray GPU worker and scores with "
        "ONNX Runtime's CUDA provider; without a usable one it scores on the CPU and logs why",
    )
    request_timeout_s: float = Field(
        default=2.0, gt=0.0, description="a version that has not answered by then races the fallback version"
    )
    request_deadline_s: float = Field(default=30.0, gt=0.0, description="when the ingress gives up (503)")
    unknown_categories: Literal["refuse", "score"] = Field(
        default="refuse",
        description="a request-time categorical value outside the contract's `allowed`: `refuse` answers 422 "
        "naming the field; `score` scores it as a category the model never saw and flags the logged row "
        "(`off_contract`), so feedback never trains on it",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "batch_wait_timeout_s" in data:
            raise ValueError(
                "batch_wait_timeout_s was removed: a batch takes what queued while the previous one ran, "
                "so a lone request never waits; delete the key"
            )
        return data


class Drift(Model):
    """The drift check: its schedule, window and thresholds."""

    schedule: str | None = "@hourly"
    window_hours: float = Field(default=24.0, gt=0.0)
    min_requests: int = Field(default=500, ge=1)
    max_drift_share: float = Field(default=0.3, ge=0.0, le=1.0)
    psi_threshold: float = Field(default=0.2, gt=0.0)
    max_performance_drop: float = Field(default=0.05, ge=0.0)
    cooldown_hours: float = Field(default=24.0, ge=0.0)
    ignore: list[str] = Field(
        default_factory=list,
        description="features whose drift is expected (they grow with time, or are volatile): reported, "
        "never counted towards max_drift_share",
    )


class Embeddings(Model):
    """Vectors the model writes beside its score: the `embedding` output of its ONNX model, one
    pgvector space per model version, filled by the `embed` step and switched with the champion."""

    layer: Literal["last_hidden"] = Field(
        default="last_hidden", description="the tabular model's last hidden layer (its width: the trial's hidden_units)"
    )
    dimension: int | None = Field(
        default=None, ge=1, le=2000, description="checked against the model's embedding width when given"
    )
    distance: Literal["cosine", "l2", "inner_product"] = "cosine"
    index: Literal["hnsw", "ivfflat"] = "hnsw"
    min_recall_at_10: float = Field(
        default=0.9, gt=0.0, le=1.0, description="the index's recall@10 against exact search, on a sample: a gate"
    )
    recall_sample: int = Field(default=200, ge=10, le=10_000)
    batch_rows: int = Field(default=10_000, ge=100, description="entities embedded and copied per batch")
    retain_hours: float = Field(
        default=168.0, ge=0.0, description="how long a retired champion's space is kept before it is dropped"
    )
    drift_roc_auc: float | None = Field(
        default=None,
        gt=0.5,
        lt=1.0,
        description="the drift check reports embedding drift (how well a classifier tells served vectors from "
        "training ones, ROC AUC); above this it counts as drift and asks for retraining (default: reported only, "
        "since features expected to move, drift.ignore, move the vectors too)",
    )


# ------------------------------------------------------------------------------------ the spec
class PipelineSpec(Model):
    """One pipeline: the whole lifecycle declared in one document."""

    name: str = Field(pattern=_NAME)
    description: str = ""
    owner: str = "ml-platform"
    tags: list[str] = Field(default_factory=list)
    schedule: str | None = None
    retries: int = Field(default=2, ge=0, le=10)
    source: Source
    entity: Entity
    label: Label
    contract: Contract
    expectations: list[Expectation] = Field(default_factory=list)
    features: Features
    model: ModelSpec
    training: Training = Training()
    resources: StepResources = StepResources()
    evaluation: Evaluation = Evaluation()
    canary: Canary = Canary()
    serving: Serving = Serving()
    drift: Drift = Drift()
    embeddings: Embeddings | None = None

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


def hidden_widths(space: dict[str, Any]) -> set[Any] | range:
    """The widths the search can give the last hidden layer (the embedding's dimension). Pure."""
    p = space.get("hidden_units")
    if p is None:
        return {DEFAULT_HIDDEN_UNITS}
    if isinstance(p, CategoricalParam):
        return set(p.choices)
    if isinstance(p, IntParam):
        return {p.low} if p.low == p.high else range(p.low, p.high + 1)
    return {"a float"}


# --------------------------------------------------------------------------------------- loading
def format_validation_error(err: ValidationError, where: str) -> str:
    """One line per problem: `<file>: <dotted.path>: <message>`.

    Discriminated-union tags (e.g. `file`, `synthetic`) are dropped from the path so it names the
    field as the user wrote it.
    """
    lines = []
    for e in err.errors():
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, CrossSectionErrors):
            lines += [f"{where}: {field_path(loc)}: {msg}" for loc, msg in cause.problems]
            continue
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        lines.append(f"{where}: {field_path(loc)}: {e['msg']}")
    return "\n".join(lines)


_UNION_TAGS = {"file", "s3", "postgres", "synthetic", "float", "int", "categorical"}


def parse_spec(data: Any, where: str = "<spec>") -> PipelineSpec:
    """Validate a parsed YAML document into a `PipelineSpec`, or raise `SpecError`."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a pipeline spec is a YAML mapping, got {type(data).__name__}")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, where)) from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate one spec file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise SpecError(f"{p}: cannot read the spec: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    spec = parse_spec(data, str(p))
    if spec.name != p.stem:
        raise SpecError(f"{p}: name: '{spec.name}' must match the file name '{p.stem}'")
    return spec


def spec_paths(directory: str | Path) -> list[Path]:
    """The spec files of a directory, sorted by name."""
    return sorted(p for p in Path(directory).glob("*.yaml") if re.match(_NAME, p.stem))


def pipeline_names(settings: Settings) -> list[str]:
    """The pipelines of the settings' pipelines directory (its spec files' names), sorted."""
    return [p.stem for p in spec_paths(settings.specs_path)]


def spec_for(settings: Settings, pipeline: str) -> PipelineSpec:
    """The spec of one pipeline of the settings' pipelines directory, or an error naming the known ones."""
    path = settings.specs_path / f"{pipeline}.yaml"
    if not path.exists():
        known = pipeline_names(settings)
        raise SpecError(f"no pipeline '{pipeline}' in {settings.specs_path} (known: {known})")
    return load_spec(path)


def read_specs(directory: str | Path) -> tuple[list[PipelineSpec], list[SpecError]]:
    """Every spec of a directory: the valid ones, and apart the error of each invalid one, so one bad
    spec costs only itself (the DAG factory builds the others)."""
    specs: list[PipelineSpec] = []
    errors: list[SpecError] = []
    for path in spec_paths(directory):
        try:
            specs.append(load_spec(path))
        except SpecError as err:
            errors.append(err)
    return specs, errors


def load_specs(directory: str | Path) -> list[PipelineSpec]:
    """Every spec of a directory, or one error naming every invalid spec."""
    specs, errors = read_specs(directory)
    if errors:
        raise SpecError("\n".join(str(e) for e in errors))
    return specs


def json_schema() -> dict[str, Any]:
    """The JSON schema of a pipeline spec (for editors and `mlcycle spec schema`)."""
    return PipelineSpec.model_json_schema()
