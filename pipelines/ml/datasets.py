"""Example datasets that ship inside an installed package (scikit-learn's, read from its own
files: no download), shaped as a pipeline's source: one row per entity and event time. Pure.

* `diabetes` (regression): 442 patients, ten baseline measurements, the disease's progression one
  year later (Efron et al., 2004).
* `wine` (multiclass): 178 wines from one region of Italy, thirteen chemical measurements, and
  which of three cultivars (`barolo`, `grignolino`, `barbera`) each was made from (Forina et al.,
  the UCI wine data).

Each row is an entity seen once; the rows are spread evenly over the `months` that end at `end`,
in an order fixed by `seed`, so that a split by time is a random split.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DIABETES_COLUMNS = {
    "age": "age",
    "sex": "sex",
    "bmi": "bmi",
    "bp": "blood_pressure",
    "s1": "total_cholesterol",
    "s2": "ldl",
    "s3": "hdl",
    "s4": "cholesterol_ratio",
    "s5": "log_triglycerides",
    "s6": "glucose",
    "target": "progression",
}


WINE_CULTIVARS = ("barolo", "grignolino", "barbera")
"""The wine data's classes 0, 1 and 2 by the cultivars they are (Forina's PARVUS data)."""


def diabetes(months: int, end: date, seed: int) -> pd.DataFrame:
    """The diabetes data as dated rows: `patient_id`, `event_timestamp` (UTC), the measurements
    (`sex` as the string "1" or "2", as the data codes it) and the label `progression`."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(scaled=False, as_frame=True).frame.rename(columns=DIABETES_COLUMNS)
    frame["sex"] = frame["sex"].astype(int).astype(str)
    return dated(frame, "patient_id", months, end, seed)


def wine(months: int, end: date, seed: int) -> pd.DataFrame:
    """The wine data as dated rows: `wine_id`, `event_timestamp` (UTC), the measurements (names
    in snake case, `od280_od315` for the diluted wines' absorbance ratio) and the label `cultivar`."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.rename(columns={"od280/od315_of_diluted_wines": "od280_od315"})
    frame["cultivar"] = [WINE_CULTIVARS[int(t)] for t in frame.pop("target")]
    return dated(frame, "wine_id", months, end, seed)


def dated(frame: pd.DataFrame, key: str, months: int, end: date, seed: int) -> pd.DataFrame:
    """Rows in an order fixed by `seed`, each an entity (`key`: 1, 2, ...) seen once at an
    `event_timestamp` spread evenly over the `months` that end at `end`."""
    order = np.random.default_rng(seed).permutation(len(frame))
    frame = frame.iloc[order].reset_index(drop=True)
    finish = datetime.combine(end, time(), tzinfo=UTC)
    span = timedelta(days=30.4375 * months)
    offsets = np.linspace(1.0, 0.0, len(frame), endpoint=False)  # oldest first, the last one day before `end`
    frame.insert(0, "event_timestamp", [(finish - span * float(f)).replace(microsecond=0) for f in offsets])
    frame.insert(0, key, np.arange(1, len(frame) + 1))
    return frame


DATASETS: dict[str, Callable[[int, date, int], pd.DataFrame]] = {"diabetes": diabetes, "wine": wine}
"""The example datasets by the name a `dataset` source gives."""
