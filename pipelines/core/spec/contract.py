"""What the data is: its contract (types, ranges, nullability, uniqueness), distribution-level
expectations, the Feast entity and feature service, the time splits, and the label with the metrics
of its kind."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from pipelines.core.spec.base import _NAME, Model


class ColumnContract(Model):
    """One column of the data contract (checked by pandera)."""

    dtype: Literal["int", "float", "string", "bool", "datetime"] = Field(
        description="the column's type; a value that does not convert quarantines its row"
    )
    nullable: bool = Field(default=False, description="whether a null is allowed; default: a null quarantines its row")
    min: float | None = Field(
        default=None, description="the smallest allowed value, inclusive (int and float columns); default: none"
    )
    max: float | None = Field(
        default=None, description="the largest allowed value, inclusive (int and float columns); default: none"
    )
    allowed: list[str] | None = Field(
        default=None,
        description="the only values allowed (string columns); a multiclass label's classes, in this order; "
        "default: any",
    )

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

    columns: dict[str, ColumnContract] = Field(
        min_length=1, description="every column the pipeline reads, by name; a missing column fails validation"
    )
    unique: list[str] = Field(
        default_factory=list,
        description="columns whose values together are a key: a repeat of an earlier row's key is quarantined",
    )
    max_bad_fraction: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="the share of quarantined rows above which the validate step fails (0.01: 1 %)",
    )
    min_rows: int = Field(default=1, ge=1, description="the fewest valid rows a run may train on")

    @model_validator(mode="after")
    def _unique_columns_declared(self) -> Contract:
        missing = [c for c in self.unique if c not in self.columns]
        if missing:
            raise ValueError(f"unique names undeclared columns: {missing}")
        return self


class Expectation(Model):
    """One Great Expectations expectation, by its snake_case name, e.g.
    `expect_column_mean_to_be_between`, with its keyword arguments."""

    expectation: str = Field(
        pattern=r"^expect_[a-z0-9_]+$",
        description="the expectation's snake_case name, e.g. `expect_column_mean_to_be_between`",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="its keyword arguments, e.g. `{column: tenure_months, min_value: 1}`"
    )
    severity: Literal["error", "warning"] = Field(
        default="error", description="`error`: a failed expectation fails the validate step; `warning`: reported only"
    )


# ------------------------------------------------------------------------- entity and features
class Entity(Model):
    """The Feast entity the pipeline predicts for, and the event-time column."""

    name: str = Field(pattern=_NAME, description="the Feast entity's name (lowercase, digits, underscores)")
    join_key: str = Field(description="the contract column that identifies one entity, e.g. `customer_id`")
    timestamp: str = Field(
        default="event_timestamp",
        description="the contract's datetime column of each row's event time: windows and splits go by it",
    )


class FeatureView(Model):
    """A Feast feature view over the validated snapshot."""

    name: str = Field(pattern=_NAME, description="the feature view's name (lowercase, digits, underscores)")
    features: list[str] = Field(min_length=1, description="contract columns the view serves, in this order")
    ttl_days: int = Field(
        default=90, ge=1, description="days a feature value stays valid for point-in-time joins and online reads"
    )


SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""The data splits, oldest data first."""


class Split(Model):
    """Fractions of the time range for train, validation and test (oldest to newest)."""

    train: float = Field(default=0.7, gt=0.0, lt=1.0, description="the oldest rows' share: what the models fit on")
    validation: float = Field(
        default=0.15, gt=0.0, lt=1.0, description="the next rows' share: early stopping, trial scores, ensembles"
    )
    test: float = Field(
        default=0.15, gt=0.0, lt=1.0, description="the newest rows' share: the evaluate step's gates, never trained on"
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> Split:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1, got {total:g}")
        return self


class Features(Model):
    """The Feast side: feature views and the versioned feature service the model reads."""

    feature_service: str = Field(
        pattern=r"^[a-z][a-z0-9_]*_v[0-9]+$",
        description="the versioned Feast feature service the model reads, e.g. `churn_features_v1`",
    )
    views: list[FeatureView] = Field(min_length=1, description="the feature views of the service")
    split: Split = Field(
        default=Split(), description="how the training set is split by time; the three shares sum to 1"
    )

    @property
    def feature_names(self) -> list[str]:
        """All features of the service, in view order."""
        return [f for v in self.views for f in v.features]


LabelKind = Literal["binary", "multiclass", "regression"]

BinaryMetric = Literal["roc_auc", "pr_auc", "log_loss", "f1", "calibration_error"]
MulticlassMetric = Literal["macro_f1", "accuracy", "multi_log_loss"]
RegressionMetric = Literal["rmse", "mae", "r2"]
MetricName = Literal[BinaryMetric, MulticlassMetric, RegressionMetric]
"""Every metric of every label kind: what `evaluation.primary_metric` may name."""

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": get_args(BinaryMetric),
    "multiclass": get_args(MulticlassMetric),
    "regression": get_args(RegressionMetric),
}
"""The metrics of each label kind (`evaluation.primary_metric` is one of its kind's), read from the
`Literal` types above: the names are written once."""

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "binary": {},  # Evaluation's own defaults: unset, `Evaluation.for_positive_rate` may choose pr_auc
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

    column: str = Field(description="the contract column the model predicts")
    kind: LabelKind = Field(
        default="binary",
        description="`binary` (0 or 1), `multiclass` (one of the column's `allowed` values) or `regression` "
        "(a number); sets the metrics and the evaluation defaults",
    )
