"""Airflow DAGs of every mlcycle pipeline: wiring only (see operators/factory.py)."""

from operators.factory import build_dags

globals().update(build_dags())
