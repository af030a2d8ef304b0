"""Airflow import errors of invalid pipeline specs: wiring only (see operators/factory.py).

dags/lifecycle.py builds the DAGs of every valid spec; this file raises one error naming each invalid
spec and why, which Airflow shows as this file's import error ("Broken DAG"), so a bad spec costs
only its own DAGs.
"""

from operators.factory import raise_spec_errors

raise_spec_errors()
