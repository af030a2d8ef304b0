"""Global importances: what a model's primary metric loses when one feature's values are shuffled
across the test rows (permutation importance), for every family alike, on the exported graph.

Shuffling breaks the feature's link to the label and keeps its distribution, so the drop is what
the model draws from that feature on these rows (a feature the model ignores drops exactly 0; two
correlated features share their importance, each looking smaller than together). The mean over a
few seeded shuffles and its standard deviation say how sure the figure is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

Scorer = Callable[["pd.DataFrame"], np.ndarray]
Metric = Callable[[np.ndarray, np.ndarray], float]

ROWS, REPEATS = 5000, 5


def permutation_importances(
    score: Scorer,
    df: pd.DataFrame,
    y: np.ndarray,
    features: list[str],
    metric: Metric,
    higher_is_better: bool,
    *,
    repeats: int = REPEATS,
    rows: int = ROWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Each feature's importance: the metric on `df` less the metric with that feature's column
    shuffled (the other way round for a metric where lower is better, so a positive drop always
    means the model uses it), the mean and standard deviation of `repeats` shuffles, on at most
    `rows` rows drawn with the seed. Pure (given `score`)."""
    rng = np.random.default_rng(seed)
    if len(df) > rows:
        keep = np.sort(rng.choice(len(df), size=rows, replace=False))
        df, y = df.iloc[keep].reset_index(drop=True), y[keep]
    sign = 1.0 if higher_is_better else -1.0
    base = metric(y, score(df))
    out: list[dict[str, Any]] = []
    for feature in features:
        drops = []
        for _ in range(repeats):
            shuffled = df.copy()
            shuffled[feature] = df[feature].to_numpy()[rng.permutation(len(df))]
            drops.append(sign * (base - metric(y, score(shuffled))))
        out.append({"feature": feature, "drop": float(np.mean(drops)), "sd": float(np.std(drops))})
    out.sort(key=lambda d: -float(d["drop"]) if d["drop"] == d["drop"] else np.inf)  # NaN (one class) last
    return {"rows": len(df), "repeats": repeats, "base": float(base), "features": out}
