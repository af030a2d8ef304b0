"""The model families a spec may name: each one's card (its name, the parameters it tunes, its
default search space, whether it gives embeddings), in search order (cheapest first: an `auto`
search tries them in this order). Pure data.

The spec validates `model.kind` and the search spaces against this table where no machine-learning
library is installed (Airflow parses specs, the CLI checks them), so the built-in families' cards
live here, below `pipelines.ml`; each family's code is a module of `pipelines.ml.families`, whose
registry reads its card from here. A family from outside (a test's, a plugin's) brings its own card:
`pipelines.ml.families.register` adds it to this table and its code to the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FamilyCard:
    """What the spec knows of a model family."""

    name: str
    params: frozenset[str]  # what it tunes (a search space names only these)
    space: Mapping[str, Mapping[str, Any]]  # the default search space, as a spec writes one
    embeddings: bool = False  # its last hidden layer is an entity's embedding


DEFAULT_HIDDEN_UNITS = 64
"""The MLP's hidden width where a search space does not tune `hidden_units`."""

LINEAR = FamilyCard(
    "linear",
    frozenset({"alpha", "l1_ratio"}),
    {
        "alpha": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
        "l1_ratio": {"type": "float", "low": 0.0, "high": 1.0},
    },
)
LIGHTGBM = FamilyCard(
    "lightgbm",
    frozenset({"learning_rate", "num_leaves", "min_child_samples", "feature_fraction", "lambda_l2", "max_rounds"}),
    {
        "learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
        "num_leaves": {"type": "int", "low": 8, "high": 128, "log": True},
        "min_child_samples": {"type": "int", "low": 5, "high": 100, "log": True},
        "feature_fraction": {"type": "float", "low": 0.5, "high": 1.0},
        "lambda_l2": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
    },
)
TABULAR_MLP = FamilyCard(
    "tabular_mlp",
    frozenset({"learning_rate", "hidden_units", "layers", "dropout", "weight_decay"}),
    {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "hidden_units": {"type": "categorical", "choices": [32, 64, 128]},
        "layers": {"type": "int", "low": 1, "high": 3},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    },
    embeddings=True,
)

_CARDS: dict[str, FamilyCard] = {c.name: c for c in (LINEAR, LIGHTGBM, TABULAR_MLP)}


def family_names() -> tuple[str, ...]:
    """The families a spec may name, cheapest first."""
    return tuple(_CARDS)


def card(name: str) -> FamilyCard:
    return _CARDS[name]


def add_card(card: FamilyCard) -> None:
    """A family from outside the built-in ones, searched after them (`kind: auto` finds it)."""
    if _CARDS.get(card.name, card) != card:
        raise ValueError(f"a model family named {card.name!r} is already registered with another card")
    _CARDS[card.name] = card


def remove_card(name: str) -> None:
    """Forget a family added with `add_card` (a built-in one stays)."""
    if name not in (LINEAR.name, LIGHTGBM.name, TABULAR_MLP.name):
        _CARDS.pop(name, None)
