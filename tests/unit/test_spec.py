from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.core.errors import SpecError
from pipelines.core.spec import TASK_METRICS, PipelineSpec, load_spec, load_specs, parse_spec
from tests.conftest import CHURN_SPEC, churn_spec_dict, write_spec


def test_bundled_churn_spec_is_valid() -> None:
    spec = load_spec(CHURN_SPEC)
    assert spec.name == "churn"
    assert spec.source.kind == "synthetic"
    assert spec.features.feature_service == "churn_features_v1"
    assert spec.resources.for_step("train").gpu == 1
    assert spec.resources.for_step("ingest").gpu == 0
    assert spec.canary.steps[-1] == 100


def test_spec_models_are_frozen() -> None:
    spec = load_spec(CHURN_SPEC)
    with pytest.raises(Exception, match="frozen"):
        spec.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (
            lambda d: d["contract"]["columns"]["plan"].update(dtype="text"),
            "contract.columns.plan.dtype",
            "Input should be",
        ),
        (lambda d: d.update(colour="blue"), "colour", "Extra inputs are not permitted"),
        (lambda d: d["training"].update(n_trials=0), "training.n_trials", "greater than or equal to 1"),
        (lambda d: d["canary"].update(steps=[5, 50, 25, 100]), "canary.steps", "steps must increase"),
        (lambda d: d["canary"].update(steps=[5, 50]), "canary.steps", "last step must be 100"),
        (lambda d: d["source"].update(kind="ftp"), "source", "does not match any of the expected tags"),
        (lambda d: d["source"].update(customers=-3), "source.customers", "greater than or equal to 10"),
        (
            lambda d: d.update(source={"kind": "dataset", "name": "wine", "months": 0}),
            "source.months",
            "greater than or equal to 1",
        ),
        (
            lambda d: d["contract"]["columns"].update(dataset={"dtype": "text"}),  # a column named like a tag
            "contract.columns.dataset.dtype",
            "Input should be",
        ),
        (
            lambda d: d["model"]["search_space"].update(dropout={"type": "float", "low": "x", "high": 1}),
            "model.search_space.dropout.low",
            "valid number",
        ),
        (
            lambda d: d["resources"]["steps"]["train"].update(gpu=-1),
            "resources.steps.train.gpu",
            "greater than or equal",
        ),
        (lambda d: d["resources"]["steps"].update(trian={"cpu": "1"}), "resources.steps", "unknown steps ['trian']"),
        (lambda d: d["features"]["split"].update(train=0.9), "features.split", "must be 1"),
        (
            lambda d: d["model"]["search_space"]["layers"].update(low=5, high=1),
            "model.search_space",
            "low (5) is greater",
        ),
        (lambda d: d["contract"]["columns"].pop("churned"), "label.column", "'churned' (the label) is not a column"),
        (
            lambda d: d["features"]["views"][1]["features"].append("spend_90d"),
            "features.views[1].features[4]",
            "'spend_90d' (a feature of view 'customer_activity') is not a column of the contract",
        ),
        (
            lambda d: d["model"]["numeric_features"].append("customer_id"),
            "model.numeric_features[6]",
            "'customer_id' is not a feature of any view of the feature service (features.views)",
        ),
        (lambda d: d["drift"].update(ignore=["plan", "colour"]), "drift.ignore[1]", "'colour' is not a feature"),
        (
            lambda d: d["contract"]["columns"]["event_timestamp"].update(dtype="string"),
            "contract.columns.event_timestamp.dtype",
            "must be a datetime column",
        ),
        (
            lambda d: d["features"].update(feature_service="churn_features"),
            "features.feature_service",
            "should match pattern",
        ),
        (
            lambda d: d["contract"]["columns"]["region"].update(min=3),
            "contract.columns.region",
            "min/max apply to int and float",
        ),
        (
            lambda d: d["model"].update(numeric_features=[], categorical_features=[]),
            "model",
            "needs at least one feature",
        ),
        (
            lambda d: d["model"].update(categorical_features=["plan", "tenure_months"]),
            "model",
            "['tenure_months'] listed as numeric and as categorical",
        ),
        (lambda d: d["model"].update(kind="forest"), "model.kind", "'forest': not a model family; kind is one of"),
        (lambda d: d["model"].update(kind=["linear", "auto"]), "model.kind", "'auto': not a model family"),
        (
            lambda d: d["model"].update(kind=["lightgbm", "lightgbm"]),
            "model",
            "names a family twice",
        ),
        (
            lambda d: (d["model"].update(kind="auto"), d.pop("embeddings")),
            "model",
            "search_space is the space of a pinned family; with several, use search_spaces",
        ),
        (
            lambda d: (
                d["model"].update(
                    kind="auto", search_spaces={"lightgbm": {"depth": {"type": "int", "low": 1, "high": 3}}}
                ),
                d["model"].pop("search_space"),
                d.pop("embeddings"),
            ),
            "model",
            "unknown search-space parameters ['depth']; lightgbm tunes",
        ),
        (
            lambda d: (
                d["model"].update(kind=["linear"], search_spaces={"lightgbm": {}}),
                d["model"].pop("search_space"),
                d.pop("embeddings"),
            ),
            "model",
            "search_spaces names ['lightgbm'], which the search does not try (['linear'])",
        ),
        (
            lambda d: (d["model"].update(kind="auto"), d["model"].pop("search_space")),
            "model.kind",
            "auto: embeddings need the tabular_mlp family",
        ),
        (
            lambda d: d["training"].update(n_trials=None, timeout_s=None, time_budget_s=None),
            "training",
            "set n_trials, time_budget_s (or timeout_s)",
        ),
        (
            lambda d: d["label"].update(kind="ordinal"),
            "label.kind",
            "Input should be 'binary', 'multiclass' or 'regression'",
        ),
        (
            lambda d: (d["label"].update(kind="multiclass"), d["evaluation"].pop("primary_metric")),
            "contract.columns.churned.allowed",
            "a multiclass label must be a string column whose `allowed` lists its classes (two or more)",
        ),
        (
            lambda d: d["label"].update(kind="multiclass", column="plan"),  # churn's gates name roc_auc
            "evaluation.primary_metric",
            "roc_auc is not a metric of a multiclass label; one of macro_f1, accuracy, multi_log_loss",
        ),
        (
            lambda d: d["label"].update(kind="regression"),  # churn's gates name roc_auc
            "evaluation.primary_metric",
            "roc_auc is not a metric of a regression label; one of rmse, mae, r2",
        ),
        (
            lambda d: (d["label"].update(kind="regression", column="plan"), d["evaluation"].pop("primary_metric")),
            "contract.columns.plan.dtype",
            "a regression label must be an int or float column",
        ),
    ],
)
def test_bad_specs_name_the_field(mutate, path: str, message: str) -> None:  # type: ignore[no-untyped-def]
    data = churn_spec_dict()
    mutate(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, "churn.yaml")
    text = str(err.value)
    assert f"churn.yaml: {path}: " in text, text
    assert message in text, text


