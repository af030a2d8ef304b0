"""Label semantics: whether a value can be a label of its kind, and a stored label back as the
source has it. Pure, and light to import (the Airflow plugin's catalog decodes labels)."""

from __future__ import annotations

import math
from typing import Any


def label_problem(value: Any, kind: str, classes: list[str]) -> str | None:
    """Why a value cannot be a label of its kind (`not 0 or 1`, `not a finite number`, `not one of
    the classes [...]`), None where it can: the one judgement of validation (per row, beside the
    contract) and of `mlcycle labels load`. Pure."""
    if kind == "multiclass":
        return None if str(value) in classes else f"not one of the classes {classes}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if kind == "regression":
        return None if math.isfinite(number) else "not a finite number"
    return None if number in (0.0, 1.0) else "not 0 or 1"


def decode_label(value: float, classes: list[str]) -> Any:
    """A label as the `labels` table holds it, back as the source has it: a multiclass label's
    class name from its index (an index that is no class stays as stored, for validation to
    reject). Pure."""
    if not classes:
        return value
    index = int(value) if float(value).is_integer() else -1
    return classes[index] if 0 <= index < len(classes) else value
