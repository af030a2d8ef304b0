from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.io.registry import example_frame, pyfunc_inputs

INPUTS = [
    ("tenure_months", "tensor(float)"),
    ("charges", "tensor(float)"),
    ("plan", "tensor(string)"),
    ("x", "tensor(float)"),
]


def test_the_signature_types_are_the_contracts() -> None:
    contract = {"tenure_months": ("int", False), "charges": ("int", True), "plan": ("string", False)}
    columns = pyfunc_inputs(INPUTS, contract)
    # a nullable int is held by pandas as floats; an input the contract lacks: its ONNX type
    assert columns == [("tenure_months", "long"), ("charges", "double"), ("plan", "string"), ("x", "double")]
    df = pd.DataFrame(
        {"id": range(8), "tenure_months": range(8), "charges": [1, None] * 4, "plan": ["a"] * 8, "x": [0.5] * 8}
    )
    example = example_frame(df, columns)
    assert list(example.columns) == ["tenure_months", "charges", "plan", "x"] and len(example) == 5
    assert [str(t) for t in example.dtypes] == ["int64", "float64", "object", "float64"]


def _graph(classes: int) -> bytes:
    """A model shaped as mlcycle exports them: one [n, 1] input per raw feature (a float, a string
    mapped by a LabelEncoder), `score` [n] (binary) or `probabilities` [n, 2] (multiclass) out."""
    from onnx import TensorProto, helper

    encode = helper.make_node(
        "LabelEncoder",
        ["plan"],
        ["plan_x"],
        domain="ai.onnx.ml",
        keys_strings=["basic", "pro"],
        values_floats=[0.5, 2.0],
        default_float=-1.0,
    )
    nodes = [encode, helper.make_node("Add", ["tenure_months", "plan_x"], ["z"])]
    init = []
    if classes:
        nodes += [
            helper.make_node("Neg", ["z"], ["nz"]),
            helper.make_node("Concat", ["z", "nz"], ["logits"], axis=1),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ]
        out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2])
    else:
        init.append(helper.make_tensor("axis", TensorProto.INT64, [1], [1]))
        nodes += [helper.make_node("Sigmoid", ["z"], ["p"]), helper.make_node("Squeeze", ["p", "axis"], ["score"])]
        out = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])
    inputs = [
        helper.make_tensor_value_info("tenure_months", TensorProto.FLOAT, ["n", 1]),
        helper.make_tensor_value_info("plan", TensorProto.STRING, ["n", 1]),
    ]
    graph = helper.make_graph(nodes, "g", inputs, [out], initializer=init)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return bytes(helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString())


@pytest.mark.parametrize("classes", [0, 2])
def test_the_logged_model_scores_a_dataframe_as_its_onnx_session_does(classes: int, tmp_path: Path) -> None:
    """Logged on a real MLflow store (SQLite here), loaded back as a pyfunc: a DataFrame of raw
    columns (ints, text, an extra column) in, the ONNX session's scores out; the `onnx` flavor
    (what serving loads) gives the same bytes back."""
    import mlflow
    import mlflow.onnx
    import numpy as np

    from pipelines.io.registry import log_onnx_model
    from pipelines.ml.model import onnx_session, predict_onnx

    onnx_bytes = _graph(classes)
    features = pd.DataFrame(
        {"customer_id": range(30), "tenure_months": range(30), "plan": ["basic", "pro", "gold"] * 10}
    )
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", (tmp_path / "artifacts").as_uri()))
        with mlflow.start_run():
            uri = log_onnx_model(onnx_bytes, features, {"tenure_months": ("int", False), "plan": ("string", False)})
        model = mlflow.pyfunc.load_model(uri)
        onnx_flavor = mlflow.onnx.load_model(uri).SerializeToString()
    finally:
        mlflow.set_tracking_uri(previous)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["tenure_months", "plan"]
    got = model.predict(features)
    expected = predict_onnx(onnx_session(onnx_bytes), features)
    assert got.shape == ((30, 2) if classes else (30,))
    np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=0, atol=1e-7)
    assert onnx_flavor == onnx_bytes


def test_the_pyfunc_feeds_nulls_as_the_families_read_them() -> None:
    """The pyfunc file travels without mlcycle, so it has its own feed: it must map a null as
    `pipelines.ml.model.session_feed` does (NaN for a number, "" for a category)."""
    import numpy as np

    from pipelines.io.onnx_pyfunc import onnx_feed
    from pipelines.ml.model import category_strings

    df = pd.DataFrame({"tenure_months": [1.0, None, 3.0], "plan": ["basic", None, float("nan")]})
    feed = onnx_feed([("tenure_months", "tensor(float)"), ("plan", "tensor(string)")], df)
    assert feed["plan"].reshape(-1).tolist() == category_strings(df["plan"]).tolist() == ["basic", "", ""]
    arrow = df["plan"].astype(pd.StringDtype("pyarrow"))  # how a batch chunk reads text (io/batch.kept_rows)
    assert category_strings(arrow).tolist() == ["basic", "", ""] and category_strings(arrow).dtype == object
    assert np.isnan(feed["tenure_months"][1, 0]) and feed["tenure_months"].shape == (3, 1)
