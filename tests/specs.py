"""Specs for tests and benchmarks: the bundled churn spec under another name, with sections changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.core.settings import PROJECT_DIR

CHURN_SPEC = PROJECT_DIR / "include" / "pipelines" / "churn.yaml"


def churn_spec_dict(*, merge: bool = False, **sections: Any) -> dict[str, Any]:
    """The bundled churn spec as a dict. Each given top-level section replaces the bundled one or,
    with `merge`, updates it key by key (`training={"n_trials": 2}` keeps the other training keys);
    a `source` always replaces the bundled one (its keys depend on its kind)."""
    data: dict[str, Any] = yaml.safe_load(CHURN_SPEC.read_text())
    for key, value in sections.items():
        both_maps = isinstance(value, dict) and isinstance(data.get(key), dict) and key != "source"
        data[key] = {**data[key], **value} if merge and both_maps else value
    return data


def write_spec(directory: Path, name: str = "churn", *, merge: bool = False, **sections: Any) -> Path:
    """Write `<directory>/<name>.yaml`: the churn spec named `name`, sections as `churn_spec_dict`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(churn_spec_dict(merge=merge, name=name, **sections), sort_keys=False))
    return path


def tumour_pipeline(directory: Path, data_dir: Path, name: str = "tumours", **sections: Any) -> Path:
    """A user's own pipeline beside the bundled one: a real public dataset (the Wisconsin breast
    cancer set that ships inside scikit-learn: 569 patients, 30 numeric features, no categorical
    one) as a CSV file source, a spec written the way docs/pipelines.md's "Adding a pipeline" says.
    Patient ids and examination days (the last 100 days) are added: Feast needs an entity and a
    timestamp. `sections`: more of the spec's sections (`batch`). Returns the spec's path."""
    from datetime import UTC, datetime, timedelta

    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    features = [c.replace(" ", "_") for c in frame.columns if c != "target"]
    frame.columns = [*features, "target"]
    frame.insert(0, "patient_id", range(1, len(frame) + 1))
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    frame.insert(1, "examined_at", [today - timedelta(days=100 - (i * 100) // len(frame)) for i in range(len(frame))])
    frame["malignant"] = 1 - frame.pop("target")
    data_dir.mkdir(parents=True, exist_ok=True)
    csv = data_dir / f"{name}.csv"
    frame.to_csv(csv, index=False)
    half = len(features) // 2
    spec = {
        "name": name,
        "description": "Malignant or benign, from 30 measurements of a breast mass (a user's own pipeline).",
        "owner": "e2e",
        "schedule": None,
        "retries": 1,
        "source": {"kind": "file", "path": str(csv), "lookback_days": 365},
        "entity": {"name": "patient", "join_key": "patient_id", "timestamp": "examined_at"},
        "label": {"column": "malignant"},
        "contract": {
            "min_rows": 100,
            "unique": ["patient_id"],
            "columns": {
                "patient_id": {"dtype": "int", "min": 1},
                "examined_at": {"dtype": "datetime"},
                **{f: {"dtype": "float", "min": 0} for f in features},
                "malignant": {"dtype": "int", "min": 0, "max": 1},
            },
        },
        "features": {
            "feature_service": f"{name}_features_v1",
            "split": {"train": 0.6, "validation": 0.2, "test": 0.2},
            "views": [
                {"name": "tumour_means", "ttl_days": 365, "features": features[:half]},
                {"name": "tumour_extremes", "ttl_days": 365, "features": features[half:]},
            ],
        },
        "model": {"numeric_features": features},
        "training": {"n_trials": 3, "max_epochs": 15, "pruner": "none"},
        "evaluation": {"primary_metric": "roc_auc", "min_primary": 0.8, "bootstrap_samples": 100},
        "drift": {"schedule": None},
        **sections,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
