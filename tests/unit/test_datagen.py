from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.ml.datagen import CATEGORICAL, NUMERIC, ChurnConfig, drift_phase, generate_churn, true_logit


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = label == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def test_same_arguments_same_frame(churn_df: pd.DataFrame) -> None:
    again = generate_churn(ChurnConfig(customers=800, months=12, seed=11))
    pd.testing.assert_frame_equal(churn_df, again)
    other = generate_churn(ChurnConfig(customers=800, months=12, seed=12))
    assert not churn_df.equals(other)


def test_shape_and_realism(churn_df: pd.DataFrame) -> None:
    assert set(NUMERIC) | set(CATEGORICAL) | {"customer_id", "event_timestamp", "churned"} == set(churn_df.columns)
    assert churn_df["event_timestamp"].dt.tz is not None
    assert churn_df["event_timestamp"].nunique() == 12
    assert not churn_df.duplicated(["customer_id", "event_timestamp"]).any()
    assert 0.03 < churn_df["churned"].mean() < 0.25
    # A churned customer has no later rows.
    last = churn_df.groupby("customer_id")["event_timestamp"].transform("max")
    assert (churn_df.loc[churn_df["churned"] == 1, "event_timestamp"] == last[churn_df["churned"] == 1]).all()


def test_label_follows_the_known_function(churn_df: pd.DataFrame) -> None:
    assert _auc(true_logit(churn_df), churn_df["churned"].to_numpy()) > 0.75


def test_drift_phase_ramps_over_the_second_half() -> None:
    phases = [drift_phase(m, 12) for m in range(12)]
    assert phases[:6] == [0.0] * 6
    assert phases[-1] == 1.0
    assert phases == sorted(phases)


def test_covariate_drift_moves_features_late_only(churn_df: pd.DataFrame) -> None:
    drifted = generate_churn(ChurnConfig(customers=800, months=12, seed=11, covariate_drift=1.0))
    early = drifted["event_timestamp"] < "2025-06-30"
    assert (
        abs(
            drifted.loc[early, "usage_hours_30d"].mean()
            - churn_df.loc[churn_df["event_timestamp"] < "2025-06-30", "usage_hours_30d"].mean()
        )
        < 1e-9
    )
    late_base = churn_df[churn_df["event_timestamp"] > "2025-10-01"]
    late = drifted[drifted["event_timestamp"] > "2025-10-01"]
    assert late["usage_hours_30d"].mean() < 0.75 * late_base["usage_hours_30d"].mean()
    assert late["support_calls_30d"].mean() > 1.5 * late_base["support_calls_30d"].mean()
    assert (late["plan"] == "basic").mean() > (late_base["plan"] == "basic").mean() + 0.15


def test_concept_drift_changes_the_label_not_the_features() -> None:
    cfg = ChurnConfig(customers=3000, months=12, seed=5)
    base = generate_churn(cfg)
    drifted = generate_churn(ChurnConfig(customers=3000, months=12, seed=5, concept_drift=1.0))
    early = base["event_timestamp"] < "2025-06-30"
    pd.testing.assert_frame_equal(base[early], drifted[drifted["event_timestamp"] < "2025-06-30"])
    late = drifted[drifted["event_timestamp"] > "2025-10-01"]
    # The original function explains the drifted labels worse than the drifted one.
    assert _auc(true_logit(late), late["churned"].to_numpy()) < _auc(true_logit(late, 1.0), late["churned"].to_numpy())
    # Feature distributions stay close (the drift is in the relationship).
    late_base = base[base["event_timestamp"] > "2025-10-01"]
    assert abs(late["monthly_charges"].mean() - late_base["monthly_charges"].mean()) < 3.0


def test_faults_are_injected() -> None:
    df = generate_churn(ChurnConfig(customers=500, months=6, seed=3, fault_rate=0.1))
    clean = generate_churn(ChurnConfig(customers=500, months=6, seed=3))
    assert len(df) > len(clean)  # duplicated keys were appended
    assert df["usage_hours_30d"].isna().sum() > 0
    assert (pd.to_numeric(df["monthly_charges"]) < 0).sum() > 0
    assert (df["plan"] == "platinum").sum() > 0
    assert (df["support_calls_30d"] == "n/a").sum() > 0
    assert df.duplicated(["customer_id", "event_timestamp"]).sum() > 0


def test_a_drift_can_start_at_a_month_and_ramp_over_a_few() -> None:
    assert [drift_phase(m, 10, start=5, ramp=1) for m in range(10)] == [0.0] * 5 + [1.0] * 5
    assert [drift_phase(m, 10, start=5, ramp=2) for m in (4, 5, 6)] == [0.0, 0.5, 1.0]


def test_an_auto_world_ends_with_the_last_full_month() -> None:
    from datetime import date

    from pipelines.ml.datagen import auto_start

    assert auto_start(12, date(2026, 11, 26)) == "2025-11-01"  # Nov 2025 .. Oct 2026
    assert auto_start(3, date(2026, 1, 1)) == "2025-10-01"
    df = generate_churn(ChurnConfig(customers=50, months=3, start=auto_start(3, date(2026, 1, 1))))
    assert str(df["event_timestamp"].max().date()) == "2025-12-31"
