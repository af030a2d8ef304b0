"""Every bad argument of `mlcycle` exits 2 with the reason, never a traceback; a run without a
champion says so instead of printing an endpoint that answers 404."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.core.errors import InvalidArgument
from pipelines.core.settings import Settings, scoped_environ
from pipelines.core.spec import load_spec
from pipelines.io.runs import StepRow
from pipelines.local.follow import check_conf, no_champion_reason
from pipelines.local.local_airflow import api_detail
from pipelines.local.platform import Platform, open_these
from tests.conftest import CHURN_SPEC

SPEC = load_spec(CHURN_SPEC)


def test_a_runs_conf_is_checked_before_anything_is_triggered(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    check_conf({"n_trials": 3, "dry_run": True, "as_of": "2026-06-30T00:00:00Z"}, SPEC, settings)
    cases = {
        "n_trials": ("abc", "--conf n_trials: Input should be a valid integer, unable to parse string as an integer"),
        "as_of": ("soon", "--conf as_of: Input should be a valid datetime"),
        "source_uri": ("/data/x.xlsx", "--conf source_uri: Value error, a .csv or .parquet file"),
    }
    for key, (value, says) in cases.items():
        with pytest.raises(InvalidArgument) as err:
            check_conf({key: value}, SPEC, settings)
        assert str(err.value).startswith(says), str(err.value)
    with pytest.raises(InvalidArgument, match="--conf n_trials: Input should be greater than or equal to 1"):
        check_conf({"n_trials": 0}, SPEC, settings)
    with pytest.raises(InvalidArgument, match="--conf colour, trigger: not a run param; the run params are source_uri"):
        check_conf({"colour": "blue", "trigger": "asset"}, SPEC, settings)  # sorted; `trigger` is the run's own
    with pytest.raises(
        InvalidArgument,
        match="source_uri: /etc/passwd.csv is outside the folders and prefixes this pipeline.s runs may read",
    ):
        check_conf({"source_uri": "/etc/passwd.csv"}, SPEC, settings)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "churn", "--conf", "n_trials=abc"], "--conf n_trials: Input should be a valid integer"),
        (["run", "churn", "--conf", "n_trials"], "--conf 'n_trials': expected key=value"),
        (["run", "nope"], "no pipeline 'nope'"),
        (["data", "generate", "--out", "x.csv", "--customers", "-5"], "data generate: --customers: Input should be"),
        (["data", "generate", "--out", "x.csv", "--fault-rate", "2"], "--fault-rate: Input should be less than"),
        (["labels", "load", "--pipeline", "churn", "s3://B/x.csv"], "labels load s3://B/x.csv: s3.uri: String"),
        (["runs", "show", "--pipeline", "nope"], "no pipeline 'nope'"),
        (["status", "nope"], "no pipeline 'nope'"),
        (["env", "--pipeline", "nope"], "no pipeline 'nope'"),
        (["pod", "render", "--pipeline", "churn", "--step", "train", "--run-id", "bad id!"], "invalid run id"),
    ],
)
def test_a_bad_argument_exits_2_with_the_reason_and_no_traceback(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with scoped_environ({"MLCYCLE_STATE_DIR": str(tmp_path / "state")}):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlcycle: error: ") and says in err, err
    assert "Traceback" not in err and not (tmp_path / "state").exists()  # refused before any service started


def _row(step: str, status: str, outputs: dict[str, object] | None = None, error: str | None = None) -> StepRow:
    return StepRow(step, status, 1, timedelta(seconds=1), outputs or {}, error)


def test_no_champion_says_why() -> None:
    gated = {
        "train": _row("train", "succeeded"),
        "evaluate": _row("evaluate", "succeeded", {"verdict": {"passed": False, "reasons": ["roc_auc 0.51 < 0.6"]}}),
        "promote": _row("promote", "skipped", {"reason": "the challenger failed its gates"}),
    }
    assert no_champion_reason(gated, "success") == "the model failed its gates: roc_auc 0.51 < 0.6"
    failed = {"ingest": _row("ingest", "succeeded"), "validate": _row("validate", "failed", error="3 rows")}
    assert no_champion_reason(failed, "failed") == "the run's validate step failed: 3 rows"
    assert no_champion_reason({}, "failed") == "the run ended failed before a model was promoted"


def test_the_links_of_a_pipeline_without_a_champion_name_no_endpoint(tmp_path: Path) -> None:
    plat = Platform(Settings(state_dir=tmp_path))
    text = open_these(plat, "churn", {"churn": "the model failed its gates: roc_auc 0.51 < 0.6"})
    assert "churn: no champion yet (the model failed its gates: roc_auc 0.51 < 0.6), so no endpoint" in text
    assert "/v1/pipelines/churn" not in text and "curl" not in text
    assert "/v1/pipelines/churn/predict" in open_these(plat, "churn")


def test_an_airflow_api_error_is_read_for_its_detail() -> None:
    body = '{"detail": [{"loc": ["body", "conf", "n_trials"], "msg": "not an integer", "type": "x"}]}'
    assert api_detail(body) == "body.conf.n_trials: not an integer"
    assert api_detail('{"detail": "DAG paused"}') == "DAG paused"
    assert api_detail("<html>bad gateway</html>") == "<html>bad gateway</html>"


def _spec_file(tmp_path: Path, path: str) -> Path:
    import yaml

    from tests.specs import churn_spec_dict

    data = churn_spec_dict()
    data["source"] = {"kind": "file", "path": path}
    spec = tmp_path / "churn.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def test_spec_validate_checks_that_a_file_source_names_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolved as ingest resolves it: a relative path from the project directory
    (`MLCYCLE_PROJECT_DIR`), never from the spec's folder or the current directory."""
    project = tmp_path / "project"
    (project / "data" / "churn").mkdir(parents=True)
    (project / "data" / "churn" / "dt=2026-11-01.csv").write_text("customer_id\n1\n")
    (project / "empty").mkdir()
    monkeypatch.chdir(project / "data")  # where `churn/dt=…` would resolve from the current directory
    ok = {
        "data/churn/dt=2026-11-01.csv": "a file",
        "data/churn": "a folder of data files",
        "data/churn/dt={as_of:%Y-%m-%d}.csv": "a window template some file matches",
        str(project / "data" / "churn") + "/": "an absolute folder",
    }
    bad = {
        "churn/dt=2026-11-01.csv": f"does not exist (a relative path is read from {project})",
        "empty": "the folder holds no .csv or .parquet file",
        "data/churn/day={as_of:%Y-%m-%d}.parquet": "no file matches",
        "missing/dt={as_of:%Y-%m-%d}.csv": f"the folder {project / 'missing'} does not exist",
    }
    with scoped_environ({"MLCYCLE_PROJECT_DIR": str(project), "MLCYCLE_STATE_DIR": str(tmp_path / "state")}):
        for path, what in ok.items():
            assert main(["spec", "validate", str(_spec_file(tmp_path, path))]) == 0, (what, capsys.readouterr().err)
        for path, says in bad.items():
            spec = _spec_file(tmp_path, path)
            assert main(["spec", "validate", str(spec)]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"{spec}: source.path: {path}") and says in err, err
            assert main(["spec", "validate", "--no-data", str(spec)]) == 0  # a spec for another machine's data


