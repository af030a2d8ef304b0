"""A/B statistics, label parsing and the checked-in Serve config: pure logic, no services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import InvalidArgument
from pipelines.core.spec import Evaluation, PipelineSpec, load_spec
from pipelines.io.labels import label_rows
from pipelines.ml.abtest import compare
from pipelines.ml.metrics import ab_difference, roc_auc
from serving.config import ServingArgs, VersionConfig
from serving.deploy import render_serve_config, serve_config
from tests.conftest import CHURN_SPEC

PROJECT = Path(__file__).resolve().parents[2]


def _group(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores whose ROC AUC grows with `signal`."""
    y = rng.integers(0, 2, n).astype(float)
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
    return y, p


def test_ab_difference_finds_a_real_difference_and_not_a_fake_one() -> None:
    rng = np.random.default_rng(1)
    weak, strong, weak2 = _group(rng, 800, 0.3), _group(rng, 800, 1.2), _group(rng, 800, 0.3)
    real = ab_difference(weak, strong, roc_auc, samples=400, confidence=0.95)
    assert real["difference"] == pytest.approx(roc_auc(*strong) - roc_auc(*weak))
    assert real["difference"] > 0.15 and real["lower"] > 0 and real["p_value"] < 0.01
    null = ab_difference(weak, weak2, roc_auc, samples=400, confidence=0.95)
    assert null["lower"] < 0 < null["upper"] and null["p_value"] > 0.05
    one_class = (np.zeros(50), rng.random(50))
    assert np.isnan(ab_difference(one_class, weak, roc_auc, samples=20, confidence=0.95)["p_value"])


def test_compare_reports_verdicts_and_insufficient_data() -> None:
    rng = np.random.default_rng(2)
    cfg = Evaluation(bootstrap_samples=300)
    (ya, pa), (yb, pb) = _group(rng, 600, 1.2), _group(rng, 600, 0.2)
    rows = [(1, float(p), float(y)) for y, p in zip(ya, pa, strict=True)]
    rows += [(2, float(p), float(y)) for y, p in zip(yb, pb, strict=True)]
    out = compare(cfg, rows, champion=1, challenger=2)
    assert out["status"] == "ok" and out["significant"] and out["verdict"] == "challenger worse"
    assert out["champion"]["labelled"] == 600 and out["difference"] < 0
    flipped = compare(cfg, rows, champion=2, challenger=1)
    assert flipped["verdict"] == "challenger better"
    few = compare(cfg, rows[:600] + rows[600:610], champion=1, challenger=2)
    assert few["status"] == "insufficient" and "v2: 10 labelled" in few["reason"]
    lower_better = compare(Evaluation(primary_metric="log_loss", bootstrap_samples=200), rows, 1, 2)
    assert lower_better["verdict"] == "challenger worse" and lower_better["difference"] > 0


def _spec() -> PipelineSpec:
    return load_spec(CHURN_SPEC)


def test_a_regression_ab_test_compares_errors_and_needs_no_classes() -> None:
    rng = np.random.default_rng(3)
    cfg = Evaluation(primary_metric="rmse", min_primary=None, bootstrap_samples=300)
    y = rng.normal(150, 70, 400)
    rows = [(1, float(v + rng.normal(0, 50)), float(v)) for v in y[:200]]  # the champion errs by 50
    rows += [(2, float(v + rng.normal(0, 20)), float(v)) for v in y[200:]]  # the challenger by 20
    out = compare(cfg, rows, champion=1, challenger=2, kind="regression")
    assert out["status"] == "ok" and out["verdict"] == "challenger better" and out["difference"] < 0
    assert "positives" not in out["champion"]
    same = [(v, s, 150.0) for v, s, _ in rows[:40]] + [(2, 150.0, 150.0)] * 40  # one label value: fine
    assert compare(cfg, same, 1, 2, kind="regression")["status"] == "ok"
    few = compare(cfg, rows[:200] + rows[200:205], 1, 2, kind="regression")
    assert few["status"] == "insufficient" and few["reason"] == "need 30 labelled; v2: 5 labelled"


def test_regression_labels_are_finite_numbers() -> None:
    spec = load_spec(PROJECT / "include" / "pipelines" / "diabetes.yaml")
    now = datetime(2026, 11, 25, tzinfo=UTC)
    rows = label_rows(pd.DataFrame({"patient_id": [1, 2], "progression": [151.0, "87.5"]}), spec, now)
    assert [r[3] for r in rows] == [151.0, 87.5]
    with pytest.raises(InvalidArgument, match="row 1: progression 'inf' is not a finite number") as err:
        label_rows(pd.DataFrame({"patient_id": [1, 2, 3], "progression": [3, "inf", "n/a"]}), spec, now)
    assert "row 2: progression 'n/a' is not a finite number" in str(err.value)


def test_label_rows_accept_spec_or_generic_columns() -> None:
    now = datetime(2026, 11, 25, tzinfo=UTC)
    rid = uuid.uuid4()
    generic = pd.DataFrame({"entity_id": [1, 2], "label": [0, 1], "request_id": [str(rid), None]})
    rows = label_rows(generic, _spec(), now)
    # keyed by request without a time: the load takes the prediction's time
    assert rows == [("churn", rid, "1", 0.0, None), ("churn", None, "2", 1.0, now)]
    spec_named = pd.DataFrame({"customer_id": [7.0], "churned": [1], "event_timestamp": ["2026-11-01T10:00:00Z"]})
    ((_, _, entity, label, at),) = label_rows(spec_named, _spec(), now)
    assert (entity, label, at) == ("7", 1.0, datetime(2026, 11, 1, 10, tzinfo=UTC))