def test_auto_searches_every_family_cheapest_first_each_in_its_own_space() -> None:
    data = churn_spec_dict()
    data.pop("embeddings")
    data["model"].pop("search_space")
    data["model"]["kind"] = "auto"
    data["model"]["search_spaces"] = {"lightgbm": {"num_leaves": {"type": "int", "low": 8, "high": 16}}}
    data["training"].update(n_trials=None, time_budget_s=600)
    spec = parse_spec(data, "churn.yaml")
    assert spec.model.families == ["linear", "lightgbm", "tabular_mlp"]
    assert set(spec.model.space_of("lightgbm")) == {"num_leaves"}  # the spec's, not the default
    assert "alpha" in spec.model.space_of("linear") and "hidden_units" in spec.model.space_of("tabular_mlp")
    data["model"]["kind"] = ["tabular_mlp", "lightgbm"]
    assert parse_spec(data, "churn.yaml").model.families == ["lightgbm", "tabular_mlp"]  # cheapest first
    bundled = parse_spec(churn_spec_dict(), "churn.yaml").model
    assert bundled.families == ["tabular_mlp"] and bundled.space_of("tabular_mlp") == bundled.search_space


@pytest.mark.parametrize("drop", ["numeric_features", "categorical_features"])
def test_a_model_may_take_one_kind_of_feature_only(drop: str) -> None:
    data = churn_spec_dict()
    data["model"][drop] = []
    data["drift"]["ignore"] = []
    spec = parse_spec(data, "churn.yaml")
    assert getattr(spec.model, drop) == []


def test_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- a list")
    with pytest.raises(SpecError, match="a YAML mapping"):
        load_spec(bad)
    other = write_spec(tmp_path, "churn")
    renamed = other.rename(tmp_path / "retention.yaml")
    with pytest.raises(SpecError, match="must match the file name 'retention'"):
        load_spec(renamed)


def test_load_specs_reads_every_spec(tmp_path: Path) -> None:
    write_spec(tmp_path, "alpha")
    write_spec(tmp_path, "beta")
    (tmp_path / "README.md").write_text("not a spec")
    assert [s.name for s in load_specs(tmp_path)] == ["alpha", "beta"]


