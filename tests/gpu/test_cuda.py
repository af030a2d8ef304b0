"""GPU checks: the train step on CUDA and ONNX Runtime's CUDA execution provider.

They run where torch sees a CUDA device (and, for ONNX, where onnxruntime-gpu is installed) and
skip with the reason everywhere else; the CPU side of the same code is covered by the other tiers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.ml.datagen import CATEGORICAL, NUMERIC
from pipelines.ml.model import build_module, fit_encoding, onnx_session, predict, predict_onnx, select_device, to_onnx

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch on this host"),
]


def test_training_runs_on_cuda(churn_df: pd.DataFrame) -> None:
    assert select_device("auto") == "cuda"
    enc = fit_encoding(churn_df, list(NUMERIC), list(CATEGORICAL))
    module = build_module(enc, hidden_units=32, layers=2, dropout=0.0).to("cuda")
    from pipelines.ml.model import encode

    num, codes = encode(churn_df, enc)
    x_num, x_cat = torch.from_numpy(num).cuda(), torch.from_numpy(codes).cuda()
    y = torch.from_numpy(churn_df["churned"].to_numpy(np.float32)).cuda()
    opt = torch.optim.AdamW(module.parameters(), lr=0.01)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(module(x_num, x_cat), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert next(module.parameters()).is_cuda
    assert loss.item() < first
    cpu = predict(module.cpu(), enc, churn_df.head(200))
    assert ((cpu > 0) & (cpu < 1)).all()


def test_onnx_runtime_cuda_provider(churn_df: pd.DataFrame) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on GPU hosts)")
    enc = fit_encoding(churn_df, list(NUMERIC), list(CATEGORICAL))
    module = build_module(enc, hidden_units=16, layers=1, dropout=0.0)
    session = onnx_session(to_onnx(module, enc).SerializeToString())
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    diff = np.abs(predict(module, enc, churn_df.head(500)) - predict_onnx(session, churn_df.head(500)))
    assert diff.max() < 1e-4
