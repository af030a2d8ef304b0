"""Retention planning (pipelines/core/retention.py): which day partitions to make and drop, which
labels a window still reads, which run folders expire. Pure."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from pipelines.core.retention import (
    BatchRun,
    RunFolder,
    expired_batch_runs,
    expired_runs,
    first_kept_day,
    label_window_days,
    labels_cutoff,
    partition_day,
    partition_name,
    plan_partitions,
    request_log_shortfall,
    run_folders,
    run_of,
)
from pipelines.core.settings import Settings
from pipelines.core.spec import parse_spec
from tests.specs import churn_spec_dict

NOW = datetime(2026, 12, 6, 17, 30, tzinfo=UTC)
TODAY = NOW.date()


def days(*offsets: int) -> list[date]:
    return [TODAY + timedelta(days=n) for n in offsets]


def test_partition_names_round_trip_and_other_tables_are_not_partitions() -> None:
    assert partition_name(date(2026, 1, 2)) == "inference_requests_p20260102"
    assert partition_day("inference_requests_p20260102") == date(2026, 1, 2)
    assert partition_day("inference_requests_default") is None
    assert partition_day("inference_requests_p2026010") is None


def test_a_day_is_dropped_only_once_all_of_it_is_older_than_the_retention() -> None:
    # 3 days at 17:30: everything from Dec 3 17:30 on must stay, so Dec 3 stays, Dec 2 goes
    assert first_kept_day(NOW, 3) == date(2026, 12, 3)
    plan = plan_partitions(days(*range(-9, 8)), [], NOW, keep_days=3, ahead=7)
    assert plan.drop == tuple(days(-9, -8, -7, -6, -5, -4))
    assert plan.create == ()
    assert plan.default_before == datetime(2026, 12, 3, tzinfo=UTC)


def test_partitions_are_made_ahead_and_for_kept_days_whose_rows_sit_in_default() -> None:
    plan = plan_partitions(days(0, 1), days(-1, -5, 0), NOW, keep_days=3, ahead=3)
    # ahead: today .. today+3 (today and tomorrow exist); yesterday's rows in DEFAULT get their
    # partition; the rows of 5 days ago are past the retention: deleted from DEFAULT, no partition
    assert plan.create == tuple(days(-1, 2, 3))
    assert plan.drop == ()


def test_zero_days_keeps_only_today() -> None:
    plan = plan_partitions(days(-2, -1, 0, 1), [], NOW, keep_days=0, ahead=1)
    assert plan.drop == tuple(days(-2, -1))
    assert plan.create == ()


def spec_with(**sections: object):  # type: ignore[no-untyped-def]
    data = churn_spec_dict(merge=True, **sections)
    data["source"] = {**data["source"], "feedback": False}
    return parse_spec(data)


def test_the_label_window_is_the_longest_window_that_reads_labels() -> None:
    assert label_window_days(spec_with(drift={"window_hours": 48}, canary={"shadow_hours": 24})) == 2.0
    spec = spec_with(drift={"window_hours": 48}, canary={"shadow_hours": 72})
    assert label_window_days(spec) == 3.0
    data = churn_spec_dict(merge=True, drift={"window_hours": 24})
    data["source"] = {**data["source"], "feedback": True, "lookback_days": 200}
    assert label_window_days(parse_spec(data)) == 200
    data["source"] = {**data["source"], "feedback": True, "lookback_days": None}
    assert label_window_days(parse_spec(data)) is None  # the feedback reads every label


def test_a_request_log_shorter_than_a_label_window_is_reported() -> None:
    assert request_log_shortfall(spec_with(drift={"window_hours": 48}), 30) is None
    data = churn_spec_dict(merge=True)
    data["source"] = {**data["source"], "feedback": True, "lookback_days": 160}
    warning = request_log_shortfall(parse_spec(data), 30)
    assert warning and "over 160 days, the request log keeps 30 days" in warning


def test_labels_are_kept_for_the_longer_of_the_setting_and_the_window() -> None:
    assert labels_cutoff(NOW, 7, 200.0) == NOW - timedelta(days=200)
    assert labels_cutoff(NOW, 90, 2.0) == NOW - timedelta(days=90)
    assert labels_cutoff(NOW, 0, 1.5) == NOW - timedelta(days=1.5)
    assert labels_cutoff(NOW, 0, None) is None


def test_run_folders_group_a_pipelines_objects_by_run() -> None:
    t0, t1 = NOW - timedelta(days=5), NOW - timedelta(days=1)
    objects = [
        ("churn/r1/ingest/snapshot.parquet", 100, t0),
        ("churn/r1/train/model.onnx", 50, t1),
        ("churn/r2/ingest/snapshot.parquet", 7, t0),
        ("churn/loose.json", 1, t0),  # no run folder
        ("churned/r3/ingest/snapshot.parquet", 9, t0),  # another pipeline
    ]
    assert run_of("churn/r1/ingest/snapshot.parquet", "churn") == "r1"
    assert run_folders("churn", objects) == [
        RunFolder("r1", ("churn/r1/ingest/snapshot.parquet", "churn/r1/train/model.onnx"), 150, t1),
        RunFolder("r2", ("churn/r2/ingest/snapshot.parquet",), 7, t0),
    ]


def folder(run: str, age_days: float) -> RunFolder:
    return RunFolder(run, (f"churn/{run}/x/y",), 1, NOW - timedelta(days=age_days))


@pytest.mark.parametrize(
    ("runs_days", "expected"),
    [(0, ["old", "new"]), (3, ["old"]), (30, [])],
)
def test_runs_expire_after_their_last_write_except_lineage_and_running(runs_days: int, expected: list[str]) -> None:
    folders = [folder("old", 10), folder("new", 1), folder("champion", 40), folder("busy", 40)]
    out = expired_runs(folders, NOW, runs_days, lineage={"champion"}, running={"busy"})
    assert [f.run_id for f in out] == expected


def test_retention_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCYCLE_RETENTION_REQUEST_LOG_DAYS", "3")
    monkeypatch.setenv("MLCYCLE_RETENTION_RUNS_DAYS", "0")
    settings = Settings()
    assert (settings.retention.request_log_days, settings.retention.runs_days) == (3, 0)
    assert settings.retention.labels_days == 90
    assert settings.pod_env()["MLCYCLE_RETENTION_REQUEST_LOG_DAYS"] == "3"  # a step pod gets them
    monkeypatch.setenv("MLCYCLE_RETENTION_LABELS_DAYS", "-1")
    with pytest.raises(ValueError, match="labels_days"):
        Settings()


def test_old_batch_runs_expire_except_the_newest_published_and_a_running_one() -> None:
    old, fresh = NOW - timedelta(days=31), NOW - timedelta(days=29)
    runs = [
        BatchRun("published-old", old, False, old),
        BatchRun("latest-old", old, False, old + timedelta(hours=1)),  # the view's: stays however old
        BatchRun("failed-old", old, False, None),
        BatchRun("running-old", old, True, None),
        BatchRun("fresh", fresh, False, fresh),
    ]
    # no run was published after `failed-old`'s: its publish may still come, so its rows stay
    assert expired_batch_runs(runs[:4], NOW, 30) == ["published-old"]
    assert expired_batch_runs(runs[:4], NOW, 0) == ["published-old"]
    # once `fresh` is published, it is the view's: the old latest and the superseded failure go
    assert expired_batch_runs(runs, NOW, 30) == ["failed-old", "latest-old", "published-old"]
    assert expired_batch_runs(runs, NOW, 0) == ["failed-old", "latest-old", "published-old"]
    assert expired_batch_runs([], NOW, 0) == []
