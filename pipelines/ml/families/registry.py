"""The model-family registry: one protocol (`ModelFamily`) that every family implements, the
trained model it loads (`Trained`), the artifact every family's model travels as (`pack`), and
the table from family names to families (`register`, `family`, `load_trained`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipelines.core.errors import ArtifactRefused
from pipelines.core.families import FamilyCard, add_card, remove_card
from pipelines.ml.families.fitting import Fitting, TrainingData
from pipelines.ml.model import FeatureEncoding

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import pandas as pd


class Trained(Protocol):
    """A trained model of any family, as `ModelFamily.load` gives it back."""

    family: str
    enc: FeatureEncoding
    params: dict[str, Any]
    classes: list[str]

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """The scores natively (not through ONNX): probabilities of the positive class, values, or
        a multiclass model's `[n, K]` probabilities."""

    def embeddings(self, df: pd.DataFrame) -> np.ndarray | None:
        """The rows' embeddings natively, None for a family without them."""

    def to_onnx(self, embedding: bool = False) -> onnx.ModelProto:
        """Raw columns in (`pipelines.ml.model.raw_front`), `score` out (and `embedding`, where
        the family has it; a multiclass model's `probabilities` and `class`)."""


class ModelFamily(Protocol):
    """A model family. `card` is what the spec knows of it (`name`, `params`, the default `space`,
    `embeddings`: whether its trained model gives them); `fit` trains one trial and returns its best
    validation value and its artifact (`pack`); `load` reads an artifact's payload back into a
    `Trained`, which predicts, embeds and exports ONNX (`Trained.to_onnx`)."""

    card: FamilyCard

    def fit(self, data: TrainingData, params: dict[str, Any], fitting: Fitting) -> tuple[float, bytes]:
        """Train to early stopping (`Fitting.stopper`), reporting every step through
        `fitting.report` (the pruner), stopping at `fitting.deadline`; raise `TrialFailed` where a
        figure is not finite."""

    def load(self, header: Header, payload: bytes) -> Trained:
        """The trained model of an artifact this family packed."""


@dataclass(frozen=True)
class Header:
    """An artifact's header: whose it is, and what every family's model carries."""

    family: str
    enc: FeatureEncoding
    params: dict[str, Any]
    classes: list[str]


@dataclass
class TrainedBase:
    """What every family's trained model carries; no embeddings unless the family has them."""

    family: str
    enc: FeatureEncoding
    params: dict[str, Any]
    classes: list[str] = field(default_factory=list, kw_only=True)  # a multiclass model's, in output order

    def embeddings(self, df: pd.DataFrame) -> np.ndarray | None:
        return None


def pack(
    family: str, enc: FeatureEncoding, params: dict[str, Any], payload: bytes, classes: list[str] | None = None
) -> bytes:
    """A trained model as one self-describing artifact (with a multiclass model's class names). Pure."""
    header = json.dumps(
        {"family": family, "encoding": enc.to_dict(), "params": params, "classes": classes or []}, default=str
    )
    return header.encode() + b"\n" + payload


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily, searched: bool = True) -> ModelFamily:
    """Add a family: its code to this registry and (`searched`) its card to the spec's family
    table, so `model.kind` may name it and `auto` tries it. Returns the family."""
    _FAMILIES[family.card.name] = family
    if searched:
        add_card(family.card)
    return family


def unregister(name: str) -> None:
    """Forget a family added with `register` (a test's)."""
    _FAMILIES.pop(name, None)
    remove_card(name)


def family(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; the registry has {sorted(_FAMILIES)}") from None


def families() -> Mapping[str, ModelFamily]:
    return dict(_FAMILIES)


def load_trained(blob: bytes, source: str = "the artifact") -> Trained:
    """Any family's artifact back as its trained model. Every family's payload is data only
    (tensors, skops, LightGBM's text, JSON): one that could run code is refused (`ArtifactRefused`,
    naming `source`: the artifact's file)."""
    header_bytes, payload = blob.split(b"\n", 1)
    try:
        raw = json.loads(header_bytes)
    except ValueError:
        raise ArtifactRefused(f"{source}: not a model artifact (no JSON header): refused") from None
    header = Header(
        raw["family"], FeatureEncoding.from_dict(raw["encoding"]), raw["params"], list(raw.get("classes") or [])
    )
    if header.family not in _FAMILIES:
        raise ValueError(f"unknown model family {header.family!r} in {source}")
    try:
        return _FAMILIES[header.family].load(header, payload)
    except ArtifactRefused as err:
        raise ArtifactRefused(f"{source}: {err}") from None
