"""A scikit-learn or LightGBM model converted to ONNX, put behind the raw-column front that every
family's graph shares (`pipelines.ml.model.raw_front`): the same inputs and `score` output, so
evaluate, promote, the parity check and serving take any family unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.ml.model import PROBABILITIES, FeatureEncoding, add_class_outputs, raw_front

if TYPE_CHECKING:
    import onnx


def wrap_converted(
    inner: onnx.ModelProto, enc: FeatureEncoding, doc: str, classes: list[str] | None = None
) -> onnx.ModelProto:
    """A converted scikit-learn / LightGBM model (input `X`; output `probabilities` of a
    classifier, `variable` of a regressor) behind the raw-column front: one input per feature
    column, `score` (`[n]`: the positive class's probability, or the predicted value) the only
    output; a multiclass model's (`classes`) outputs are `add_class_outputs`'."""
    import onnx
    from onnx import TensorProto, helper

    inner = onnx.compose.add_prefix(inner, "model/")  # the converter's names never meet ours (it has a `score`)
    nodes, inputs = raw_front(enc)
    parts = []
    if enc.numeric:
        parts.append("numeric")
    if enc.categorical:
        nodes.append(helper.make_node("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT, name="codes_to_float"))
        parts.append("codes_f")
    nodes.append(helper.make_node("Concat", parts, ["model/X"], axis=1, name="concat_x"))
    graph = inner.graph
    kept = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *kept])
    produced = {o for n in kept for o in n.output}
    if classes:
        graph.node.append(helper.make_node("Identity", ["model/probabilities"], [PROBABILITIES], name="probabilities"))
        what = "the classes' probabilities"
    elif "model/probabilities" in produced:
        graph.initializer.append(helper.make_tensor("positive_class", TensorProto.INT64, [], [1]))
        graph.node.append(
            helper.make_node("Gather", ["model/probabilities", "positive_class"], ["score"], axis=1, name="score")
        )
        what = "probability"
    else:
        graph.initializer.append(helper.make_tensor("flat", TensorProto.INT64, [1], [-1]))
        graph.node.append(helper.make_node("Reshape", ["model/variable", "flat"], ["score"], name="score"))
        what = "predicted value"
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.output[:]
    if classes:
        graph.output.append(helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["n", len(classes)]))
        add_class_outputs(inner, classes)
    else:
        graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"]))
    for opset in inner.opset_import:
        if opset.domain == "ai.onnx.ml":
            opset.version = max(opset.version, 2)  # LabelEncoder with string keys
    if not any(o.domain == "ai.onnx.ml" for o in inner.opset_import):
        inner.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    inner.doc_string = f"{doc}: raw feature columns in, {what} out"
    onnx.checker.check_model(inner)
    return inner
