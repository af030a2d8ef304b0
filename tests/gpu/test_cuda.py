"""GPU checks: the train step's trainer on CUDA (trials, checkpoints, resume) and ONNX Runtime's
CUDA execution provider.

They run where torch sees a CUDA device (and, for ONNX, where onnxruntime-gpu is installed) and
skip with the reason everywhere else; the CPU side of the same code is covered by the other tiers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.ml.datagen import CATEGORICAL, NUMERIC
from pipelines.ml.families import load_trained
from pipelines.ml.model import (
    build_module,
    fit_encoding,
    onnx_session,
    predict,
    predict_onnx,
    select_device,
    to_onnx,
)

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


def test_train_step_trainer_on_cuda(churn_df: pd.DataFrame, tmp_path: Path) -> None:
    """The train step's own Trainer: a trial trains on the GPU, checkpoints, a second trial resumes
    from that checkpoint (map_location cuda), and the weights come back loadable on the CPU."""
    import optuna

    from pipelines.core.settings import Settings
    from pipelines.core.spec import parse_spec
    from pipelines.io.storage import LocalStorage
    from pipelines.ml.families import CHECKPOINT_SHA256, RESUME_SHA256
    from pipelines.steps.context import StepContext
    from pipelines.steps.train import Trainer
    from tests.specs import churn_spec_dict

    spec = parse_spec(churn_spec_dict(merge=True, training={"max_epochs": 4, "device": "cuda"}))
    ctx = StepContext(spec, Settings(state_dir=tmp_path), "gpu-check", LocalStorage(tmp_path / "art"), "train")
    enc = fit_encoding(churn_df, spec.model.numeric_features, spec.model.categorical_features)
    train, val = churn_df.iloc[:3500], churn_df.iloc[3500:]
    trainer = Trainer(ctx, enc, train, val, select_device(spec.training.device))
    assert trainer.data.tensors.x_num.is_cuda and trainer.data.tensors.y.is_cuda

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if trainer.higher else "minimize")
    params = {"hidden_units": 32, "layers": 2, "dropout": 0.1, "learning_rate": 3e-3}
    first = study.ask()
    value, blob = trainer.fit(first, params, lambda metrics, step: None)
    assert np.isfinite(value)
    digest = first.user_attrs[CHECKPOINT_SHA256]
    assert ctx.storage.exists(trainer.checkpoint_key(first.number, digest))

    study.enqueue_trial(params, user_attrs={"resume_from": first.number, RESUME_SHA256: digest})
    second = study.ask()
    trainer.fit(second, params, lambda metrics, step: None)
    assert second.user_attrs["resumed_at_epoch"] == spec.training.max_epochs

    trained = load_trained(blob)
    scores = trained.predict(val.head(100))
    assert trained.family == "tabular_mlp" and not next(trained.module.parameters()).is_cuda
    assert ((scores > 0) & (scores < 1)).all()


def test_a_multiclass_head_trains_on_cuda_and_exports_its_classes(churn_df: pd.DataFrame) -> None:
    """Cross entropy on class indices on the GPU; the module's softmax and its ONNX agree on the CPU."""
    numeric = list(NUMERIC)
    enc = fit_encoding(churn_df, numeric, [])
    classes = ["annual", "monthly", "two_year"]  # the contract column as the label (a multiclass stand-in)
    y = torch.from_numpy(np.array([classes.index(c) for c in churn_df["contract"]])).cuda()
    module = build_module(enc, hidden_units=16, layers=1, dropout=0.0, classes=3).cuda()
    from pipelines.ml.model import encode

    num, codes = encode(churn_df, enc)
    x_num, x_cat = torch.from_numpy(num).cuda(), torch.from_numpy(codes).cuda()
    opt = torch.optim.AdamW(module.parameters(), lr=0.01)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(x_num, x_cat), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    module = module.cpu()
    native = predict(module, enc, churn_df.head(200))
    assert native.shape == (200, 3) and np.allclose(native.sum(axis=1), 1.0, atol=1e-5)
    session = onnx_session(to_onnx(module, enc, classes=classes).SerializeToString())
    assert np.abs(native - predict_onnx(session, churn_df.head(200))).max() < 1e-4
