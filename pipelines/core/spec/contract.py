"""What the data is: its contract (types, ranges, nullability, uniqueness), distribution-level
expectations, the Feast entity and feature service, the time splits, and the label with the metrics
of its kind."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from pipelines.core.spec.base import _NAME, Model


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