def test_the_docs_file_source_example_is_a_valid_source() -> None:
    import re

    import yaml
    from pydantic import TypeAdapter

    from pipelines.core.settings import PROJECT_DIR
    from pipelines.core.spec import FeatureView, FileSource, Source

    page = (PROJECT_DIR / "docs" / "pipelines.md").read_text()  # "Adding a pipeline"
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if "kind: file" in b)
    data = yaml.safe_load(block)
    source = TypeAdapter(Source).validate_python(data["source"])
    assert isinstance(source, FileSource) and source.delimiter == ";" and source.lookback_days == 90
    assert [FeatureView.model_validate(v).ttl_days for v in data["features"]["views"]] == [45]
    documented = set(re.findall(r"^  (\w+):", block, re.M)) | {"ttl_days"}
    assert set(FileSource.model_fields) <= documented  # every field of a file source is in the example


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "sync", "--watch", "-5"], "argument --watch: not a positive number of seconds: -5"),
        (["statsd-exporter", "--udp-port", "99999"], "argument --udp-port: not a port: 99999 (1-65535)"),
        (["mlflow-server", "--port", "http"], "argument --port: not a port: 'http'"),
        (["up", "--timeout", "nan"], "argument --timeout: not a positive number of seconds: nan"),
    ],
)
def test_a_malformed_option_is_argparses_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and says in err and "Traceback" not in err, err


def test_a_reject_without_a_reason_or_of_an_unknown_pipeline_exits_2_before_asking_airflow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on the api-server's port here: a 2 means nothing was sent."""
    env = {"MLCYCLE_STATE_DIR": str(tmp_path), "MLCYCLE_PIPELINES_DIR": str(CHURN_SPEC.parent)}
    with scoped_environ(env):
        assert main(["model", "reject", "churn", "--run", "manual__1"]) == 2
        assert "reject needs a reason (--reason)" in capsys.readouterr().err
        assert main(["model", "approve", "nope", "--run", "manual__1"]) == 2
        assert "no pipeline 'nope'" in capsys.readouterr().err
        assert main(["model", "approve", "churn", "--run", "manual__1", "--user", "carol"]) == 2
        assert "no password of Airflow user 'carol'" in capsys.readouterr().err


def test_only_airflows_database_error_answer_counts_as_transient_and_its_lookup_id_is_read() -> None:
    from pipelines.local.local_airflow import error_id, transient_database_error

    body = (
        '{"detail":{"reason":"Database error","statement":"hidden","orig_error":"hidden","message":"Serious error '
        "when handling your request. Check logs for more details - you will find it in api server when you look for "
        'ID xH16Fxu5"}}'
    )
    assert transient_database_error(500, body) and error_id(body) == "xH16Fxu5"
    assert not transient_database_error(409, body.replace("Database error", "Unique constraint violation"))
    assert not transient_database_error(500, '{"detail":"An error occurred while trying to deserialize Dag"}')
    assert error_id('{"detail":"Not Found"}') is None
