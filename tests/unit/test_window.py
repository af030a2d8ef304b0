"""A run's data window: as_of, lookback, location templates, bound query parameters, the rows kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest

from pipelines.core.errors import SourceError, SpecError
from pipelines.core.params import run_params
from pipelines.core.spec import parse_spec
from pipelines.core.window import Window, data_window, query_params, render_location, template_fields
from pipelines.io.sources import feedback_frame, within
from tests.specs import churn_spec_dict

AS_OF = datetime(2026, 11, 26, 8, 30, tzinfo=UTC)


def test_window_from_as_of_and_lookback() -> None:
    assert data_window(AS_OF, None) == Window(None, AS_OF)
    assert data_window(AS_OF, 30).start == AS_OF - timedelta(days=30)
    naive = data_window(datetime(2026, 11, 26), 1)  # a naive instant is UTC
    assert naive.end.tzinfo is UTC and naive.start == datetime(2026, 11, 25, tzinfo=UTC)
    paris = data_window(datetime(2026, 11, 26, 9, 30, tzinfo=timezone(timedelta(hours=1))), None)
    assert paris.end == AS_OF
    assert Window(None, AS_OF).to_dict() == {"start": None, "end": AS_OF.isoformat()}


def test_location_templates() -> None:
    w = data_window(AS_OF, 7)
    assert render_location("s3://b/churn/dt={as_of:%Y-%m-%d}/", w) == "s3://b/churn/dt=2026-11-26/"
    assert render_location("data/{start:%Y%m%d}-{end:%Y%m%d}.csv", w) == "data/20261119-20261126.csv"
    assert render_location("data/plain.csv", w) == "data/plain.csv"
    assert template_fields("x/{as_of:%Y}/{start}") == ["as_of", "start"]
    with pytest.raises(ValueError, match="unknown name"):
        template_fields("x/{today}")
    with pytest.raises(ValueError, match="malformed"):
        template_fields("x/{as_of")


def test_query_parameters_are_named_and_known() -> None:
    assert query_params("SELECT * FROM t WHERE ts > %(start)s AND ts <= %(end)s") == ["start", "end"]
    assert query_params("SELECT 1") == []
    with pytest.raises(ValueError, match="unknown query parameter"):
        query_params("SELECT * FROM t WHERE x = %(region)s")


def test_the_spec_refuses_a_bad_template_or_parameter_with_its_path() -> None:
    with pytest.raises(SpecError, match="source.uri: .*unknown name"):
        parse_spec(churn_spec_dict(source={"kind": "s3", "uri": "s3://bucket/{day}/x.csv"}))
    with pytest.raises(SpecError, match="source.query: .*unknown query parameter"):
        parse_spec(churn_spec_dict(source={"kind": "postgres", "query": "SELECT %(x)s"}))
    with pytest.raises(SpecError, match="source.lookback_days"):
        parse_spec(churn_spec_dict(source={"kind": "synthetic", "lookback_days": 0}))
    with pytest.raises(SpecError, match=r"drift.ignore\[0\]: 'shoe_size' is not a feature the model uses"):
        parse_spec(churn_spec_dict(merge=True, drift={"ignore": ["shoe_size"]}))


def test_rows_are_kept_by_their_time_and_unreadable_times_stay_for_validation() -> None:
    df = pd.DataFrame(
        {
            "ts": ["2026-10-01T00:00:00Z", "2026-11-20", "2026-11-26T08:30:00Z", "2026-11-27", "not a time"],
            "x": range(5),
        }
    )
    kept = within(df, "ts", data_window(AS_OF, 30))
    assert kept["x"].tolist() == [1, 2, 4]  # (start, end]: the as_of instant is in, the future is out
    assert within(df, "ts", data_window(AS_OF, None))["x"].tolist() == [0, 1, 2, 4]
    with pytest.raises(SourceError, match="none is event_timestamp"):
        within(df, "event_timestamp", data_window(AS_OF, None))


def test_feedback_rows_carry_the_served_features_typed_by_the_contract() -> None:
    spec = parse_spec(churn_spec_dict())
    served = datetime(2026, 11, 26, 7, 0, 0, 123456, tzinfo=UTC)
    features = {
        "tenure_months": 14,
        "monthly_charges": 61.5,
        "usage_hours_30d": 12.0,
        "support_calls_30d": 3,
        "days_since_last_login": 9,
        "payment_delays_90d": 0,
        "plan": "basic",
        "region": "west",
        "contract": "monthly",
        "payment_method": "card",
    }
    rows = [
        {"entity_id": "42", "served_at": served, "label": 1.0, "features": features},
        {"entity_id": "43", "served_at": served, "label": 0.0, "features": {**features, "support_calls_30d": "n/a"}},
    ]
    df = feedback_frame(rows, spec)
    assert list(df.columns) == list(spec.contract.columns)
    assert df["customer_id"].tolist() == [42, 43] and str(df["customer_id"].dtype) == "int64"
    assert df["churned"].tolist() == [1, 0] and df["event_timestamp"].iloc[0] == pd.Timestamp(served)
    assert df.loc[0, ["monthly_charges", "plan", "tenure_months"]].tolist() == [61.5, "basic", 14]
    assert df["support_calls_30d"].tolist() == [3, "n/a"]  # left as served: validation says why


def test_multiclass_feedback_comes_back_as_class_names() -> None:
    from pipelines.ml.labels import decode_label

    data = churn_spec_dict()
    data["label"] = {"column": "plan", "kind": "multiclass"}
    data["evaluation"] = {k: v for k, v in data["evaluation"].items() if k not in ("primary_metric", "min_primary")}
    data["model"]["categorical_features"].remove("plan")
    spec = parse_spec(data)
    served = datetime(2026, 11, 26, 7, tzinfo=UTC)
    rows = [
        {"entity_id": str(n), "served_at": served, "label": y, "features": {}} for n, y in enumerate([2.0, 0.0, 7.0])
    ]
    assert feedback_frame(rows, spec)["plan"].tolist() == ["premium", "basic", "7.0"]  # no class: validation says why
    assert (
        decode_label(1.0, ["a", "b"]) == "b" and decode_label(1.5, ["a", "b"]) == 1.5 and decode_label(1.0, []) == 1.0
    )


def test_run_params_say_when_and_why() -> None:
    end, due = datetime(2026, 11, 25, tzinfo=UTC), datetime(2026, 11, 25, 0, 5, tzinfo=UTC)
    assert run_params({}, "DagRunType.SCHEDULED", end, due) == {"trigger": "scheduled", "as_of": end.isoformat()}
    assert run_params({}, "manual", None, due)["as_of"] == due.isoformat()
    forged = run_params({"cause": {"reasons": ["x"]}, "trigger": "asset", "n_trials": 2}, "manual", None, due)
    assert forged == {"n_trials": 2, "trigger": "manual", "as_of": due.isoformat()}  # only the run says why
