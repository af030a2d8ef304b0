"""Artifacts that cannot execute: a model or checkpoint holding a pickle that would run code is
refused at load and the code never runs; a changed artifact is refused by its recorded sha256."""

from __future__ import annotations

import base64
import builtins
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.core.errors import ArtifactRefused, MlcycleError
from pipelines.core.integrity import check_digest, check_files, sha256_hex
from pipelines.ml.datagen import CATEGORICAL, NUMERIC
from pipelines.ml.families import Fitting, TrainingData, load_trained, pack
from pipelines.ml.families.linear import fit_linear
from pipelines.ml.families.mlp import Trainer, mlp_artifact
from pipelines.ml.metrics import roc_auc
from pipelines.ml.model import build_module, fit_encoding


class RunsCode:
    """A pickle payload that writes `marker` when it is unpickled (what a bucket writer would plant)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def split(churn_df: pd.DataFrame) -> tuple[Any, TrainingData]:
    train, val = churn_df.iloc[:600], churn_df.iloc[600:800]
    enc = fit_encoding(train, list(NUMERIC), list(CATEGORICAL))
    return enc, TrainingData(enc, train, val, "churned", [])


def fitting(**kw: Any) -> Fitting:
    base: dict[str, Any] = {"metric": roc_auc, "higher": True, "seed": 1, "patience": 2, "max_epochs": 2}
    return Fitting(report=lambda value, step: None, log=lambda metrics, step: None, **{**base, **kw})


def torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_an_mlp_artifact_holding_code_is_refused_and_the_code_never_runs(split: Any, tmp_path: Path) -> None:
    enc, _ = split
    marker = tmp_path / "ran"
    module = build_module(enc)
    payload = torch_bytes({"state_dict": module.state_dict(), "encoding": RunsCode(marker), "params": {}})
    with pytest.raises(ArtifactRefused, match=r"trial-3\.bin: a torch checkpoint that holds more than tensors"):
        load_trained(pack("tabular_mlp", enc, {}, payload), "s3://bucket/p/r/train/trials/trial-3.bin")
    assert not marker.exists()
    assert ArtifactRefused("x").exit_code == 3


def test_a_training_checkpoint_holding_code_is_refused_at_resume_and_the_code_never_runs(
    split: Any, tmp_path: Path
) -> None:
    _, data = split
    marker = tmp_path / "ran"

    class Planted:
        def save(self, blob: bytes) -> None: ...

        def resume(self) -> bytes:
            return torch_bytes({"module": RunsCode(marker), "next_epoch": 1})

        def resumed(self, epoch: int) -> None: ...

    trainer = Trainer(data, {"hidden_units": 8, "layers": 1}, fitting(checkpoints=Planted()))
    with pytest.raises(ArtifactRefused, match="weights_only"):
        trainer.fit()
    assert not marker.exists()


def test_a_checkpoint_of_tensors_and_plain_values_resumes(split: Any) -> None:
    """The MLP's own checkpoint (weights, optimizer state, early-stopping state) loads with
    weights_only: resuming needs nothing a pickle could build."""
    _, data = split
    saved: list[bytes] = []
    resumed: list[int] = []

    class Kept:
        def save(self, blob: bytes) -> None:
            saved.append(blob)

        def resume(self) -> bytes | None:
            return saved[-1] if saved else None

        def resumed(self, epoch: int) -> None:
            resumed.append(epoch)

    params = {"hidden_units": 8, "layers": 1}
    first = Trainer(data, params, fitting(checkpoints=Kept(), checkpoint_minutes=0.0))
    first.fit()
    assert saved
    value, artifact = Trainer(data, params, fitting(checkpoints=Kept())).fit()
    assert resumed == [2] and np.isfinite(value)
    assert load_trained(artifact).predict(data.val).shape == (len(data.val),)


def test_a_linear_model_pickled_by_an_older_version_is_refused_and_never_unpickled(split: Any, tmp_path: Path) -> None:
    enc, _ = split
    marker = tmp_path / "ran"
    payload = pickle.dumps(RunsCode(marker))
    with pytest.raises(ArtifactRefused, match=r"model\.bin: a linear model not in skops' format"):
        load_trained(pack("linear", enc, {}, payload), "/runs/p/r/train/model.bin")
    assert not marker.exists()


def test_a_linear_model_round_trips_through_skops_without_pickle(split: Any) -> None:
    _, data = split
    _, artifact = fit_linear(data, {"alpha": 1e-4, "l1_ratio": 0.2}, fitting())
    payload = artifact.split(b"\n", 1)[1]
    assert payload[:2] == b"PK"  # skops' zip, not a pickle stream
    trained = load_trained(artifact)
    assert trained.predict(data.val).shape == (len(data.val),)


def test_an_ensemble_with_a_member_holding_code_is_refused(split: Any, tmp_path: Path) -> None:
    enc, _ = split
    marker = tmp_path / "ran"
    member = pack("linear", enc, {}, pickle.dumps(RunsCode(marker)))
    good = mlp_artifact(build_module(enc), enc, {})
    members = [{"artifact": base64.b64encode(b).decode(), "weight": 0.5} for b in (good, member)]
    with pytest.raises(ArtifactRefused, match="model.bin"):
        load_trained(pack("ensemble", enc, {}, json.dumps(members).encode()), "model.bin")
    assert not marker.exists()


def test_an_artifact_whose_bytes_changed_after_write_is_refused_naming_it() -> None:
    data = b"model bytes"
    recorded = sha256_hex(data)
    assert check_digest(data, recorded, "model.onnx") == data
    with pytest.raises(ArtifactRefused, match=r"s3://b/p/r/train/model\.onnx: its sha256 is .* not the"):
        check_digest(data + b"!", recorded, "s3://b/p/r/train/model.onnx")
    with pytest.raises(ArtifactRefused, match="no sha256 was recorded"):
        check_digest(data, None, "trial-1.bin")
    assert issubclass(ArtifactRefused, MlcycleError)


def test_a_model_version_with_a_changed_missing_or_added_file_is_refused() -> None:
    recorded = {"MLmodel": "a", "artifacts/model.onnx": "b", "python_model.py": "c"}
    check_files(dict(recorded), recorded, "m v1")
    with pytest.raises(ArtifactRefused, match=r"m v1: .*changed \['artifacts/model.onnx'\]"):
        check_files({**recorded, "artifacts/model.onnx": "x"}, recorded, "m v1")
    with pytest.raises(ArtifactRefused, match=r"missing \['python_model.py'\]"):
        check_files({k: v for k, v in recorded.items() if k != "python_model.py"}, recorded, "m v1")
    with pytest.raises(ArtifactRefused, match=r"added \['extra.py'\]"):
        check_files({**recorded, "extra.py": "d"}, recorded, "m v1")


class KilledAtRecord(Exception):
    """Stands for the task being killed after a checkpoint's bytes were written, before its digest
    was recorded."""


def test_a_task_killed_between_a_checkpoints_write_and_its_record_resumes_from_the_recorded_one(
    tmp_path: Path,
) -> None:
    import types

    import optuna

    from pipelines.io.storage import LocalStorage
    from pipelines.ml.families import CHECKPOINT_SHA256, RESUME_SHA256, trial_checkpoint
    from pipelines.steps.train import TrialCheckpoints

    storage = LocalStorage(tmp_path)
    trainer = types.SimpleNamespace(
        ctx=types.SimpleNamespace(storage=storage), checkpoint_key=lambda n, d: f"p/r/train/{trial_checkpoint(n, d)}"
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    trial = study.ask()
    saving = TrialCheckpoints(trainer, trial)  # type: ignore[arg-type]
    saving.save(b"epoch 1")
    saving.save(b"epoch 2")  # the one before is deleted once this one is recorded
    assert storage.list("p/r/train/checkpoints") == [trainer.checkpoint_key(trial.number, sha256_hex(b"epoch 2"))]

    recorded = trial.set_user_attr
    trial.set_user_attr = lambda *a: (_ for _ in ()).throw(KilledAtRecord())  # type: ignore[method-assign]
    with pytest.raises(KilledAtRecord):
        saving.save(b"epoch 3")
    trial.set_user_attr = recorded  # type: ignore[method-assign]
    assert len(storage.list("p/r/train/checkpoints")) == 2  # epoch 3's bytes are there, unrecorded

    digest = study.trials[0].user_attrs[CHECKPOINT_SHA256]
    study.enqueue_trial({}, user_attrs={"resume_from": trial.number, RESUME_SHA256: digest})
    assert TrialCheckpoints(trainer, study.ask()).resume() == b"epoch 2"  # type: ignore[arg-type]

    storage.write_bytes(trainer.checkpoint_key(trial.number, digest), b"swapped")
    study.enqueue_trial({}, user_attrs={"resume_from": trial.number, RESUME_SHA256: digest})
    with pytest.raises(ArtifactRefused, match="its sha256 is"):
        TrialCheckpoints(trainer, study.ask()).resume()  # type: ignore[arg-type]
    storage.delete([trainer.checkpoint_key(trial.number, digest)])
    study.enqueue_trial({}, user_attrs={"resume_from": trial.number, RESUME_SHA256: digest})
    with pytest.raises(ArtifactRefused, match="the checkpoint its trial recorded is gone"):
        TrialCheckpoints(trainer, study.ask()).resume()  # type: ignore[arg-type]
