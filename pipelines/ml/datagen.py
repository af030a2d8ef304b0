"""A deterministic generator of a realistic customer-churn dataset.

One row per active customer per month: a snapshot of the customer's profile and recent activity at
the month's end, and the label `churned` (does the customer leave within the next 30 days). The
label comes from a known noisy logistic function of the features (`true_logit`), so model quality
has a ceiling we can reason about. A churned customer has no later rows; new customers join every
month.

Options inject what production data does to models:

* `covariate_drift` (0..1): activity falls, support calls rise, the plan mix moves to `basic` and a
  new region share appears;
* `concept_drift` (0..1): the relationship itself changes (usage stops protecting against churn,
  price sensitivity doubles); the features' distribution does not;
* both ramp in from month `drift_from_month` over `drift_ramp_months` (default: over the second
  half of the range);
* `fault_rate` (0..0.5): data-quality faults in that share of rows: nulls, out-of-range values,
  unknown categories, non-numeric strings in numeric columns, duplicated keys.

The same arguments always give the same frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

PLANS = ("basic", "standard", "premium")
REGIONS = ("north", "south", "east", "west")
CONTRACTS = ("monthly", "annual", "two_year")
PAYMENTS = ("card", "bank_transfer", "invoice")
NUMERIC = (
    "tenure_months",
    "monthly_charges",
    "usage_hours_30d",
    "support_calls_30d",
    "days_since_last_login",
    "payment_delays_90d",
)
CATEGORICAL = ("plan", "region", "contract", "payment_method")


@dataclass(frozen=True)
class ChurnConfig:
    """What to generate. Mirrors the spec's `synthetic` source."""

    customers: int = 2000
    months: int = 12
    seed: int = 7
    start: str = "2025-01-01"
    covariate_drift: float = 0.0
    concept_drift: float = 0.0
    fault_rate: float = 0.0
    drift_from_month: int | None = None
    drift_ramp_months: int | None = None


def auto_start(months: int, today: date) -> str:
    """The first day of the `months` that end with the last full month before `today`. Pure."""
    month = today.year * 12 + today.month - 1 - months
    return f"{month // 12:04d}-{month % 12 + 1:02d}-01"


def true_logit(df: pd.DataFrame, concept: np.ndarray | float = 0.0) -> np.ndarray:
    """The known function behind the label (before noise). `concept` in [0, 1] per row."""
    c = np.asarray(concept, dtype=float)
    contract = df["contract"].map({"monthly": 0.9, "annual": -0.4, "two_year": -1.3}).to_numpy(float)
    plan = df["plan"].map({"basic": 0.2, "standard": 0.0, "premium": -0.3}).to_numpy(float)
    usage_effect = -0.045 * (1.0 - 1.6 * c)
    price_effect = 0.018 * (1.0 + c)
    logit = (
        -2.6
        + contract
        + plan
        + 0.42 * df["support_calls_30d"].to_numpy(float)
        - 0.035 * df["tenure_months"].to_numpy(float)
        + price_effect * (df["monthly_charges"].to_numpy(float) - 60.0)
        + usage_effect * (df["usage_hours_30d"].to_numpy(float) - 30.0)
        + 0.03 * df["days_since_last_login"].to_numpy(float)
        + 0.35 * df["payment_delays_90d"].to_numpy(float)
    )
    return np.asarray(logit, dtype=float)


def drift_phase(month: int, months: int, start: int | None = None, ramp: int | None = None) -> float:
    """How much of an injected drift is in force in a month: none before month `start` (default:
    the middle of the range), then a ramp over `ramp` months (default: the rest of the range) to
    all of it. Pure."""
    begin = months / 2 if start is None else start
    length = max(1.0, months / 2 if ramp is None else ramp)
    return max(0.0, min(1.0, (month + 1 - begin) / length))