def test_cli_validate_and_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "validate", str(CHURN_SPEC)]) == 0
    assert "ok (churn" in capsys.readouterr().out
    data = churn_spec_dict()
    data["contract"]["max_bad_fraction"] = 2
    path = tmp_path / "churn.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    assert main(["spec", "validate", str(path)]) == 2
    assert "contract.max_bad_fraction: Input should be less than or equal to 1" in capsys.readouterr().err
    assert main(["spec", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "PipelineSpec"
    assert {"source", "contract", "features", "training", "canary", "drift"} <= set(schema["properties"])
    assert schema == PipelineSpec.model_json_schema()


def test_a_multiclass_label_takes_its_classes_from_the_contract_and_its_kinds_defaults() -> None:
    spec = load_spec(Path(__file__).resolve().parents[2] / "include" / "pipelines" / "wine.yaml")
    assert spec.label.kind == "multiclass" and spec.classes == ["barolo", "grignolino", "barbera"]
    data = churn_spec_dict()
    data["label"] = {"column": "plan", "kind": "multiclass"}
    data["evaluation"] = {k: v for k, v in data["evaluation"].items() if k not in ("primary_metric", "min_primary")}
    plan = parse_spec(data, "plans.yaml")
    assert plan.classes == data["contract"]["columns"]["plan"]["allowed"]  # in the contract's order
    assert plan.evaluation.primary_metric == "macro_f1" and plan.evaluation.min_primary is None
    assert parse_spec(churn_spec_dict(), "churn.yaml").classes == []  # a binary label has none


def test_the_bundled_regression_spec_takes_its_kinds_defaults() -> None:
    spec = load_spec(Path(__file__).resolve().parents[2] / "include" / "pipelines" / "diabetes.yaml")
    assert spec.label.kind == "regression" and spec.source.kind == "dataset"
    assert spec.evaluation.primary_metric == "rmse" and spec.model.families == ["linear", "lightgbm", "tabular_mlp"]
    data = churn_spec_dict()
    data["label"] = {"column": "monthly_charges", "kind": "regression"}
    data["evaluation"] = {k: v for k, v in data["evaluation"].items() if k not in ("primary_metric", "min_primary")}
    plain = parse_spec(data, "charges.yaml")
    assert plain.evaluation.primary_metric == "rmse" and plain.evaluation.min_primary is None  # no bound in units
    assert parse_spec(churn_spec_dict(), "churn.yaml").evaluation.primary_metric == "roc_auc"


def test_primary_metric_takes_every_metric_of_the_labels_kind_and_no_other() -> None:
    enum = PipelineSpec.model_json_schema()["$defs"]["Evaluation"]["properties"]["primary_metric"]["enum"]
    assert enum == [m for kind in TASK_METRICS.values() for m in kind]  # one list, read from the types
    data = churn_spec_dict()
    data["evaluation"]["primary_metric"] = "calibration_error"  # a binary metric the old hand-kept list lacked
    assert parse_spec(data, "churn.yaml").evaluation.primary_metric == "calibration_error"
    data["evaluation"]["primary_metric"] = "brier"
    with pytest.raises(SpecError, match="evaluation.primary_metric: Input should be 'roc_auc'"):
        parse_spec(data, "churn.yaml")


def test_every_field_of_the_schema_carries_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    """`mlcycle spec schema` documents the spec: an editor shows each field's description."""
    assert main(["spec", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    models = {"PipelineSpec": schema, **schema["$defs"]}
    fields = [(f"{model}.{name}", prop) for model, d in models.items() for name, prop in d["properties"].items()]
    bare = [name for name, prop in fields if not str(prop.get("description", "")).strip()]
    assert len(fields) > 150, len(fields)  # every model of the spec was read
    assert not bare, f"{len(bare)} of {len(fields)} fields have no description: {bare}"


def test_a_rare_positive_class_is_judged_by_pr_auc_unless_the_spec_names_a_metric() -> None:
    """A binary spec that names no primary metric is judged by ROC AUC (bound 0.6) at a common
    positive rate and by PR AUC (no bound) at most `training.imbalance_rate`; a metric or a bound
    the document sets keeps ROC AUC; other kinds never change; a run's parameters keep what was unset."""
    from pipelines.core.params import RunParams, apply

    data = churn_spec_dict()
    data["evaluation"] = {k: v for k, v in data["evaluation"].items() if k not in ("primary_metric", "min_primary")}
    unset = parse_spec(data, "churn.yaml").evaluation
    assert (unset.primary_metric, unset.min_primary) == ("roc_auc", 0.6)
    rare = unset.for_positive_rate("binary", 0.04, 0.1)
    assert (rare.primary_metric, rare.min_primary) == ("pr_auc", None)
    assert unset.for_positive_rate("binary", 0.1, 0.1) == rare  # at most the rate
    assert (
        unset.for_positive_rate("binary", 0.11, 0.1) == unset and unset.for_positive_rate("binary", None, 0.1) == unset
    )
    assert unset.judged_by("pr_auc=0.412300") == rare  # a version's tag names the metric it was promoted on
    assert unset.judged_by("roc_auc=0.81") == unset
    # a bound the document sets was written for the documented default: the metric stays roc_auc
    bounded = parse_spec({**data, "evaluation": {**data["evaluation"], "min_primary": 0.7}}, "churn.yaml").evaluation
    assert bounded.for_positive_rate("binary", 0.04, 0.1) == bounded and bounded.primary_metric == "roc_auc"
    named = parse_spec(churn_spec_dict(), "churn.yaml").evaluation  # the bundled spec names roc_auc
    assert named.for_positive_rate("binary", 0.01, 0.1) == named and named.judged_by("pr_auc") == named
    assert unset.for_positive_rate("regression", 0.01, 0.1) == unset
    # a drift-triggered run's source override re-reads the spec: the metric stays a default
    spec = apply(parse_spec(data, "churn.yaml"), RunParams(source_uri="s3://bucket/fresh.parquet", n_trials=2))
    assert spec.training.n_trials == 2
    assert spec.evaluation.for_positive_rate("binary", 0.04, 0.1).primary_metric == "pr_auc"
