"""Airflow operators of mlcycle: one operator, two runtimes, one pod spec."""

from operators.step import PipelineStepOperator

__all__ = ["PipelineStepOperator"]
