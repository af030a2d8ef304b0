"""The quality bench's datasets: public data that ships inside installed packages (scikit-learn's
bundled files, `palmerpenguins`; nothing downloaded), one synthetic set where no shipped one has
50,000 rows, each dated as a pipeline's source, and the pipeline spec that trains on it.

Every dataset is a `Dataset`: its label's kind, the metric both searches optimise and are scored
by, and a loader of the rows (features and label). `dated_rows` adds an entity key and an event
time spread evenly over six months in an order fixed by a seed, so that the features step's split
by time is a random split; `spec_for` writes the pipeline spec of the rows' Parquet file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

KEY, TIME = "row_id", "event_timestamp"
SPLIT = {"train": 0.6, "validation": 0.2, "test": 0.2}
METRIC_OF = {"binary": "roc_auc", "multiclass": "macro_f1", "regression": "r2"}
"""Each label kind's metric: higher is better for all three, so a delta reads the same way."""
RARE_RATE = 0.05
LARGE_ROWS = 60_000


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str  # binary | multiclass | regression
    label: str
    about: str
    load: Callable[[], pd.DataFrame]
    metric: str = ""

    @property
    def primary(self) -> str:
        """The metric both searches optimise on validation and are scored by on test."""
        return self.metric or METRIC_OF[self.task]


def _snake(frame: pd.DataFrame) -> pd.DataFrame:
    frame.columns = [str(c).replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "") for c in frame]
    return frame


def breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    frame = _snake(load_breast_cancer(as_frame=True).frame)
    frame["malignant"] = 1 - frame.pop("target")
    return frame


def rare_positives(frame: pd.DataFrame, label: str, rate: float, seed: int) -> pd.DataFrame:
    """Every negative row and as many positive rows (drawn with `seed`) as keep the positive rate
    at or below `rate`. Pure."""
    negatives = frame[frame[label] == 0]
    keep = int(np.floor(rate * len(negatives) / (1 - rate)))
    positives = frame[frame[label] == 1]
    drawn = np.random.default_rng(seed).choice(len(positives), size=keep, replace=False)
    return pd_concat([negatives, positives.iloc[np.sort(drawn)]])


def pd_concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def breast_cancer_rare() -> pd.DataFrame:
    return rare_positives(breast_cancer(), "malignant", RARE_RATE, seed=5)


def undated(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """A `pipelines.ml.datasets` frame without its key and event time (the bench dates its own)."""
    return frame.drop(columns=[key, TIME])


def wine() -> pd.DataFrame:
    from pipelines.ml import datasets

    return undated(datasets.wine(6, date(2026, 1, 1), 0), "wine_id")


def iris() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = _snake(bunch.frame)
    frame["species"] = [str(bunch.target_names[int(t)]) for t in frame.pop("target")]
    return frame


def digits() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.astype({f"pixel_{r}_{c}": float for r in range(8) for c in range(8)})
    frame["digit"] = [f"d{int(t)}" for t in frame.pop("target")]
    return frame


def digits_rare() -> pd.DataFrame:
    """Is the digit an 8? Every other digit, and as many 8s as keep the rate at 5 % (1,708 rows)."""
    frame = digits()
    frame["eight"] = (frame.pop("digit") == "d8").astype(int)
    return rare_positives(frame, "eight", RARE_RATE, seed=5)


def diabetes() -> pd.DataFrame:
    from pipelines.ml import datasets

    return undated(datasets.diabetes(6, date(2026, 1, 1), 0), "patient_id")


def penguins() -> pd.DataFrame:
    """The Palmer penguins (344 birds; `island` and `sex` categorical, 11 with no `sex`, 2 with no
    measurements); `year` left out."""
    from palmerpenguins import load_penguins

    frame = load_penguins().drop(columns=["year"])
    for column in ("species", "island", "sex"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def penguins_mass() -> pd.DataFrame:
    """The penguins' body mass (grams) from the rest; the two birds never weighed are left out."""
    frame = penguins()
    return frame[frame["body_mass_g"].notna()].reset_index(drop=True)


def synthetic_60k() -> pd.DataFrame:
    """scikit-learn's `make_classification`: 60,000 rows, 20 features (8 informative), 30 %
    positives, 2 % of the labels flipped. Synthetic: no bundled dataset has 50,000 rows."""
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=LARGE_ROWS, n_features=20, n_informative=8, weights=[0.7], flip_y=0.02, random_state=0
    )
    frame = pd.DataFrame(x, columns=[f"x{i:02d}" for i in range(x.shape[1])])
    frame["positive"] = y.astype(int)
    return frame


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("breast_cancer", "binary", "malignant", "scikit-learn, 569 rows, 30 numeric", breast_cancer),
        Dataset(
            "breast_cancer_rare",
            "binary",
            "malignant",
            "breast_cancer with the malignant rows subsampled to 4.8 % positives (376 rows)",
            breast_cancer_rare,
            metric="pr_auc",
        ),
        Dataset(
            "digits_rare",
            "binary",
            "eight",
            "digits as 8 against the rest, the 8s subsampled to 5.0 % positives (1,708 rows)",
            digits_rare,
            metric="pr_auc",
        ),
        Dataset("synthetic_60k", "binary", "positive", "make_classification, 60,000 rows (synthetic)", synthetic_60k),
        Dataset("wine", "multiclass", "cultivar", "scikit-learn, 178 rows, 3 classes", wine),
        Dataset("iris", "multiclass", "species", "scikit-learn, 150 rows, 3 classes", iris),
        Dataset("digits", "multiclass", "digit", "scikit-learn, 1,797 8x8 images, 10 classes", digits),
        Dataset("penguins", "multiclass", "species", "palmerpenguins, 344 rows, categoricals, nulls", penguins),
        Dataset("diabetes", "regression", "progression", "scikit-learn, 442 rows, one categorical", diabetes),
        Dataset("penguins_mass", "regression", "body_mass_g", "palmerpenguins, 342 rows, categoricals", penguins_mass),
    )
}
"""The bench's datasets by name, in the order the bench runs them."""


