"""Airflow operators of mlcycle: one operator, two runtimes, one pod spec.

`PipelineStepOperator` is loaded lazily so that `pipelines.core.pod` (pure pod rendering, used by the
CLI) does not import Airflow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PipelineStepOperator"]


def __getattr__(name: str) -> Any:
    if name == "PipelineStepOperator":
        from operators.step import PipelineStepOperator

        return PipelineStepOperator
    raise AttributeError(name)
