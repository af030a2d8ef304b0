"""The ensemble: a weighted average of other families' models (each with its own preprocessing),
chosen after a search from the families' bests (`greedy_ensemble`). Not searched: the train step
builds it; the registry loads it. The payload is the members' artifacts and weights (JSON)."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.families import FamilyCard
from pipelines.ml.families.fitting import Fitting, TrainingData
from pipelines.ml.families.registry import Header, TrainedBase, load_trained, pack
from pipelines.ml.model import PROBABILITIES, FeatureEncoding, add_class_outputs

if TYPE_CHECKING:
    import onnx
    import pandas as pd

ENSEMBLE = "ensemble"
ENSEMBLE_ROUNDS = 20


def greedy_ensemble(
    scores: dict[str, np.ndarray],
    y: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    higher: bool,
    rounds: int = ENSEMBLE_ROUNDS,
) -> tuple[dict[str, float], float]:
    """Ensemble selection (Caruana et al., 2004): `rounds` times, add (with replacement) the model
    whose score most improves the average's metric on the validation rows. Returns the weights
    (the share of rounds each model was picked) and the average's metric. Pure."""
    names = sorted(scores)
    picks: dict[str, int] = dict.fromkeys(names, 0)
    total = np.zeros(np.shape(scores[names[0]]), dtype=np.float64)  # [n], or [n, K] probabilities
    value = math.nan
    for n in range(1, rounds + 1):
        tried = {name: metric(y, (total + scores[name]) / n) for name in names}
        best = max(tried, key=lambda k: tried[k]) if higher else min(tried, key=lambda k: tried[k])
        picks[best] += 1
        total += scores[best]
        value = tried[best]
    return {name: count / rounds for name, count in picks.items() if count}, float(value)


def pack_ensemble(
    enc: FeatureEncoding, members: list[tuple[bytes, float]], params: dict[str, Any], classes: list[str] | None = None
) -> bytes:
    """Member artifacts and their weights as one artifact. Pure."""
    payload = json.dumps([{"artifact": base64.b64encode(blob).decode(), "weight": w} for blob, w in members])
    return pack(ENSEMBLE, enc, params, payload.encode(), classes)


@dataclass
class EnsembleModel(TrainedBase):
    """A weighted average of other families' models (each with its own preprocessing)."""

    members: list[Any]
    weights: list[float]

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return np.asarray(sum(w * m.predict(df) for m, w in zip(self.members, self.weights, strict=True)))

    def to_onnx(self, embedding: bool = False) -> onnx.ModelProto:
        """One graph: each member's graph under its own prefix, fed the same raw columns, and
        `score` the weighted sum of theirs (a multiclass model's `probabilities`, then its class
        outputs)."""
        import onnx
        from onnx import TensorProto, helper

        graphs = [m.to_onnx() for m in self.members]
        inputs = list(graphs[0].graph.input)
        nodes: list[onnx.NodeProto] = []
        initializers: list[onnx.TensorProto] = []
        opsets: dict[str, int] = {}
        weighted = []
        for i, (graph, weight) in enumerate(zip(graphs, self.weights, strict=True)):
            for o in graph.opset_import:
                opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
            member = onnx.compose.add_prefix(graph, f"m{i}/")
            nodes += [helper.make_node("Identity", [v.name], [f"m{i}/{v.name}"]) for v in inputs]
            nodes += list(member.graph.node)
            initializers += list(member.graph.initializer)
            initializers.append(helper.make_tensor(f"weight_{i}", TensorProto.FLOAT, [], [weight]))
            summed = PROBABILITIES if self.classes else "score"
            nodes.append(helper.make_node("Mul", [f"m{i}/{summed}", f"weight_{i}"], [f"weighted_{i}"]))
            weighted.append(f"weighted_{i}")
        nodes.append(helper.make_node("Sum", weighted, [summed], name=summed))
        shape: list[str | int | None] = ["n", len(self.classes)] if self.classes else ["n"]
        graph = helper.make_graph(
            nodes,
            "mlcycle_ensemble",
            inputs,
            [helper.make_tensor_value_info(summed, TensorProto.FLOAT, shape)],
            initializer=initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())])
        if self.classes:
            add_class_outputs(model, self.classes)
        model.doc_string = "mlcycle ensemble: " + ", ".join(
            f"{m.family} x{w:.2f}" for m, w in zip(self.members, self.weights, strict=True)
        )
        onnx.checker.check_model(model)
        return model


class Ensemble:
    card: FamilyCard = FamilyCard(ENSEMBLE, frozenset({"members"}), {})

    def fit(self, data: TrainingData, params: dict[str, Any], fitting: Fitting) -> tuple[float, bytes]:
        raise NotImplementedError("an ensemble is built from a search's bests (greedy_ensemble), not searched")

    def load(self, header: Header, payload: bytes) -> EnsembleModel:
        members = json.loads(payload)
        return EnsembleModel(
            header.family,
            header.enc,
            header.params,
            [load_trained(base64.b64decode(m["artifact"])) for m in members],
            [float(m["weight"]) for m in members],
            classes=header.classes,
        )


FAMILY = Ensemble()