def test_label_rows_refuse_bad_rows_and_name_them() -> None:
    bad = pd.DataFrame(
        {"entity_id": [1, None, 3, 4], "label": [1, 0, 2, "yes"], "request_id": [None, None, None, "not-a-uuid"]}
    )
    with pytest.raises(InvalidArgument, match="3 bad rows, nothing loaded") as err:
        label_rows(bad, _spec(), datetime.now(UTC))
    message = str(err.value)
    assert "row 1: entity_id is empty" in message and "row 2: label 2 is not 0 or 1" in message
    assert "row 3: label 'yes' is not 0 or 1, request_id 'not-a-uuid' is not a UUID" in message
    with pytest.raises(InvalidArgument, match="no column label or churned"):
        label_rows(pd.DataFrame({"entity_id": [1]}), _spec(), datetime.now(UTC))


def test_checked_in_serve_config_is_current_and_valid() -> None:
    from ray.serve.schema import ServeDeploySchema

    specs = [load_spec(p) for p in sorted((PROJECT / "include" / "pipelines").glob("*.yaml"))]
    checked_in = (PROJECT / "include" / "serve" / "serve.yaml").read_text()
    assert checked_in == render_serve_config(specs), "stale: run `mlcycle serve config` and commit it"
    config = serve_config(specs)
    ServeDeploySchema.model_validate(config)
    apps = {a["name"]: a for a in config["applications"]}
    assert sorted(apps) == sorted(s.name for s in specs)  # one application per bundled pipeline
    app = apps["churn"]
    assert app["route_prefix"] == "/v1/pipelines/churn" and app["import_path"] == "serving.app:build_app"
    args = ServingArgs.model_validate(app["args"])
    assert args.versions == [] and args.max_batch_size == specs[0].serving.max_batch_size


def test_ab_pair_follows_the_canary() -> None:
    def args(versions: list[VersionConfig], canary: dict[str, object]) -> ServingArgs:
        return ServingArgs(
            pipeline="p", model_name="m", entity_key="k", features=["a"], versions=versions, canary=canary
        )

    both = [VersionConfig(version=1, weight=80), VersionConfig(version=2, weight=20)]
    assert args(both, {"champion": 1, "challenger": 2}).ab_pair() == (1, 2)
    assert args(both, {}).ab_pair() == (1, 2)
    one = [VersionConfig(version=1, weight=100)]
    assert args(one, {"champion": 1, "rolled_back": 3}).ab_pair() == (1, 3)
    assert args([VersionConfig(version=3, weight=100)], {"champion": 3, "retired": 1}).ab_pair() == (1, 3)
    assert args(one, {"state": "serving", "champion": 1}).ab_pair() is None
    # the roles the A/B block names them by, as the canary block does
    assert args(both, {"champion": 1, "challenger": 2}).ab_roles() == ("champion", "challenger")
    assert args(one, {"champion": 1, "rolled_back": 3}).ab_roles() == ("champion", "rolled_back")
    promoted = args([VersionConfig(version=3, weight=100)], {"state": "promoted", "champion": 3, "retired": 1})
    assert promoted.ab_roles() == ("retired", "champion")  # v3 is the champion now, v1 retired


def test_the_ab_result_names_the_versions_by_their_roles() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400).astype(float)
    rows = [(1, 0.5, float(t)) for t in y] + [(3, 0.9 * t + 0.05, float(t)) for t in y]
    out = compare(Evaluation(bootstrap_samples=100), rows, 1, 3, roles=("retired", "champion"))
    assert out["retired"]["version"] == 1 and out["champion"]["version"] == 3 and "challenger" not in out
    assert out["verdict"] == "champion better" and out["difference"] > 0


def test_a_multiclass_ab_test_scores_the_logged_probabilities_against_class_labels() -> None:
    rng = np.random.default_rng(5)
    cfg = Evaluation(primary_metric="macro_f1", min_primary=None, bootstrap_samples=300)
    y = rng.integers(0, 3, 400)

    def answered(label: int, right: float) -> list[float]:
        guess = label if rng.random() < right else int(rng.integers(0, 3))
        return [0.8 if c == guess else 0.1 for c in range(3)]

    rows = [(1, answered(int(v), 0.5), float(v)) for v in y[:200]]  # the champion: right half the time
    rows += [(2, answered(int(v), 0.9), float(v)) for v in y[200:]]  # the challenger: 90 %
    out = compare(cfg, rows, champion=1, challenger=2, kind="multiclass")
    assert out["status"] == "ok" and out["verdict"] == "challenger better" and out["difference"] > 0.2
    assert "positives" not in out["champion"]


def test_multiclass_labels_are_class_names_stored_as_their_index() -> None:
    spec = load_spec(PROJECT / "include" / "pipelines" / "wine.yaml")
    now = datetime(2026, 11, 25, tzinfo=UTC)
    rows = label_rows(pd.DataFrame({"wine_id": [1, 2, 3], "cultivar": ["barolo", "barbera", "grignolino"]}), spec, now)
    assert [r[3] for r in rows] == [0.0, 2.0, 1.0]  # the order of the contract's `allowed`
    with pytest.raises(InvalidArgument, match="2 bad rows, nothing loaded") as err:
        label_rows(pd.DataFrame({"wine_id": [1, 2, 3], "cultivar": ["barolo", "merlot", 1]}), spec, now)
    assert "row 1: cultivar 'merlot' is not one of the classes ['barolo', 'grignolino', 'barbera']" in str(err.value)
    assert "row 2: cultivar 1 is not one of the classes" in str(err.value)  # an index is no class name
