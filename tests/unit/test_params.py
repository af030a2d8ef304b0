"""Run parameters: the Trigger DAG form's values, validated by Airflow and applied to the spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core.errors import InvalidArgument
from pipelines.core.params import ENV, RunParams, apply, from_env
from pipelines.core.spec import FileSource, S3Source, load_spec
from tests.conftest import CHURN_SPEC

SPEC = load_spec(CHURN_SPEC)


def test_no_params_leave_the_spec_alone() -> None:
    assert apply(SPEC, from_env({})) is SPEC


def test_source_override_and_trial_budget() -> None:
    s3 = apply(SPEC, RunParams(source_uri="s3://data-bucket/churn/2026-11.parquet", n_trials=3))
    assert isinstance(s3.source, S3Source) and s3.source.uri == "s3://data-bucket/churn/2026-11.parquet"
    assert s3.training.n_trials == 3 and s3.training.max_epochs == SPEC.training.max_epochs
    local = apply(SPEC, from_env({ENV: json.dumps({"source_uri": "/data/churn.csv", "n_trials": None})}))
    assert isinstance(local.source, FileSource) and local.source.path == "/data/churn.csv"
    assert local.training == SPEC.training


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"n_trials": 0}', "greater than or equal to 1"),
        ('{"source_uri": "/data/churn.xlsx"}', "a .csv or .parquet file"),
        ('{"colour": "blue"}', "Extra inputs are not permitted"),
        ("{not json", "MLCYCLE_RUN_PARAMS"),
    ],
)
def test_bad_params_are_refused_with_the_reason(raw: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        from_env({ENV: raw})


def test_a_bad_s3_uri_is_refused_by_the_spec() -> None:
    with pytest.raises(InvalidArgument, match="run parameters"):
        apply(SPEC, RunParams(source_uri="s3://X/churn.csv"))


def test_airflow_validates_the_form_before_a_run() -> None:
    from airflow.sdk.definitions.param import ParamsDict

    from pipelines.core.params import airflow_params

    form = ParamsDict(airflow_params())
    assert form.validate() == {"source_uri": None, "n_trials": None, "dry_run": False, "as_of": None}
    form["n_trials"] = 5
    assert form.validate()["n_trials"] == 5
    bad = ParamsDict(airflow_params())
    with pytest.raises(ValueError, match="n_trials"):  # refused as it is set, before any run
        bad["n_trials"] = -1
    with pytest.raises(ValueError, match="source_uri"):  # not a CSV/Parquet file: refused by the form
        bad["source_uri"] = "s3://bucket/data.json"
    bad["source_uri"] = "s3://bucket/DATA.CSV.gz"


def test_the_form_shows_the_param_names_and_the_specs_defaults() -> None:
    from airflow.sdk.definitions.param import ParamsDict

    from pipelines.core.params import FORM, airflow_params

    params = airflow_params(SPEC)
    assert [params[name].schema["title"] for name in FORM] == list(FORM)
    assert ParamsDict(params).validate()["n_trials"] == SPEC.training.n_trials
    assert "the spec's synthetic source" in params["source_uri"].description


def test_the_form_takes_a_source_uri_only_under_the_pipelines_prefixes(tmp_path: Path) -> None:
    """The lifecycle DAG the factory builds: its `source_uri` param refuses another pipeline's
    objects, any host file, the artifact root and `..`, as Airflow validates the Trigger form."""
    from airflow.sdk.definitions.param import ParamsDict

    from operators.factory import lifecycle_dag
    from pipelines.core.settings import Settings
    from pipelines.core.spec import parse_spec
    from tests.specs import churn_spec_dict

    settings = Settings(project_dir=tmp_path / "project", state_dir=tmp_path / "state", artifact_root="s3://lake/ml")
    spec = parse_spec(churn_spec_dict(source={"kind": "s3", "uri": "s3://lake/churn/in.parquet"}))
    dag = lifecycle_dag(spec, spec.lifecycle_steps(), settings)
    data = tmp_path / "state" / "data"
    for taken in ("s3://lake/churn/2026-12.parquet", f"{data}/x.csv", "s3://lake/churn/deep/X.CSV.gz", None):
        form = ParamsDict(dag.params)
        form["source_uri"] = taken
        assert form.validate()["source_uri"] == taken
    for refused in (
        "s3://lake/tumours/in.parquet",  # another pipeline's data in the shared bucket
        "s3://lake/ml/tumours/r1/features/train.parquet",  # the artifact root
        "s3://lake/churn/../tumours/in.parquet",
        "/etc/passwd.csv",
        f"{data}/../pg/x.csv",
        "s3://lake/churnier/in.parquet",
    ):
        with pytest.raises(ValueError, match="source_uri"):
            ParamsDict(dag.params)["source_uri"] = refused
    assert "only under" in dag.params.get_param("source_uri").description and "s3://lake/churn/" in (
        dag.params.get_param("source_uri").description
    )
    # relative to the project dir, as ingest reads a relative path
    local = parse_spec(churn_spec_dict(source={"kind": "file", "path": "data/churn/in.csv"}))
    form = ParamsDict(lifecycle_dag(local, local.lifecycle_steps(), settings).params)
    form["source_uri"] = "data/churn/2026.csv"
    form["source_uri"] = str(settings.project_dir / "data" / "churn" / "2026.csv")
    with pytest.raises(ValueError, match="source_uri"):
        form["source_uri"] = "data/other/2026.csv"
