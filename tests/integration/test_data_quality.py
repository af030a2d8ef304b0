"""Bad data never becomes a training set: each fault gives a clear error or a quarantine."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.errors import DataQualityError, SourceError, StepInputError
from pipelines.core.settings import Settings
from pipelines.io.storage import open_storage, read_json, read_parquet
from tests.integration.helpers import run, small_spec

pytestmark = pytest.mark.integration


def _file_spec(settings: Settings, df: pd.DataFrame, tmp_path: Path, fmt: str = "csv", **overrides) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / f"source.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    small_spec(settings, {"kind": "file", "path": str(path)}, **overrides)
    return path


def _training_keys(settings: Settings, run_id: str) -> set[tuple[int, str]]:
    storage = open_storage(settings)
    keys: set[tuple[int, str]] = set()
    for split in ("train", "validation", "test"):
        part = read_parquet(storage, f"churn/{run_id}/features/{split}.parquet")
        keys |= set(zip(part["customer_id"], part["event_timestamp"].astype(str), strict=True))
    return keys


def _faulty(churn_df: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, str]]:
    """A copy with one fault in each of a few rows, and the reason expected for each."""
    df = churn_df.copy().astype({"support_calls_30d": object})
    faults = {
        10: ("usage_hours_30d", None, "usage_hours_30d: is null"),
        20: ("support_calls_30d", "many", "support_calls_30d: not a number ('many')"),
        30: ("monthly_charges", -12.5, "monthly_charges: below the minimum (-12.5)"),
        40: ("plan", "platinum", "plan: not an allowed value ('platinum')"),
        50: ("event_timestamp", "not-a-date", "event_timestamp: not a timestamp ('not-a-date')"),
    }
    expected = {}
    df["event_timestamp"] = df["event_timestamp"].astype(str)
    for row, (col, value, reason) in faults.items():
        df.loc[row, col] = value
        expected[row] = reason
    dup = df.loc[[60]].copy()
    df = pd.concat([df, dup], ignore_index=True)
    expected[len(df) - 1] = "duplicate key customer_id, event_timestamp"
    return df, expected


def test_few_bad_rows_are_quarantined_with_reasons(workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path) -> None:
    df, expected = _faulty(churn_df)
    _file_spec(workspace, df, tmp_path)
    run(workspace, "ingest", "q-1")
    report = run(workspace, "validate", "q-1")
    assert report["passed"] is True
    assert report["bad_rows"] == len(expected)
    storage = open_storage(workspace)
    quarantine = read_parquet(storage, "churn/q-1/validate/quarantine.parquet")
    assert dict(zip(quarantine["_row"], quarantine["_reasons"], strict=True)) == expected
    assert storage.exists("churn/q-1/validate/report.html")
    run(workspace, "features", "q-1")
    training = _training_keys(workspace, "q-1")
    assert len(training) == len(df) - len(expected)
    for row in expected:
        if row != len(df) - 1:  # the duplicate's first copy is good and stays
            key = (int(churn_df.loc[row, "customer_id"]), str(churn_df.loc[row, "event_timestamp"]))
            assert key not in training


def test_too_many_bad_rows_reject_the_data(workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path) -> None:
    df = churn_df.copy()
    df.loc[df.index[:200], "monthly_charges"] = -1.0  # ~4 % bad, the spec tolerates 2 %
    _file_spec(workspace, df, tmp_path, fmt="parquet")
    run(workspace, "ingest", "rej-1")
    with pytest.raises(DataQualityError) as err:
        run(workspace, "validate", "rej-1")
    assert "200 of" in str(err.value) and "contract.max_bad_fraction" in str(err.value)
    storage = open_storage(workspace)
    report = read_json(storage, "churn/rej-1/validate/report.json")
    assert report["passed"] is False
    assert report["reasons"] == {"monthly_charges: below the minimum": 200}
    assert storage.exists("churn/rej-1/validate/report.html")
    assert not storage.exists("churn/rej-1/validate/validated.parquet")
    with pytest.raises(StepInputError, match="validation did not pass"):
        run(workspace, "features", "rej-1")
    assert not storage.list("churn/rej-1/features")


def test_missing_columns_reject_the_data(workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path) -> None:
    _file_spec(workspace, churn_df.drop(columns=["region", "churned"]), tmp_path)
    run(workspace, "ingest", "miss-1")
    with pytest.raises(DataQualityError, match=r"columns missing from the data: \['region', 'churned'\]"):
        run(workspace, "validate", "miss-1")


def test_failed_expectation_rejects_the_data(workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path) -> None:
    df = churn_df.copy()
    df["churned"] = 0  # every row valid, the distribution is not
    _file_spec(workspace, df, tmp_path)
    run(workspace, "ingest", "exp-1")
    with pytest.raises(DataQualityError, match="expectation failed: expect_column_mean_to_be_between.*churned"):
        run(workspace, "validate", "exp-1")


def test_empty_and_truncated_files_fail_at_ingest(workspace: Settings, churn_df: pd.DataFrame, tmp_path: Path) -> None:
    path = _file_spec(workspace, churn_df, tmp_path, fmt="parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        run(workspace, "ingest", "trunc-1")
    path.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty \(0 bytes\)") as empty:
        run(workspace, "ingest", "empty-1")
    assert empty.value.exit_code == 3  # rejected data, as docs/platform.md says; never retried
    storage = open_storage(workspace)
    assert not storage.list("churn/trunc-1") and not storage.list("churn/empty-1")


def test_cli_exit_codes_and_messages(
    workspace: Settings,
    churn_df: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipelines.cli import main

    df = churn_df.copy()
    df.loc[df.index[:300], "plan"] = "gold"
    _file_spec(workspace, df, tmp_path)
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(workspace.pipelines_dir))
    monkeypatch.setenv("MLCYCLE_ARTIFACT_ROOT", str(workspace.artifact_root))
    assert main(["step", "ingest", "--pipeline", "churn", "--run-id", "cli-1"]) == 0
    assert main(["step", "validate", "--pipeline", "churn", "--run-id", "cli-1"]) == 3
    err = capsys.readouterr().err
    assert "the data is rejected" in err and "report:" in err
    assert main(["step", "ingest", "--pipeline", "churn", "--run-id", "../x"]) == 2
    assert "invalid run id" in capsys.readouterr().err
