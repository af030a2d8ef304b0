"""The model: its families, their parameters and default search spaces, the spec's model section
and the training budget."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from pipelines.core.families import DEFAULT_HIDDEN_UNITS, family_names
from pipelines.core.families import card as family_card
from pipelines.core.spec.base import Model


class FloatParam(Model):
    """A real parameter searched between two bounds."""

    type: Literal["float"] = Field(description="`float`: a real number between low and high")
    low: float = Field(description="the smallest value tried, inclusive")
    high: float = Field(description="the largest value tried, inclusive")
    log: bool = Field(default=False, description="sample on a log scale (for rates and penalties spanning decades)")


class IntParam(Model):
    """An integer parameter searched between two bounds."""

    type: Literal["int"] = Field(description="`int`: a whole number between low and high")
    low: int = Field(description="the smallest value tried, inclusive")
    high: int = Field(description="the largest value tried, inclusive")
    log: bool = Field(default=False, description="sample on a log scale (small values tried more often)")


class CategoricalParam(Model):
    """A parameter searched over a list of values."""

    type: Literal["categorical"] = Field(description="`categorical`: one of the listed choices")
    choices: list[int | float | str] = Field(min_length=1, description="the values tried")


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
        description="the model family (`linear`, `lightgbm`, `tabular_mlp`, or one registered beside them), a "
        "list of them, or `auto`: every family in one search, cheapest first",
    )
    numeric_features: list[str] = Field(
        default_factory=list, description="features the model reads as numbers (each a feature of a view)"
    )
    categorical_features: list[str] = Field(
        default_factory=list, description="features the model reads as categories (each a feature of a view)"
    )
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

    n_trials: int | None = Field(
        default=20, ge=1, description="trials the search runs (a retry counts those it already has); null: no limit"
    )
    timeout_s: int | None = Field(
        default=None, ge=1, description="wall-clock seconds one attempt of the search may run; default: no limit"
    )
    time_budget_s: int | None = Field(
        default=None,
        ge=1,
        description="seconds of training the search may spend, summed over its trials and kept across retries "
        "(a killed run resumes with what is left); a trial running when it is spent stops with its best so far",
    )
    max_epochs: int = Field(default=30, ge=1, description="the most passes over the training rows an MLP trial makes")
    batch_size: int = Field(default=256, ge=1, description="rows per gradient step of an MLP trial")
    early_stopping_patience: int = Field(
        default=5,
        ge=1,
        description="validation reports without improvement before a trial stops (an epoch for the MLP, "
        "a few boosting rounds for LightGBM); it keeps its best",
    )
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = Field(
        default="median",
        description="the Optuna pruner that stops unpromising trials early, against trials of the same family; "
        "`none`: every trial runs to its end",
    )
    checkpoint_minutes: float = Field(
        default=10.0,
        gt=0.0,
        description="minutes between checkpoints of a running trial (and one at its end): a retried task resumes there",
    )
    seed: int = Field(default=42, description="seeds the sampler, the models and the bootstrap: a rerun repeats itself")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="where the MLP trains: `auto` a GPU when torch sees one, else the CPU; `cuda` fails without one",
    )
    parallelism: int = Field(
        default=1,
        ge=1,
        le=64,
        description="trial workers: N > 1 fans the study out into N `trials` pods (each with the train step's "
        "resources, a GPU too) sharing the run's one Optuna study; `train` then exports the best",
    )
    class_weight: Literal["auto", "balanced", "none"] = Field(
        default="auto",
        description="class weights of a classification label's training rows: `balanced` weighs each class by "
        "n / (K * its rows), so every class counts the same; `auto` lets the search try both where the label "
        "is imbalanced (`imbalance_rate`; the parameter `class_weight` of every family); `none` never weighs",
    )
    imbalance_rate: float = Field(
        default=0.1,
        gt=0.0,
        lt=0.5,
        description="a label is imbalanced where its rarest class's share of the training rows, scaled to two "
        "classes (share * K / 2: a binary label's positive rate), is at most this (`class_weight: auto` "
        "searches weights; a binary label whose positive rate is at most this is judged by pr_auc where "
        "`evaluation.primary_metric` is not set)",
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
