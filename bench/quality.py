"""Quality: mlcycle's `auto` model search against FLAML on public datasets, same rows, same budget.

Each dataset of `quality_data.DATASETS` is written as a Parquet file and a pipeline spec (`file`
source, `model.kind: auto`, `training.time_budget_s`), then run through the real steps ingest ->
validate -> features -> train -> evaluate on the embedded services. FLAML (`flaml.AutoML`) then
searches the features step's own train.parquet, with its validation.parquet as the holdout, the
same time budget, one core (`n_jobs=1`; the platform's train step is given one CPU too) and the
same metric; both models score the features step's test.parquet. One row per dataset:
`{"dataset", "task", "metric", "budget_s", "mlcycle", "flaml", "delta", "delta_ci95", "family"}`
(`delta`: mlcycle minus FLAML, every metric higher-is-better; `delta_ci95`: a paired bootstrap
over the test rows; `family`: the family mlcycle exported).

    .venv/bin/python bench/quality.py [--datasets a,b] [--budget-s 30] [--json FILE]

It runs in a throw-away state directory and stops its database afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from common import bench_state
from quality_data import DATASETS, Dataset, dated_rows, spec_for

from pipelines.ml.metrics import bootstrap_difference, encode_label, metric_functions

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.core.settings import Settings

RUN_ID = "quality"
STEPS = ("ingest", "validate", "features", "train", "evaluate")
FLAML_METRIC = {"roc_auc": "roc_auc", "pr_auc": "ap", "macro_f1": "macro_f1", "r2": "r2"}
"""FLAML's name of each metric the bench scores by (`ap`: average precision, the PR AUC)."""
ONE_CPU = {"cpu": "1", "memory": "4Gi"}
BOOTSTRAP_SAMPLES = 1000


def metric_of(dataset: Dataset) -> Any:
    """The platform's own function of the dataset's metric (the evaluate step's)."""
    return metric_functions(0.5, dataset.task)[dataset.primary]


def quality_row(
    dataset: Dataset,
    budget_s: int,
    y: np.ndarray,
    p_mlcycle: np.ndarray,
    p_flaml: np.ndarray,
    family: str,
    samples: int = BOOTSTRAP_SAMPLES,
) -> dict[str, Any]:
    """One dataset's row: both test metrics, their difference (mlcycle minus FLAML) and its paired
    bootstrap 95 % interval over the test rows. Pure."""
    metric = metric_of(dataset)
    diff = bootstrap_difference(y, p_mlcycle, p_flaml, metric, samples, 0.95, seed=0)
    return {
        "dataset": dataset.name,
        "task": dataset.task,
        "metric": dataset.primary,
        "budget_s": budget_s,
        "mlcycle": metric(y, p_mlcycle),
        "flaml": metric(y, p_flaml),
        "delta": diff["difference"],
        "delta_ci95": [diff["lower"], diff["upper"]],
        "family": family,
    }


def class_columns(proba: np.ndarray, seen: np.ndarray, classes: int) -> np.ndarray:
    """Probabilities over classes 0..classes-1 from a model's columns of the classes it saw. Pure."""
    full = np.zeros((len(proba), classes))
    full[:, np.asarray(seen, dtype=np.int64)] = proba
    return full


def model_input(frames: list[pd.DataFrame], numeric: list[str], categorical: list[str]) -> list[pd.DataFrame]:
    """The feature columns of each frame, categoricals as one pandas category type over all frames."""
    import pandas as pd

    out = [f[numeric + categorical].copy() for f in frames]
    for column in categorical:
        levels = sorted({str(v) for f in frames for v in f[column].dropna()})
        for f in out:
            f[column] = pd.Categorical(f[column].where(f[column].isna(), f[column].astype(str)), categories=levels)
    return out


def flaml_scores(
    dataset: Dataset, split: dict[str, pd.DataFrame], y: dict[str, np.ndarray], spec: dict[str, Any], budget_s: int
) -> tuple[np.ndarray, str]:
    """FLAML's search on the train split with the validation split as its holdout: its test scores
    in the platform's shape (P(positive), a probability per class, or the number) and its estimator."""
    from flaml import AutoML

    model = spec["model"]
    x_train, x_val, x_test = model_input(
        [split["train"], split["validation"], split["test"]], model["numeric_features"], model["categorical_features"]
    )
    automl = AutoML()
    regression = dataset.task == "regression"
    automl.fit(
        x_train,
        y["train"] if regression else y["train"].astype(np.int64),
        X_val=x_val,
        y_val=y["validation"] if regression else y["validation"].astype(np.int64),
        task="regression" if regression else "classification",
        metric=FLAML_METRIC[dataset.primary],
        time_budget=budget_s,
        n_jobs=1,
        seed=42,
        verbose=0,
    )
    if regression:
        return np.asarray(automl.predict(x_test), dtype=float), str(automl.best_estimator)
    proba = class_columns(automl.predict_proba(x_test), automl.classes_, max(2, len(classes_of(spec, dataset))))
    return (proba[:, 1] if dataset.task == "binary" else proba), str(automl.best_estimator)