def dated_rows(frame: pd.DataFrame, end: date, seed: int = 7) -> pd.DataFrame:
    """The rows with `row_id` and `event_timestamp`, over the six months that end at `end`."""
    from pipelines.ml.datasets import dated

    return dated(frame.reset_index(drop=True), KEY, 6, end, seed)


def column_contract(values: pd.Series, label: str | None = None, task: str = "") -> dict[str, Any]:
    """A column's contract entry from its values: dtype, nullable, a label's range or classes."""
    from pandas.api import types

    if label is not None and task == "multiclass":
        return {"dtype": "string", "allowed": sorted(str(v) for v in values.dropna().unique())}
    if label is not None and task == "binary":
        return {"dtype": "int", "min": 0, "max": 1}
    dtype = "float" if types.is_float_dtype(values) else "int" if types.is_integer_dtype(values) else "string"
    if label is not None:
        dtype = "float"
    return {"dtype": dtype, **({"nullable": True} if values.isna().any() else {})}


def spec_for(dataset: Dataset, rows: pd.DataFrame, path: str, budget_s: int) -> dict[str, Any]:
    """The pipeline spec of `rows` (as `dated_rows` made them) read from the Parquet file at `path`:
    a `file` source, one feature view, `auto` model search under `budget_s` seconds. Pure."""
    from pandas.api import types

    features = [c for c in rows.columns if c not in (KEY, TIME, dataset.label)]
    categorical = [c for c in features if not types.is_numeric_dtype(rows[c])]
    columns = {KEY: {"dtype": "int", "min": 1}, TIME: {"dtype": "datetime"}}
    columns.update({c: column_contract(rows[c]) for c in features})
    columns[dataset.label] = column_contract(rows[dataset.label], dataset.label, dataset.task)
    return {
        "name": f"quality_{dataset.name}",
        "description": f"Quality bench: {dataset.about}.",
        "owner": "bench",
        "schedule": None,
        "source": {"kind": "file", "path": path, "format": "parquet"},
        "entity": {"name": "row", "join_key": KEY, "timestamp": TIME},
        "label": {"column": dataset.label, "kind": dataset.task},
        "contract": {"min_rows": 100, "unique": [KEY], "columns": columns},
        "features": {
            "feature_service": f"quality_{dataset.name}_v1",
            "split": SPLIT,
            "views": [{"name": f"{dataset.name}_row", "ttl_days": 400, "features": features}],
        },
        "model": {
            "kind": "auto",
            "numeric_features": [c for c in features if c not in categorical],
            "categorical_features": categorical,
        },
        "training": {"n_trials": None, "time_budget_s": budget_s, "pruner": "median", "seed": 42},
        "evaluation": {"primary_metric": dataset.primary, "beat_baseline": False, "bootstrap_samples": 200},
        "drift": {"schedule": None},
    }