def _choice(rng: np.random.Generator, values: tuple[str, ...], p: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(values, dtype=object)[rng.choice(len(values), size=n, p=p)]


def generate_churn(cfg: ChurnConfig = ChurnConfig()) -> pd.DataFrame:
    """The dataset, sorted by (event_timestamp, customer_id)."""
    import pandas as pd

    rng = np.random.default_rng(cfg.seed)
    start = pd.Timestamp(cfg.start, tz="UTC")
    # Customers join over the range: a third at the start, the rest spread over the months.
    n = cfg.customers
    join_month = np.where(rng.random(n) < 1 / 3, 0, rng.integers(0, cfg.months, n))
    prior_tenure = np.where(join_month == 0, rng.integers(0, 60, n), 0)
    profile = pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "region": _choice(rng, REGIONS, np.array([0.3, 0.25, 0.25, 0.2]), n),
            "contract": _choice(rng, CONTRACTS, np.array([0.55, 0.3, 0.15]), n),
            "payment_method": _choice(rng, PAYMENTS, np.array([0.6, 0.3, 0.1]), n),
            "plan": _choice(rng, PLANS, np.array([0.4, 0.4, 0.2]), n),
            "engagement": rng.gamma(4.0, 8.0, n),
            "support_propensity": rng.gamma(1.5, 0.6, n),
        }
    )
    base_price = profile["plan"].map({"basic": 35.0, "standard": 65.0, "premium": 105.0}).to_numpy()

    rows: list[pd.DataFrame] = []
    alive = np.ones(n, dtype=bool)
    for m in range(cfg.months):
        active = alive & (join_month <= m)
        idx = np.flatnonzero(active)
        if idx.size == 0:
            continue
        k = idx.size
        phase = drift_phase(m, cfg.months, cfg.drift_from_month, cfg.drift_ramp_months)
        cov = cfg.covariate_drift * phase
        concept = cfg.concept_drift * phase
        p = profile.iloc[idx]
        plan = p["plan"].to_numpy(object).copy()
        downgrade = rng.random(k) < 0.35 * cov
        plan[downgrade] = "basic"
        region = p["region"].to_numpy(object).copy()
        moved = rng.random(k) < 0.3 * cov
        region[moved] = "west"
        usage = rng.gamma(3.0, p["engagement"].to_numpy() / 3.0) * (1.0 - 0.45 * cov)
        calls = rng.poisson(p["support_propensity"].to_numpy() * (1.0 + 1.5 * cov))
        month = pd.DataFrame(
            {
                "customer_id": p["customer_id"].to_numpy(),
                "event_timestamp": start + pd.DateOffset(months=m + 1) - pd.Timedelta(seconds=1),
                "tenure_months": (prior_tenure[idx] + m - join_month[idx] + 1).astype(np.int64),
                "monthly_charges": np.round(base_price[idx] * rng.normal(1.0, 0.08, k), 2),
                "usage_hours_30d": np.round(usage, 1),
                "support_calls_30d": calls.astype(np.int64),
                "days_since_last_login": np.minimum(rng.exponential(60.0 / (1.0 + usage), k).round(), 90).astype(
                    np.int64
                ),
                "payment_delays_90d": rng.poisson(
                    np.where(p["payment_method"].to_numpy() == "invoice", 0.6, 0.15)
                ).astype(np.int64),
                "plan": plan,
                "region": region,
                "contract": p["contract"].to_numpy(),
                "payment_method": p["payment_method"].to_numpy(),
            }
        )
        logit = true_logit(month, concept) + rng.normal(0.0, 0.5, k)
        churned = rng.random(k) < 1.0 / (1.0 + np.exp(-logit))
        month["churned"] = churned.astype(np.int64)
        alive[idx[churned]] = False
        rows.append(month)

    df = pd.concat(rows, ignore_index=True)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    df = df.sort_values(["event_timestamp", "customer_id"], kind="stable").reset_index(drop=True)
    if cfg.fault_rate > 0:
        df = inject_faults(df, cfg.fault_rate, rng)
    return df


def inject_faults(df: pd.DataFrame, rate: float, rng: np.random.Generator) -> pd.DataFrame:
    """Corrupt `rate` of the rows with one fault each, spread over five kinds:
    nulls, out-of-range values, unknown categories, non-numeric strings, duplicated keys."""
    import pandas as pd

    out = df.copy()
    n = len(out)
    bad = rng.choice(n, size=round(rate * n), replace=False)
    kinds = np.array_split(bad, 5)
    out.loc[kinds[0], "usage_hours_30d"] = np.nan
    out.loc[kinds[1], "monthly_charges"] = -out.loc[kinds[1], "monthly_charges"]
    out.loc[kinds[2], "plan"] = "platinum"
    out["support_calls_30d"] = out["support_calls_30d"].astype(object)
    out.loc[kinds[3], "support_calls_30d"] = "n/a"
    dupes = out.loc[kinds[4]].copy()
    return pd.concat([out, dupes], ignore_index=True)
