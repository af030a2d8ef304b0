"""A new model family is one module and one registry line: the test-only `plain_logistic` family
(`tests/unit/plain_logistic.py`), once registered, is a family the spec accepts and `kind: auto`
searches, the train step's own Trainer fits it, and its ONNX graph scores raw rows (nulls and
unseen categories included) as the server feeds them, matching its native predictions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest

from pipelines.core.errors import SpecError
from pipelines.core.settings import Settings
from pipelines.core.spec import PipelineSpec, parse_spec
from pipelines.io.storage import LocalStorage
from pipelines.ml.families import load_trained, register, unregister
from pipelines.ml.metrics import encode_label, overall
from pipelines.ml.model import fit_encoding, onnx_session, predict_onnx, session_feed
from pipelines.ml.search import TrialClock, choose
from pipelines.steps.context import StepContext
from pipelines.steps.train import Trainer
from tests.specs import churn_spec_dict
from tests.unit import plain_logistic
from tests.unit.test_families import TOLERANCE, awkward


@pytest.fixture
def registered() -> Iterator[None]:
    register(plain_logistic.FAMILY)  # the one registry line
    yield
    unregister(plain_logistic.NAME)


def auto_spec(**model: Any) -> dict[str, Any]:
    data = churn_spec_dict()
    data["model"].pop("search_space")  # the pinned MLP's
    data["model"].update(kind="auto", **model)
    data.pop("embeddings", None)  # embeddings need the MLP pinned
    return data


def test_the_spec_knows_a_family_only_while_it_is_registered() -> None:
    pinned = churn_spec_dict()
    pinned["model"].update(kind=plain_logistic.NAME, search_space={})
    pinned.pop("embeddings", None)
    with pytest.raises(SpecError, match="'plain_logistic': not a model family"):
        parse_spec(pinned)
    register(plain_logistic.FAMILY)
    try:
        assert parse_spec(pinned).model.families == [plain_logistic.NAME]
    finally:
        unregister(plain_logistic.NAME)
    with pytest.raises(SpecError, match="'plain_logistic': not a model family"):
        parse_spec(pinned)
    assert parse_spec(auto_spec()).model.families == ["linear", "lightgbm", "tabular_mlp"]


def test_auto_searches_a_registered_family_in_its_own_default_space(registered: None) -> None:
    model = parse_spec(auto_spec()).model
    assert model.families == ["linear", "lightgbm", "tabular_mlp", plain_logistic.NAME]
    space = model.space_of(plain_logistic.NAME)
    assert sorted(space) == ["l2", "learning_rate"] and space["l2"].model_dump()["low"] == 1e-4
    bad = auto_spec(search_spaces={plain_logistic.NAME: {"depth": {"type": "int", "low": 1, "high": 3}}})
    with pytest.raises(SpecError, match=r"plain_logistic tunes \['l2', 'learning_rate'\]"):
        parse_spec(bad)


def fit_in_the_train_step(spec: PipelineSpec, churn_df: pd.DataFrame, root: Path) -> tuple[float, bytes, str, Any]:
    """One trial of an auto search, as the train step runs it: the family chosen by the study (the
    test family enqueued, as a new study enqueues each family once), fitted by the step's Trainer."""
    ctx = StepContext(spec, Settings(state_dir=root), "fam-1", LocalStorage(root / "artifacts"), "train")
    train, val = churn_df.iloc[:3000], churn_df.iloc[3000:3800]
    enc = fit_encoding(train, spec.model.numeric_features, spec.model.categorical_features)
    trainer = Trainer(ctx, enc, train, val, "cpu")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"family": plain_logistic.NAME})
    trial = study.ask()
    family, params = choose(trial, spec.model)
    logged: list[dict[str, float]] = []
    value, blob = trainer.fit_family(
        trial, family, params, lambda m, step: logged.append(m), TrialClock(trial, trainer.metric_name)
    )
    assert logged and set(logged[0]) == {f"val_{trainer.metric_name}"}
    return value, blob, family, trial


def test_a_registered_family_trains_in_the_train_step_and_its_onnx_scores_as_served(
    registered: None, churn_df: pd.DataFrame, tmp_path: Path
) -> None:
    spec = parse_spec(auto_spec())
    value, blob, family, trial = fit_in_the_train_step(spec, churn_df, tmp_path)
    assert family == plain_logistic.NAME and sorted(trial.params) == [
        "family",
        "plain_logistic.l2",
        "plain_logistic.learning_rate",
    ]
    assert 0.6 < value <= 1.0
    trained = load_trained(blob)
    assert trained.family == plain_logistic.NAME and trained.embeddings(churn_df.head()) is None
    session = onnx_session(trained.to_onnx().SerializeToString())
    assert [i.name for i in session.get_inputs()] == spec.model.numeric_features + spec.model.categorical_features
    assert [o.name for o in session.get_outputs()] == ["score"]
    rows = awkward(churn_df.iloc[3800:])  # unseen categories, missing numbers, null categories
    (served,) = session.run(["score"], session_feed(session, rows))  # as the server feeds a version
    assert np.isfinite(served).all()
    assert np.abs(trained.predict(rows) - served).max() <= TOLERANCE
    test = churn_df.iloc[3800:]  # scored as evaluate scores a challenger
    y = encode_label(test["churned"], [])
    metrics = overall(y, predict_onnx(session, test), 0.5, "binary")
    assert metrics["roc_auc"] > 0.6
