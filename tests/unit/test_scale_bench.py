"""bench/scale.py's pure parts (the rows it writes, the growth per 10x, the exact-size window) and
tests/measure.py, which measures a step's peak memory from a parent process."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pipelines.ml.datagen import ChurnConfig, generate_churn
from tests.measure import measured_run, parse_measured

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_row_has_the_issues_shape(scale: ModuleType) -> None:
    row = scale.result_row(100_000, "ingest", 12.34567, 456.789, "before")
    assert row == {
        "rows": 100_000,
        "step": "ingest",
        "seconds": 12.346,
        "peak_rss_mib": 456.8,
        "engine": "local",
        "code": "before",
    }
    assert tuple(row) == scale.KEYS


def test_growth_is_per_10x_rows_whatever_the_sizes(scale: ModuleType) -> None:
    assert scale.per_10x(10.0, 50.0, 100_000, 1_000_000) == pytest.approx(5.0)
    # 100x rows, 100x time: linear, 10x per 10x rows
    assert scale.per_10x(1.0, 100.0, 100_000, 10_000_000) == pytest.approx(10.0)
    # flat memory over 100x rows: 1x
    assert scale.per_10x(300.0, 300.0, 100_000, 10_000_000) == pytest.approx(1.0)
    assert scale.per_10x(0.0, 5.0, 1, 10) is None
    assert scale.per_10x(1.0, 5.0, 10, 10) is None


def test_the_table_orders_steps_and_grows_from_the_previous_size(scale: ModuleType) -> None:
    rows = [
        scale.result_row(1_000_000, "validate", 80.0, 2000.0, "before"),
        scale.result_row(100_000, "validate", 10.0, 400.0, "before"),
        scale.result_row(100_000, "ingest", 2.0, 200.0, "before"),
        scale.result_row(1_000_000, "ingest", 14.0, 300.0, "before"),
        scale.result_row(100_000, "ingest", 1.0, 150.0, "after"),
    ]
    table = scale.growth_table(rows)
    assert [(t["code"], t["step"], t["rows"]) for t in table] == [
        ("after", "ingest", 100_000),
        ("before", "ingest", 100_000),
        ("before", "ingest", 1_000_000),
        ("before", "validate", 100_000),
        ("before", "validate", 1_000_000),
    ]
    assert table[1]["seconds_x"] is None and table[1]["rss_x"] is None
    assert table[2]["seconds_x"] == pytest.approx(7.0) and table[2]["rss_x"] == pytest.approx(1.5)
    assert table[4]["seconds_x"] == pytest.approx(8.0) and table[4]["rss_x"] == pytest.approx(5.0)
    lines = scale.table_lines(rows)
    assert len(lines) == 2 + len(rows)
    assert lines[4] == "| ingest | 1,000,000 | 14.0 | 7.00x | 300 | 1.50x | local | before |"


def test_merging_replaces_what_is_measured_again_and_keeps_the_rest(scale: ModuleType) -> None:
    old = [
        scale.result_row(100_000, "ingest", 2.0, 200.0, "before"),
        scale.result_row(1_000_000, "ingest", 20.0, 900.0, "before"),
    ]
    new = [
        scale.result_row(100_000, "ingest", 3.0, 210.0, "before"),
        scale.result_row(100_000, "ingest", 1.0, 90, "after"),
    ]
    merged = scale.merge_rows(old, new)
    assert merged == [old[1], *new]


def test_the_window_is_exactly_n_rows_of_whole_histories(scale: ModuleType) -> None:
    df = generate_churn(ChurnConfig(customers=400, months=6, seed=3))
    n = len(df) // 3
    cut = scale.first_rows(df, n, "customer_id", "event_timestamp")
    assert len(cut) == n and not cut.duplicated(["customer_id", "event_timestamp"]).any()
    ids = sorted(cut["customer_id"].unique())
    assert ids == list(range(1, len(ids) + 1))  # customers in id order, none skipped
    full = df[df["customer_id"].isin(ids[:-1])]
    kept = cut[cut["customer_id"].isin(ids[:-1])]
    assert len(kept) == len(full)  # every customer's whole history but the last one's
    last = cut[cut["customer_id"] == ids[-1]]["event_timestamp"]
    whole = df[df["customer_id"] == ids[-1]]["event_timestamp"].sort_values()
    assert list(last.sort_values()) == list(whole.head(len(last)))  # the last one cut at its oldest rows
    assert cut[["event_timestamp", "customer_id"]].equals(
        cut.sort_values(["event_timestamp", "customer_id"])[["event_timestamp", "customer_id"]]
    )
    assert len(scale.first_rows(df, len(df) + 5, "customer_id", "event_timestamp")) == len(df)


def test_a_steps_phases_come_from_its_result_line(scale: ModuleType) -> None:
    out = (
        "a log line\n"
        'MLCYCLE_RESULT {"step": "embed", "seconds": 245.0, "fill_seconds": 30.5, "index_build_seconds": 200, '
        '"budget_spent_s": 12, "entities": 5, "vectors_per_s": 9.0, "families": {"linear": {"seconds": 3}}}\n'
    )
    assert scale.phase_seconds(out) == {"fill_seconds": 30.5, "index_build_seconds": 200.0, "budget_spent_s": 12.0}
    assert scale.phase_seconds("no result\n") == {}


def test_parse_reads_the_wrappers_last_line() -> None:
    assert parse_measured("step output\nPEAK_KIB 204800 3 1.5\n") == (3, 1.5, 200.0)


def test_the_peak_is_the_commands_not_the_parents() -> None:
    """A command that touches 200 MiB peaks above it; one that allocates nothing stays small while
    this process holds 300 MiB (a command forked straight from here would report this process's)."""
    held = bytearray(300 << 20)
    held[:: 1 << 12] = b"x" * len(held[:: 1 << 12])  # resident, page by page
    env = dict(os.environ)
    big = measured_run([sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"], env, 60)
    small = measured_run([sys.executable, "-c", "pass"], env, 60)
    exited = measured_run([sys.executable, "-c", "raise SystemExit(3)"], env, 60)
    assert big.code == small.code == 0 and exited.code == 3
    assert big.peak_rss_mib >= 200, big
    assert small.peak_rss_mib < 100, small
    assert small.seconds > 0
    del held
