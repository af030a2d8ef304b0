from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import SpecError
from pipelines.core.spec import Contract, Expectation, load_spec
from pipelines.steps.validate import (
    expectation_class_name,
    finalize_types,
    has_zone,
    missing_columns,
    reason_counts,
    render_html,
    row_reasons,
    run_expectations,
    verdict,
)
from tests.conftest import CHURN_SPEC

CONTRACT = load_spec(CHURN_SPEC).contract


def _as_text(df: pd.DataFrame) -> pd.DataFrame:
    """What a CSV with stray strings looks like after ingest: object columns of text."""
    return df.astype(object).where(df.notna(), None)


def test_clean_rows_have_no_reasons(churn_df: pd.DataFrame) -> None:
    coerced, reasons = row_reasons(churn_df, CONTRACT)
    assert (reasons == "").all()
    final = finalize_types(coerced, CONTRACT)
    assert final["customer_id"].dtype == np.int64
    assert str(final["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert list(final.columns) == list(CONTRACT.columns)


def test_each_fault_gets_its_reason(churn_df: pd.DataFrame) -> None:
    df = _as_text(churn_df.head(20).copy())
    df.loc[1, "usage_hours_30d"] = None
    df.loc[2, "monthly_charges"] = -5.0
    df.loc[3, "plan"] = "platinum"
    df.loc[4, "support_calls_30d"] = "n/a"
    df.loc[5, "tenure_months"] = 2.5
    df.loc[6, "event_timestamp"] = "yesterday"
    df.loc[7, "customer_id"] = df.loc[8, "customer_id"]
    df.loc[7, "event_timestamp"] = df.loc[8, "event_timestamp"]
    df.loc[9, "churned"] = 7
    df.loc[10, "monthly_charges"] = "inf"
    df.loc[11, "support_calls_30d"] = float("-inf")
    _, reasons = row_reasons(df, CONTRACT)
    assert reasons[0] == ""
    assert reasons[1] == "usage_hours_30d: is null"
    assert reasons[2] == "monthly_charges: below the minimum (-5.0)"
    assert reasons[3] == "plan: not an allowed value ('platinum')"
    assert reasons[4] == "support_calls_30d: not a number ('n/a')"
    assert reasons[5] == "tenure_months: not an integer (2.5)"
    assert reasons[6] == "event_timestamp: not a timestamp ('yesterday')"
    assert reasons[7] == "" and reasons[8] == "duplicate key customer_id, event_timestamp"
    assert reasons[9] == "churned: above the maximum (7.0)"
    assert reasons[10] == "monthly_charges: not a finite number ('inf')"  # no model trains on it
    assert reasons[11] == "support_calls_30d: not a finite number (-inf)"
    assert (reasons[12:] == "").all()


def test_a_binary_label_is_0_or_1_even_where_the_contract_gives_it_no_bounds(churn_df: pd.DataFrame) -> None:
    """A third class would train a classifier of two (a -inf objective, a raw scikit-learn error)."""
    label = CONTRACT.columns["churned"].model_copy(update={"max": None})
    unbounded = CONTRACT.model_copy(update={"columns": {**CONTRACT.columns, "churned": label}})
    df = _as_text(churn_df.head(6).copy())
    df.loc[1, "churned"] = 2
    df.loc[2, "churned"] = 7
    df.loc[3, "churned"] = "x"  # not a number: that reason, once
    _, reasons = row_reasons(df, unbounded, "churned")
    assert reasons[1] == "churned: not 0 or 1 (2)" and reasons[2] == "churned: not 0 or 1 (7)"
    assert reasons[3] == "churned: not a number ('x')" and reasons[0] == reasons[4] == reasons[5] == ""
    assert (row_reasons(df, unbounded)[1][[1, 2]] == "").all()  # without the label named, only the contract


def test_a_multiclass_label_is_one_of_the_contracts_classes() -> None:
    from datetime import date
    from pathlib import Path

    from pipelines.ml.datasets import wine

    spec = load_spec(Path(CHURN_SPEC).parent / "wine.yaml")
    df = _as_text(wine(6, date(2026, 1, 1), 11).head(5))
    df.loc[1, "cultivar"] = "merlot"
    df.loc[2, "cultivar"] = None
    _, reasons = row_reasons(df, spec.contract, "cultivar", "multiclass")
    assert reasons[1] == "cultivar: not an allowed value ('merlot')"  # the contract's `allowed` are the classes
    assert reasons[2] == "cultivar: is null"
    assert reasons[0] == reasons[3] == reasons[4] == ""


def test_naive_timestamps_among_zoned_ones_are_refused_not_read_as_utc(churn_df: pd.DataFrame) -> None:
    df = _as_text(churn_df.head(4).copy())
    df["event_timestamp"] = ["2026-01-05T10:00:00+02:00", "2026-01-05 10:00:00", "2026-01-05T08:00:00Z", None]
    coerced, reasons = row_reasons(df, CONTRACT)
    assert reasons[1] == (
        "event_timestamp: a timestamp without a time zone, where other rows have one ('2026-01-05 10:00:00')"
    )
    assert reasons[0] == reasons[2] == "" and coerced["event_timestamp"][0] == coerced["event_timestamp"][2]
    naive = _as_text(churn_df.head(2).copy())
    naive["event_timestamp"] = ["2026-01-05 10:00:00", "2026-01-05"]  # all naive: UTC, as documented
    assert (row_reasons(naive, CONTRACT)[1] == "").all()


@pytest.mark.parametrize(
    ("value", "zoned"),
    [
        ("2026-01-05T10:00:00-05", True),
        ("2026-01-05T10:00:00.123+0530", True),
        ("2026-01-05 10:00 UTC", True),
        ("2026-01-05T10:00:00", False),
        ("2026-01-05", False),
        (None, None),
        ("soon", None),
    ],
)
def test_has_zone(value: object, zoned: bool | None) -> None:
    assert has_zone(value) is zoned


def test_several_problems_in_one_row_are_all_named(churn_df: pd.DataFrame) -> None:
    df = _as_text(churn_df.head(3).copy())
    df.loc[0, "plan"] = "gold"
    df.loc[0, "monthly_charges"] = 5000.0
    _, reasons = row_reasons(df, CONTRACT)
    assert "plan: not an allowed value ('gold')" in reasons[0]
    assert "monthly_charges: above the maximum (5000.0)" in reasons[0]


def test_missing_columns(churn_df: pd.DataFrame) -> None:
    assert missing_columns(churn_df.drop(columns=["plan", "region"]), CONTRACT) == ["plan", "region"]
    assert missing_columns(churn_df, CONTRACT) == []


def test_reason_counts() -> None:
    reasons = pd.Series(["", "a: is null", "a: is null; b: below the minimum (-1)", "b: below the minimum (-2)"])
    assert reason_counts(reasons) == {"a: is null": 2, "b: below the minimum": 2}


def test_verdict() -> None:
    contract = Contract.model_validate({"columns": {"a": {"dtype": "int"}}, "max_bad_fraction": 0.1, "min_rows": 5})
    assert verdict(100, 10, contract, []) == []
    assert "11 of 100 rows (11.00%)" in verdict(100, 11, contract, [])[0]
    common = {"plan: not allowed": 9, "tenure_months: not an int": 3, "churned: missing": 2, "x: y": 1}
    assert verdict(100, 11, contract, [], common)[0].endswith(
        "; most often: plan: not allowed (9 rows); tenure_months: not an int (3 rows); churned: missing (2 rows)"
    )
    assert any("fewer than contract.min_rows=5" in p for p in verdict(5, 1, contract, []))
    failed = [
        {"success": False, "severity": "error", "expectation": "expect_x", "kwargs": {}, "observed": {}},
        {"success": False, "severity": "warning", "expectation": "expect_y", "kwargs": {}, "observed": {}},
    ]
    problems = verdict(100, 0, contract, failed)
    assert len(problems) == 1 and "expect_x" in problems[0]


def test_expectations_run_with_great_expectations(churn_df: pd.DataFrame) -> None:
    exps = [
        Expectation(
            expectation="expect_column_mean_to_be_between",
            kwargs={"column": "churned", "min_value": 0.0, "max_value": 0.5},
        ),
        Expectation(
            expectation="expect_column_mean_to_be_between",
            kwargs={"column": "monthly_charges", "min_value": 500, "max_value": 600},
        ),
        Expectation(
            expectation="expect_column_quantile_values_to_be_between",
            severity="warning",
            kwargs={"column": "tenure_months", "quantile_ranges": {"quantiles": [0.5], "value_ranges": [[0, 1000]]}},
        ),
    ]
    results = run_expectations(churn_df, exps)
    assert [r["success"] for r in results] == [True, False, True]
    assert 30 < results[1]["observed"]["observed_value"] < 120
    with pytest.raises(SpecError, match=r"expectations\[0\].expectation: unknown expectation"):
        run_expectations(churn_df, [Expectation(expectation="expect_the_unexpected")])
    with pytest.raises(SpecError, match=r"expectations\[0\].kwargs"):
        run_expectations(churn_df, [Expectation(expectation="expect_column_mean_to_be_between", kwargs={"colum": "x"})])


def test_expectation_class_name() -> None:
    assert expectation_class_name("expect_column_mean_to_be_between") == "ExpectColumnMeanToBeBetween"


def test_html_report_escapes() -> None:
    report = {
        "pipeline": "p",
        "run_id": "<r>",
        "passed": False,
        "rows": 2,
        "bad_rows": 1,
        "bad_fraction": 0.5,
        "max_bad_fraction": 0.1,
        "content_hash": "h",
        "reasons": {"plan: <b>": 1},
        "expectations": [],
        "problems": ["1 of 2 rows <bad>"],
    }
    page = render_html(report)
    assert "&lt;r&gt;" in page and "&lt;b&gt;" in page and "<bad>" not in page and "FAILED" in page


def test_a_regression_label_is_a_finite_number() -> None:
    contract = Contract(columns={"id": {"dtype": "int"}, "y": {"dtype": "float"}}, min_rows=1)
    df = pd.DataFrame({"id": [1, 2, 3, 4], "y": ["1.5", "inf", "abc", "-3"]})
    _, reasons = row_reasons(df, contract, "y", "regression")
    assert reasons.tolist() == ["", "y: not a finite number ('inf')", "y: not a number ('abc')", ""]
    assert row_reasons(df.iloc[[0, 3]], contract, "y")[1].tolist() == [
        "y: not 0 or 1 ('1.5')",
        "y: not 0 or 1 ('-3')",
    ]


def test_refused_naive_timestamps_are_not_counted_as_duplicates(churn_df: pd.DataFrame, tmp_path: Path) -> None:
    """A file with no duplicate key whose naive timestamps sit among zoned ones: each naive row is
    refused for its missing zone, none as a duplicate (the refused instants are not compared)."""
    df = churn_df.sort_values(["customer_id", "event_timestamp"]).head(60).reset_index(drop=True)
    stamps = pd.to_datetime(df["event_timestamp"], utc=True)
    text = [
        t.strftime("%Y-%m-%d %H:%M:%S") if i % 2 else t.isoformat() for i, t in enumerate(stamps)
    ]  # every other row naive
    df["event_timestamp"] = text
    assert not df.duplicated(subset=["customer_id", "event_timestamp"]).any()
    assert df["customer_id"].duplicated().any()  # several rows per customer: the old count's trap
    path = tmp_path / "mixed.csv"
    df.to_csv(path, index=False)
    read = pd.read_csv(path)  # as ingest reads a CSV
    _, reasons = row_reasons(read, CONTRACT)
    counts = reason_counts(reasons)
    assert counts == {"event_timestamp: a timestamp without a time zone, where other rows have one": 30}
    assert not any("duplicate" in r for r in reasons)


def test_a_duplicate_is_the_same_instant_whatever_its_text(churn_df: pd.DataFrame) -> None:
    df = _as_text(churn_df.head(3).copy())
    df["customer_id"] = [7, 7, 7]
    df["event_timestamp"] = ["2026-01-05T10:00:00+02:00", "2026-01-05T08:00:00Z", "2026-01-05T09:00:00Z"]
    _, reasons = row_reasons(df, CONTRACT)
    assert list(reasons) == ["", "duplicate key customer_id, event_timestamp", ""]
