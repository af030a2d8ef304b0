"""What a predict request may carry: the pipeline's data contract, applied to request-time features.

The ingress judges every instance before it is routed, so nothing that breaks the contract is
scored or reaches the request log as `ok` (and, through `source.feedback`, the training data):

* a feature the model does not take is refused by name;
* a numeric feature takes a JSON number only (not a string such as `"NaN"`, not a boolean),
  finite, integral for an `int` column, inside the column's `min`/`max`;
* a categorical feature takes a string only, one of the column's `allowed` values; with
  `serving.unknown_categories: score` an unknown one is scored as unseen (the model's code for a
  category it never saw) and the instance is flagged (`off_contract`), so feedback never trains on it;
* `null` is taken for a `nullable` column (scored as the model was trained to score a missing
  value) and refused for any other;
* text (the entity id, categories) is bounded in length and must be storable (no NUL character,
  no lone UTF-16 surrogate).

A feature left out of an instance is read from the online store, as before. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

MAX_TEXT = 256
"""The longest entity id or category value taken (characters)."""
INT64 = 2**63
UnknownCategories = Literal["refuse", "score"]


@dataclass(frozen=True)
class FeatureRule:
    """What one request-time feature may be."""

    name: str
    kind: Literal["number", "integer", "category"]
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    allowed: frozenset[str] | None = None


@dataclass(frozen=True)
class Judged:
    """An instance that passed: its features as the model will take them, and why it is off the
    contract though scored (an unknown category under `unknown_categories: score`), or None."""

    features: dict[str, Any]
    off_contract: str | None = None


@dataclass(frozen=True)
class Problem:
    field: str
    message: str


def text_problem(value: str) -> str | None:
    """Why a string cannot be taken (too long, not storable), or None. Pure."""
    if len(value) > MAX_TEXT:
        return f"longer than {MAX_TEXT} characters ({len(value)})"
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    return None


def entity_problem(entity_id: Any) -> str | None:
    """Why an entity id cannot be taken, or None: a string (bounded, storable) or a 64-bit integer. Pure."""
    if isinstance(entity_id, bool) or not isinstance(entity_id, str | int):
        return f"must be a string or an integer, got {type(entity_id).__name__}"
    if isinstance(entity_id, int):
        return None if -INT64 <= entity_id < INT64 else "an integer outside the 64-bit range"
    if not entity_id:
        return "must not be empty"
    return text_problem(entity_id)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(rule: FeatureRule, value: Any) -> tuple[Any, str | None]:
    kind = type(value)  # the common case (an exact float or int) decides on the type alone
    if kind is not float and kind is not int and (isinstance(value, bool) or not isinstance(value, int | float)):
        return None, f"not a number ({_shown(value)})"
    try:
        number = float(value)
    except OverflowError:
        return None, "not a finite number (too large)"
    if not math.isfinite(number):
        return None, f"not a finite number ({value})"
    if rule.kind == "integer" and not number.is_integer():
        return None, f"not an integer ({value})"
    if rule.low is not None and number < rule.low:
        return None, f"{value} is below the minimum {rule.low:g}"
    if rule.high is not None and number > rule.high:
        return None, f"{value} is above the maximum {rule.high:g}"
    return value, None


def judge_value(rule: FeatureRule, value: Any, unknown: UnknownCategories) -> tuple[Any, str | None, str | None]:
    """`(value to score, problem, off-contract note)` for one feature's value. Pure."""
    if value is None:
        if rule.nullable:
            return None, None, None
        return None, "null, but the contract does not allow nulls for this feature", None
    if rule.kind != "category":
        scored, problem = _number(rule, value)
        return scored, problem, None
    if not isinstance(value, str):
        return None, f"not a string ({_shown(value)})", None
    problem = text_problem(value)
    if problem:
        return None, problem, None
    if rule.allowed is not None and value not in rule.allowed:
        if unknown == "score":
            return value, None, f"{rule.name}: unknown category {_shown(value)}"
        return None, f"{_shown(value)} is not one of {', '.join(sorted(rule.allowed))}", None
    return value, None, None


@dataclass(frozen=True)
class RequestContract:
    """The rules of a pipeline's request-time features."""

    rules: Mapping[str, FeatureRule]
    unknown_categories: UnknownCategories = "refuse"

    def judge(self, index: int, features: Mapping[str, Any]) -> Judged | list[Problem]:
        """An instance's features judged: `Judged`, or every problem with its field. Pure."""
        problems: list[Problem] = []
        out: dict[str, Any] = {}
        notes: list[str] = []
        for name, value in features.items():
            rule = self.rules.get(name)
            if rule is None:
                known = ", ".join(sorted(self.rules))
                where = f"instances[{index}].features.{name}"
                problems.append(Problem(where, f"{_shown(name)[:60]}: unknown feature (the model takes {known})"))
                continue
            scored, problem, note = judge_value(rule, value, self.unknown_categories)
            if problem:
                problems.append(Problem(f"instances[{index}].features.{name}", f"{name}: {problem}"))
                continue
            out[name] = scored
            if note:
                notes.append(note)
        if problems:
            return problems
        return Judged(out, "; ".join(notes) or None)

    @property
    def nullable(self) -> frozenset[str]:
        return frozenset(name for name, rule in self.rules.items() if rule.nullable)


def rule_for(name: str, column: Any | None, categorical: bool) -> FeatureRule:
    """A feature's rule from its contract column (`ColumnContract`; None when the contract does not
    list it: then only its kind is known). Pure."""
    if categorical:
        allowed = frozenset(column.classes) if column is not None and column.allowed else None
        return FeatureRule(name, "category", bool(column and column.nullable), allowed=allowed)
    if column is None:
        return FeatureRule(name, "number")
    kind: Literal["number", "integer"] = "integer" if column.dtype in ("int", "bool") else "number"
    low, high = column.min, column.max
    if column.dtype == "bool":
        low, high = 0.0, 1.0
    return FeatureRule(name, kind, column.nullable, low, high)


def request_contract(spec: Any, features: Iterable[str]) -> RequestContract:
    """The request contract of a pipeline (`PipelineSpec`) for the features its model takes. Pure."""
    categorical = set(spec.model.categorical_features)
    columns = spec.contract.columns
    rules = {name: rule_for(name, columns.get(name), name in categorical) for name in features}
    return RequestContract(rules, spec.serving.unknown_categories)


def contract_args(contract: RequestContract) -> dict[str, dict[str, Any]]:
    """The contract as the application's arguments (`ServingArgs.contract`). Pure."""
    return {
        r.name: {
            "kind": r.kind,
            "nullable": r.nullable,
            "min": r.low,
            "max": r.high,
            "allowed": sorted(r.allowed) if r.allowed is not None else None,
        }
        for r in contract.rules.values()
    }


def contract_from_args(rules: Mapping[str, Any], unknown: UnknownCategories) -> RequestContract:
    """The contract from the application's arguments (`FeatureRuleArgs` each). Pure."""
    return RequestContract(
        {
            name: FeatureRule(
                name,
                r.kind,
                r.nullable,
                r.min,
                r.max,
                frozenset(r.allowed) if r.allowed is not None else None,
            )
            for name, r in rules.items()
        },
        unknown,
    )