def classes_of(spec: dict[str, Any], dataset: Dataset) -> list[str]:
    return list(spec["contract"]["columns"][dataset.label].get("allowed") or [])


def run_platform(settings: Settings, dataset: Dataset, budget_s: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dataset as a Parquet file and a spec, through the real steps: the spec and each step's result."""
    import yaml

    from pipelines.steps.runner import run_step

    rows = dated_rows(dataset.load(), datetime.now(UTC).date())
    data = settings.state_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    path = data / f"{dataset.name}.parquet"
    rows.to_parquet(path, index=False)
    spec = spec_for(dataset, rows, str(path), budget_s)
    spec["resources"] = {"steps": {"train": ONE_CPU, "trials": ONE_CPU}}
    assert settings.pipelines_dir is not None
    (settings.pipelines_dir / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec, {step: run_step(step, spec["name"], RUN_ID, settings) for step in STEPS}


def measure(settings: Settings, dataset: Dataset, budget_s: int) -> dict[str, Any]:
    """One dataset: the platform's run, FLAML on its split, both scored on its test rows."""
    from pipelines.io.storage import open_storage, read_parquet
    from pipelines.ml.model import onnx_session, predict_onnx

    started = time.perf_counter()
    spec, out = run_platform(settings, dataset, budget_s)
    platform_s = time.perf_counter() - started
    storage = open_storage(settings)
    name = spec["name"]
    split = {p: read_parquet(storage, f"{name}/{RUN_ID}/features/{p}.parquet") for p in ("train", "validation", "test")}
    y = {p: encode_label(f[dataset.label], classes_of(spec, dataset)) for p, f in split.items()}
    session = onnx_session(storage.read_bytes(f"{name}/{RUN_ID}/train/model.onnx"))
    p_mlcycle = predict_onnx(session, split["test"])
    started = time.perf_counter()
    p_flaml, estimator = flaml_scores(dataset, split, y, spec, budget_s)
    flaml_s = time.perf_counter() - started
    row = quality_row(dataset, budget_s, y["test"], p_mlcycle, p_flaml, str(out["train"]["model_family"]))
    # the evaluate step scored the same model on the same rows: the bench's figure must be its own
    assert np.isclose(row["mlcycle"], out["evaluate"]["primary"], equal_nan=True), (row, out["evaluate"])
    return {
        **row,
        "flaml_estimator": estimator,
        "rows": {p: len(f) for p, f in split.items()},
        "test_positives": int(y["test"].sum()) if dataset.task == "binary" else None,
        "mlcycle_best_family": out["train"]["best_family"],
        "mlcycle_budget_spent_s": out["train"]["budget_spent_s"],
        "platform_s": platform_s,
        "flaml_s": flaml_s,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table. Pure."""
    lines = [
        "| dataset | task | metric | test rows | mlcycle | FLAML | delta [95 % CI] "
        "| mlcycle family | FLAML estimator |",
        "|---|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["delta_ci95"]
        lines.append(
            f"| {r['dataset']} | {r['task']} | {r['metric']} | {r.get('rows', {}).get('test', '')} | "
            f"{r['mlcycle']:.4f} | {r['flaml']:.4f} | {r['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}] | "
            f"{r['family']} | {r.get('flaml_estimator', '')} |"
        )
    return "\n".join(lines)


def chosen(names: str | None) -> list[Dataset]:
    """The datasets `--datasets` names (all when none); an unknown name is an error naming the known."""
    if not names:
        return list(DATASETS.values())
    unknown = [n for n in names.split(",") if n not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}")
    return [DATASETS[n] for n in names.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", help=f"comma-separated, of: {', '.join(DATASETS)} (default: all)")
    parser.add_argument("--budget-s", type=int, default=30, help="each search's time budget (both)")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    datasets = chosen(args.datasets)
    rows = []
    with bench_state() as settings:
        for dataset in datasets:
            row = measure(settings, dataset, args.budget_s)
            rows.append(row)
            print(f"{dataset.name}: mlcycle {row['mlcycle']:.4f}, FLAML {row['flaml']:.4f}", flush=True)
            if args.json:  # after each dataset: a long run that stops keeps what it measured
                with open(args.json, "w") as fh:
                    json.dump({"budget_s": args.budget_s, "rows": rows}, fh, indent=1, default=str)
    print(table(rows))
    deltas = [r["delta"] for r in rows if r["delta"] == r["delta"]]
    if deltas:
        print(f"mean delta over {len(deltas)} datasets: {sum(deltas) / len(deltas):+.4f}")


if __name__ == "__main__":
    main()
