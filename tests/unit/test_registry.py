from __future__ import annotations

import pandas as pd

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
