"""Airflow operators of mlcycle: one operator, two runtimes, one pod spec; the DAG factory; the hook.

The public names a DAG file of one's own imports (`from operators import PipelineStepOperator,
lifecycle_dag`) are loaded lazily, so that `pipelines.core.pod` (pure pod rendering, used by the
CLI) and the provider info (`operators.provider`) do not import Airflow.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

EXPORTS = {
    "PipelineStepOperator": "operators.step",
    "PromotionApproval": "operators.approval",
    "RetrainingTrigger": "operators.trigger",
    "retraining_asset": "operators.trigger",
    "MlcycleHook": "operators.hook",
    "lifecycle_dag": "operators.factory",
    "drift_dag": "operators.factory",
    "build_dags": "operators.factory",
}
"""Each public name and the module that defines it."""

__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    if name in EXPORTS:
        return getattr(import_module(EXPORTS[name]), name)
    raise AttributeError(name)
