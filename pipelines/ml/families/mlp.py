"""The torch MLP family (`pipelines.ml.model`: preprocessing inside the module, so its graph takes
raw columns): its trial's training loop (`Trainer`: epochs to early stopping, pruning or the
deadline; a checkpoint every `checkpoint_minutes` and at the end; a trial resumes the checkpoint of
the interrupted trial it repeats). The payload is the module's torch checkpoint."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.core.families import TABULAR_MLP, FamilyCard
from pipelines.ml.families.fitting import (
    Fitting,
    TrainingData,
    require_finite,
    require_finite_scores,
    target_scaling,
)
from pipelines.ml.families.registry import Header, TrainedBase, pack
from pipelines.ml.model import (
    FeatureEncoding,
    architecture,
    build_module,
    embeddings,
    load_module,
    load_tensors,
    module_bytes,
    predict,
    to_onnx,
)

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import pandas as pd
    import torch

NAME = TABULAR_MLP.name
log = logging.getLogger(__name__)


@dataclass
class MLPModel(TrainedBase):
    module: torch.nn.Module

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        return predict(self.module, self.enc, df)

    def embeddings(self, df: pd.DataFrame) -> np.ndarray | None:
        return embeddings(self.module, self.enc, df)

    def to_onnx(self, embedding: bool = False) -> onnx.ModelProto:
        return to_onnx(self.module, self.enc, embedding=embedding, classes=self.classes or None)


def mlp_artifact(
    module: torch.nn.Module, enc: FeatureEncoding, params: dict[str, Any], classes: list[str] | None = None
) -> bytes:
    """The MLP's torch checkpoint as an artifact."""
    return pack(NAME, enc, params, module_bytes(module, enc, params), classes)


class Trainer:
    """Trains one trial's MLP on the search's tensors."""

    def __init__(self, data: TrainingData, params: dict[str, Any], fitting: Fitting) -> None:
        import torch

        self.data, self.params, self.fitting = data, params, fitting
        self.classes = data.classes
        # a regression MLP learns the standardised label (its head is rescaled in the graph)
        self.target = target_scaling(data.y) if fitting.kind == "regression" else None
        torch.manual_seed(fitting.seed)
        module = build_module(data.enc, **architecture(params), target=self.target, classes=len(self.classes))
        self.module = module.to(data.device)
        self.opt = torch.optim.AdamW(
            self.module.parameters(), lr=params.get("learning_rate", 1e-3), weight_decay=params.get("weight_decay", 0.0)
        )
        self.stopper = fitting.stopper()
        self.best_state: dict[str, Any] = self.state()
        self.epoch = 0  # the epoch being trained (1-based), for a failure's reason

    def state(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def loss_fn(self) -> torch.nn.Module:
        import torch

        weights = self.fitting.class_weights  # balanced: each class's total weight the same
        if self.classes:
            if weights is None:
                return torch.nn.CrossEntropyLoss()
            return torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=self.data.device))
        if self.target:
            return torch.nn.MSELoss()
        if weights is None:
            return torch.nn.BCEWithLogitsLoss()
        positive = torch.tensor(weights[1] / weights[0], dtype=torch.float32, device=self.data.device)
        return torch.nn.BCEWithLogitsLoss(pos_weight=positive)

    def fit(self) -> tuple[float, bytes]:
        """Train to early stopping (or pruning, or the deadline); the best validation value and
        the artifact of the best epoch's module."""
        import torch

        cfg, t = self.fitting, self.data.tensors
        start_epoch = self.resume()
        gen = torch.Generator().manual_seed(cfg.shuffle_seed)
        loss_fn = self.loss_fn()
        y = t.y if self.target is None else (t.y - self.target[0]) / self.target[1]
        last_checkpoint = time.monotonic()
        n = len(t.y)
        for epoch in range(start_epoch, cfg.max_epochs):
            self.epoch = epoch + 1
            self.module.train()
            order = torch.randperm(n, generator=gen).to(self.data.device)
            total = 0.0
            for i in range(0, n, cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                self.opt.zero_grad()
                loss = loss_fn(self.module(t.x_num[idx], t.x_cat[idx]), y[idx])
                loss.backward()
                self.opt.step()
                total += loss.item() * len(idx)
            require_finite({"train_loss": total / n}, epoch + 1)  # NaN weights would score nothing
            value = self.validate()
            if self.stopper.step(value):
                self.best_state = self.state()
            cfg.log({"train_loss": total / n, "val_metric": value}, epoch)
            if time.monotonic() - last_checkpoint >= cfg.checkpoint_minutes * 60:
                self.checkpoint(epoch + 1)
                last_checkpoint = time.monotonic()
            cfg.report(value, epoch + 1)  # the step is the training done: epochs, as rounds and passes are
            if self.stopper.should_stop or cfg.out_of_time():
                break
        self.module.load_state_dict(self.best_state)
        self.checkpoint(cfg.max_epochs)
        artifact = mlp_artifact(self.module.cpu(), self.data.enc, self.params, self.classes)
        return self.stopper.best_value, artifact

    def validate(self) -> float:
        import torch

        t = self.data.tensors
        self.module.eval()
        with torch.no_grad():
            p = self.module.output(self.module(t.v_num, t.v_cat)).cpu().numpy()  # type: ignore[operator]
        require_finite_scores(p, self.epoch, "epoch")
        return float(self.fitting.metric(self.data.v_y, p))

    def checkpoint(self, next_epoch: int) -> None:
        import torch

        if self.fitting.checkpoints is None:
            return
        buf = io.BytesIO()
        torch.save(
            {
                "module": self.module.state_dict(),
                "opt": self.opt.state_dict(),
                "best": self.best_state,
                "stopper": (self.stopper.best, self.stopper.bad_epochs),
                "next_epoch": next_epoch,
            },
            buf,
        )
        self.fitting.checkpoints.save(buf.getvalue())

    def resume(self) -> int:
        """The epoch to start from: 0, or where the checkpoint this trial resumes left off."""
        saved = self.fitting.checkpoints.resume() if self.fitting.checkpoints is not None else None
        if saved is None:
            return 0
        blob = load_tensors(saved, map_location=self.data.device)
        self.module.load_state_dict(blob["module"])
        self.opt.load_state_dict(blob["opt"])
        self.best_state.update(blob["best"])
        self.stopper.best, self.stopper.bad_epochs = blob["stopper"]
        if self.fitting.checkpoints is not None:
            self.fitting.checkpoints.resumed(int(blob["next_epoch"]))
        return int(blob["next_epoch"])


class TabularMLP:
    card: FamilyCard = TABULAR_MLP

    def fit(self, data: TrainingData, params: dict[str, Any], fitting: Fitting) -> tuple[float, bytes]:
        return Trainer(data, params, fitting).fit()

    def load(self, header: Header, payload: bytes) -> MLPModel:
        module = load_module(payload)[0]
        return MLPModel(header.family, header.enc, header.params, module, classes=header.classes)


FAMILY = TabularMLP()
