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
