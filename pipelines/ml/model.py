"""The tabular model: preprocessing inside the module, exported to ONNX that takes raw columns.

* `FeatureEncoding` (pure, fitted on the training split): per numeric feature its mean, standard
  deviation and median (of the values present); the numeric features that get a missing-indicator
  input (`missing`: those the contract lets be null, and any with a null in training); per
  categorical feature its vocabulary (index 0 is the unknown bucket; never a null token).
* `TabularMLP` (torch): the statistics are buffers, each categorical feature an embedding;
  `forward(numeric, codes)` returns logits. A missing numeric value (NaN) becomes the training
  median, and each feature of `missing` adds an input that is 1 where the value was missing, inside
  the module, so the exported graph does the same.
* `to_onnx()`: the exported graph takes one input per raw feature column (`float` for numeric,
  `string` for categorical, shape `[N, 1]`), maps strings to codes with `ai.onnx.ml.LabelEncoder`
  (unknown -> 0) and returns the churn probability `score`. Nothing else is needed at serving time,
  so training and serving cannot skew.

Missing values on the wire (every family's graph, `raw_front`): a null numeric value is NaN in its
float input, a null category the empty string `""` in its string input (the unknown code 0).
Offline, `encode` and `session_feed` map nulls the same way (`category_strings`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.errors import ArtifactRefused
from pipelines.core.families import DEFAULT_HIDDEN_UNITS

if TYPE_CHECKING:
    import onnx
    import pandas as pd
    import torch


NULL_CATEGORY = ""
"""A null category as every graph takes it: the empty string (the unknown code 0)."""
NULL_TOKENS = frozenset({NULL_CATEGORY, "nan", "NaN", "None", "<NA>", "NaT"})
"""The strings a null turns into on its way through pandas or numpy: never a category of a vocabulary."""


@dataclass(frozen=True)
class FeatureEncoding:
    numeric: list[str]
    categorical: list[str]
    means: list[float]
    stds: list[float]
    vocab: dict[str, list[str]]
    medians: list[float] = field(default_factory=list)  # per numeric feature: what a missing value becomes
    missing: list[str] = field(default_factory=list)  # the numeric features with a missing-indicator input

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureEncoding:
        # an encoding saved before medians existed imputes nothing it ever saw: its means stand in
        return cls(**{"medians": list(d.get("means", [])), "missing": [], **d})

    @property
    def fill(self) -> list[float]:
        """What a missing value of each numeric feature becomes: its training median."""
        return self.medians if len(self.medians) == len(self.numeric) else self.means


def finite_or(value: float, default: float) -> float:
    """`value`, or `default` where it is NaN or infinite (a statistic of a column with no values). Pure."""
    return value if np.isfinite(value) else default


def category_strings(values: Iterable[Any]) -> np.ndarray:
    """Categorical values as every family reads them (an object array of `str`): a null (None,
    NaN, pandas' NA) is the empty string, anything else its `str`. Pure."""
    import pandas as pd

    column = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    if isinstance(column.dtype, pd.StringDtype) and column.dtype.storage == "pyarrow":  # batch chunks
        import pyarrow as pa
        import pyarrow.compute as pc

        text: np.ndarray = pc.fill_null(pa.array(column.array), NULL_CATEGORY).to_numpy(zero_copy_only=False)
        return text
    out: np.ndarray = column.astype(object).astype(str).to_numpy(dtype=object)
    out[column.isna().to_numpy()] = NULL_CATEGORY
    return out


def numeric_values(df: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Numeric columns as float32, a null (None, pandas' NA) as NaN. Pure."""
    if not columns:
        return np.zeros((len(df), 0), np.float32)
    return np.asarray(df[columns].astype("float64").to_numpy(dtype=np.float32))


def fit_encoding(
    df: pd.DataFrame, numeric: list[str], categorical: list[str], nullable: Iterable[str] = ()
) -> FeatureEncoding:
    """Statistics and vocabularies of the training split, of the values present (a null is no
    category). A missing-indicator input for each numeric feature in `nullable` (the contract's)
    or with a null in training. Pure."""
    values = numeric_values(df, numeric).astype(np.float64)
    present = [v[~np.isnan(v)] for v in values.T]
    means = [finite_or(float(v.mean()), 0.0) if len(v) else 0.0 for v in present]
    stds = [finite_or(float(v.std()), 1.0) or 1.0 if len(v) else 1.0 for v in present]
    medians = [finite_or(float(np.median(v)), 0.0) if len(v) else 0.0 for v in present]
    allowed = set(nullable)
    missing = [c for c, v in zip(numeric, values.T, strict=True) if c in allowed or bool(np.isnan(v).any())]
    vocab = {c: sorted(set(category_strings(df[c])) - NULL_TOKENS) for c in categorical}
    return FeatureEncoding(list(numeric), list(categorical), means, stds, vocab, medians, missing)


def encode(df: pd.DataFrame, enc: FeatureEncoding) -> tuple[np.ndarray, np.ndarray]:
    """Raw numeric values (float32, NaN where missing: imputed and scaled inside the model) and
    category codes (int64; 0 for an unseen or null category). Pure."""
    import pandas as pd

    numeric = numeric_values(df, enc.numeric)
    codes = np.zeros((len(df), len(enc.categorical)), dtype=np.int64)
    for j, c in enumerate(enc.categorical):
        index = {v: i + 1 for i, v in enumerate(enc.vocab[c])}
        codes[:, j] = pd.Series(category_strings(df[c])).map(index).fillna(0).to_numpy(dtype=np.int64)
    return numeric, codes


def select_device(preference: str = "auto") -> str:
    """`cuda` when asked for or available (auto), else `cpu`; asking for CUDA without one fails."""
    import torch

    if preference == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if preference == "cuda":
        raise RuntimeError("training.device is 'cuda' but torch sees no CUDA device")
    return "cpu"


def onnx_providers(available: list[str]) -> list[str]:
    """The ONNX Runtime execution providers to use, CUDA first when present. Pure."""
    order = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in order if p in available] or ["CPUExecutionProvider"]


def build_module(
    enc: FeatureEncoding,
    hidden_units: int = DEFAULT_HIDDEN_UNITS,
    layers: int = 2,
    dropout: float = 0.1,
    target: tuple[float, float] | None = None,
    classes: int = 0,
) -> torch.nn.Module:
    """The MLP. A missing numeric value (NaN) becomes its training median, and a feature of
    `enc.missing` adds a missing-indicator input (both in the module, so in its ONNX graph). Its
    head is a logit (a binary label), with `target` (a regression label's mean
    and standard deviation in training) the label standardised, or with `classes` (a multiclass
    label's number of classes) one logit per class; `output` turns the head into the score: the
    probability, the value in the label's units, or the classes' probabilities (`[n, classes]`)."""
    import torch
    from torch import nn

    class TabularMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(enc.means, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(enc.stds, dtype=torch.float32))
            # from the encoding (which the checkpoint carries), not the state dict: older
            # checkpoints load unchanged
            self.register_buffer("median", torch.tensor(enc.fill, dtype=torch.float32), persistent=False)
            flagged = [enc.numeric.index(c) for c in enc.missing]
            self.register_buffer("flagged", torch.tensor(flagged, dtype=torch.long), persistent=False)
            self.regression = target is not None
            if target is not None:
                self.register_buffer("target_mean", torch.tensor(float(target[0])))
                self.register_buffer("target_std", torch.tensor(float(target[1])))
            self.classes = classes
            if classes:
                self.register_buffer("class_count", torch.tensor(classes))
            dims = [min(8, (len(enc.vocab[c]) + 2) // 2 + 1) for c in enc.categorical]
            self.embeddings = nn.ModuleList(
                nn.Embedding(len(enc.vocab[c]) + 1, dim) for c, dim in zip(enc.categorical, dims, strict=True)
            )
            width = len(enc.numeric) + len(enc.missing) + sum(dims)
            blocks: list[nn.Module] = []
            for _ in range(layers):
                blocks += [nn.Linear(width, hidden_units), nn.ReLU(), nn.Dropout(dropout)]
                width = hidden_units
            blocks.append(nn.Linear(width, classes or 1))
            self.mlp = nn.Sequential(*blocks)

        def hidden(self, numeric: torch.Tensor | None, codes: torch.Tensor | None) -> torch.Tensor:
            """The last hidden layer before its ReLU: the entity's embedding (`[n, hidden_units]`;
            before the ReLU, so that no entity's vector is all zeros)."""
            parts = []
            if enc.numeric and numeric is not None:
                absent = torch.isnan(numeric)
                filled = torch.where(absent, self.get_buffer("median"), numeric)
                parts.append((filled - self.get_buffer("mean")) / self.get_buffer("std"))
                if enc.missing:  # 1 where the value was missing, per feature of `missing`
                    parts.append(torch.index_select(absent.to(numeric.dtype), 1, self.get_buffer("flagged")))
            if codes is not None:
                parts += [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]
            out: torch.Tensor = self.mlp[:-3](torch.cat(parts, dim=1))
            return out

        def forward(self, numeric: torch.Tensor | None, codes: torch.Tensor | None) -> torch.Tensor:
            out: torch.Tensor = self.mlp[-3:](self.hidden(numeric, codes))
            return out if self.classes else out.squeeze(1)

        def output(self, head: torch.Tensor) -> torch.Tensor:
            if self.classes:
                return torch.softmax(head, dim=1)
            if self.regression:
                return head * self.get_buffer("target_std") + self.get_buffer("target_mean")
            return torch.sigmoid(head)

    return TabularMLP()


def predict(module: torch.nn.Module, enc: FeatureEncoding, df: pd.DataFrame, device: str = "cpu") -> np.ndarray:
    """The scores from torch (probabilities; values for a regression model; `[n, classes]`
    probabilities for a multiclass one), on raw columns."""
    import torch

    numeric, codes = encode(df, enc)
    module.eval()
    with torch.no_grad():
        head = module(torch.from_numpy(numeric).to(device), torch.from_numpy(codes).to(device))
        return np.asarray(module.output(head).cpu().numpy(), dtype=np.float64)  # type: ignore[operator]


def embeddings(module: torch.nn.Module, enc: FeatureEncoding, df: pd.DataFrame, device: str = "cpu") -> np.ndarray:
    """The model's embedding of each row (its last hidden layer before the ReLU), from torch, on
    raw columns (float32)."""
    import torch

    numeric, codes = encode(df, enc)
    module.eval()
    with torch.no_grad():
        hidden = module.hidden(torch.from_numpy(numeric).to(device), torch.from_numpy(codes).to(device))  # type: ignore[operator]
        return np.asarray(hidden.cpu().numpy(), dtype=np.float32)


EMBEDDING = "embedding"
"""The ONNX output of the entity's embedding, beside `score`, in a model exported with embeddings."""


def to_onnx(
    module: torch.nn.Module,
    enc: FeatureEncoding,
    opset: int = 17,
    embedding: bool = False,
    classes: list[str] | None = None,
) -> onnx.ModelProto:
    """Export with preprocessing in the graph: raw columns in, `score` out (and, with `embedding`,
    the last hidden layer before its ReLU as the `embedding` output, `[n, hidden_units]`). A
    multiclass model (`classes`, its class names) answers `class_outputs`."""
    import onnx
    import torch
    from onnx import helper

    groups = [g for g, cols in (("numeric", enc.numeric), ("codes", enc.categorical)) if cols]

    class Scorer(torch.nn.Module):
        """The graph's inputs are the groups the model has: numeric, codes, or both."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
            given = dict(zip(groups, tensors, strict=True))
            inner: Any = self.inner
            hidden = inner.hidden(given.get("numeric"), given.get("codes"))
            head = inner.mlp[-3:](hidden)
            score = inner.output(head if inner.classes else head.squeeze(1))
            return (score, hidden) if embedding else score

    first = PROBABILITIES if classes else "score"
    scorer = Scorer(module).cpu().eval()
    buf = io.BytesIO()
    examples = {
        "numeric": torch.zeros(2, len(enc.numeric)),
        "codes": torch.zeros(2, len(enc.categorical), dtype=torch.long),
    }
    torch.onnx.export(
        scorer,
        tuple(examples[g] for g in groups),
        buf,  # type: ignore[arg-type]
        input_names=groups,
        output_names=[first, EMBEDDING] if embedding else [first],
        dynamic_axes={
            **{g: {0: "n"} for g in groups},
            first: {0: "n"},
            **({EMBEDDING: {0: "n"}} if embedding else {}),
        },
        opset_version=opset,
        dynamo=False,
    )
    model = onnx.load_from_string(buf.getvalue())
    graph = model.graph
    front, inputs = raw_front(enc)
    kept = [n for n in graph.node]
    del graph.node[:]
    graph.node.extend(front + kept)
    del graph.input[:]
    graph.input.extend(inputs)
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    what = "the predicted value" if getattr(module, "regression", False) else "the probability"
    if classes:
        add_class_outputs(model, classes)
        what = "the classes' probabilities"
    model.doc_string = f"mlcycle tabular model: raw feature columns in, {what} out"
    onnx.checker.check_model(model)
    return model


PROBABILITIES = "probabilities"
CLASS = "class"
CLASSES_KEY = "mlcycle.classes"
"""A multiclass model's outputs beside `score`: `probabilities` (`[n, K]`, in the order of the
classes) and `class` (`[n]`, the most likely class's name); its metadata `mlcycle.classes` lists
the class names (JSON)."""


def add_class_outputs(model: onnx.ModelProto, classes: list[str]) -> None:
    """Turn a graph whose only output is `probabilities` (`[n, K]`) into a multiclass model's:
    `score` (the most likely class's probability), `probabilities` and `class`, with the class
    names in the graph (a string constant indexed by the arg max) and in its metadata."""
    import json

    from onnx import TensorProto, helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    graph.initializer.append(
        helper.make_tensor("class_names", TensorProto.STRING, [len(classes)], [c.encode() for c in classes])  # type: ignore[misc]
    )
    if opset >= 18:  # ReduceMax's axes became an input
        graph.initializer.append(helper.make_tensor("class_axis", TensorProto.INT64, [1], [1]))
        top = helper.make_node("ReduceMax", [PROBABILITIES, "class_axis"], ["score"], keepdims=0, name="score")
    else:
        top = helper.make_node("ReduceMax", [PROBABILITIES], ["score"], axes=[1], keepdims=0, name="score")
    graph.node.extend(
        [
            top,
            helper.make_node("ArgMax", [PROBABILITIES], ["class_index"], axis=1, keepdims=0, name="class_index"),
            helper.make_node("Gather", ["class_names", "class_index"], [CLASS], axis=0, name="class"),
        ]
    )
    kept = [o for o in graph.output if o.name not in (PROBABILITIES, "score")]
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["n", len(classes)]),
            helper.make_tensor_value_info(CLASS, TensorProto.STRING, ["n"]),
            *kept,
        ]
    )
    helper.set_model_props(model, {CLASSES_KEY: json.dumps(classes)})


def raw_front(enc: FeatureEncoding) -> tuple[list[onnx.NodeProto], list[onnx.ValueInfoProto]]:
    """The graph's front shared by every family: one `[N, 1]` input per raw column (float for a
    numeric feature, string for a categorical one), the numeric columns concatenated as `numeric`
    (a missing value is NaN: each family's model handles it) and the categories mapped to codes
    (`ai.onnx.ml.LabelEncoder`, unknown or null `""` -> 0) as `codes`. Pure."""
    from onnx import TensorProto, helper

    front = [helper.make_node("Concat", enc.numeric, ["numeric"], axis=1, name="concat_numeric")] if enc.numeric else []
    for c in enc.categorical:
        front.append(
            helper.make_node(
                "LabelEncoder",
                [c],
                [f"{c}__code"],
                domain="ai.onnx.ml",
                name=f"encode_{c}",
                keys_strings=enc.vocab[c],
                values_int64s=list(range(1, len(enc.vocab[c]) + 1)),
                default_int64=0,
            )
        )
    if enc.categorical:
        codes = [f"{c}__code" for c in enc.categorical]
        front.append(helper.make_node("Concat", codes, ["codes"], axis=1, name="concat_codes"))
    inputs = [helper.make_tensor_value_info(c, TensorProto.FLOAT, ["n", 1]) for c in enc.numeric]
    inputs += [helper.make_tensor_value_info(c, TensorProto.STRING, ["n", 1]) for c in enc.categorical]
    return front, inputs


def onnx_session(model_bytes: bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the best provider here; `threads` caps its intra-op threads
    (a serving replica given one CPU must not run a thread per core of the host)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=onnx_providers(ort.get_available_providers()))


def session_feed(session: Any, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Inputs for any model exported by `to_onnx`, from its own input names and types, nulls as
    the graphs take them: NaN in a float input, `""` in a string input."""
    feed: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        if i.type == "tensor(string)":
            feed[i.name] = category_strings(df[i.name]).reshape(-1, 1)
        else:
            feed[i.name] = numeric_values(df, [i.name])
    return feed


def embed_onnx(session: Any, df: pd.DataFrame) -> np.ndarray:
    """Embeddings from an exported model's `embedding` output, on raw columns (float32)."""
    (vectors,) = session.run([EMBEDDING], session_feed(session, df))
    return np.asarray(vectors, dtype=np.float32)


def embedding_dimension(session: Any) -> int | None:
    """The width of a model's `embedding` output, None when it has none. Pure."""
    for out in session.get_outputs():
        if out.name == EMBEDDING:
            return int(out.shape[1])
    return None


def predict_onnx(session: Any, df: pd.DataFrame) -> np.ndarray:
    """The scores of an exported model, on raw columns (it needs nothing else): its
    `probabilities` (`[n, K]`) where it has them (a multiclass model), else its `score`."""
    names = {o.name for o in session.get_outputs()}
    (score,) = session.run([PROBABILITIES if PROBABILITIES in names else "score"], session_feed(session, df))
    return np.asarray(score, dtype=np.float64)


def module_bytes(module: torch.nn.Module, enc: FeatureEncoding, params: dict[str, Any]) -> bytes:
    """A self-describing torch checkpoint: weights, encoding and architecture parameters."""
    import torch

    buf = io.BytesIO()
    torch.save({"state_dict": module.state_dict(), "encoding": enc.to_dict(), "params": params}, buf)
    return buf.getvalue()


def load_tensors(data: bytes, map_location: Any = "cpu") -> Any:
    """A torch checkpoint of tensors and plain values (dicts, lists, numbers, text) only: loaded with
    `weights_only=True`, so a pickle that would build any other object (and run its code) is
    refused (`ArtifactRefused`), never run."""
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtifactRefused(
            f"a torch checkpoint that holds more than tensors and plain values (refused, weights_only): {first}"
        ) from None


def load_module(data: bytes) -> tuple[torch.nn.Module, FeatureEncoding, dict[str, Any]]:
    blob = load_tensors(data)
    enc = FeatureEncoding.from_dict(blob["encoding"])
    params = blob["params"]
    state = blob["state_dict"]
    target = (float(state["target_mean"]), float(state["target_std"])) if "target_mean" in state else None
    classes = int(state["class_count"]) if "class_count" in state else 0
    module = build_module(enc, **architecture(params), target=target, classes=classes)
    module.load_state_dict(state)
    return module.eval(), enc, params


def architecture(params: dict[str, Any]) -> dict[str, Any]:
    """The architecture parameters among a trial's parameters. Pure."""
    return {k: params[k] for k in ("hidden_units", "layers", "dropout") if k in params}
