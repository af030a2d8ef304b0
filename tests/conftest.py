"""Shared fixtures: specs written to temporary pipeline directories, the real embedded PostgreSQL
and a real S3 server (SeaweedFS), each started once per session on 127.0.0.1 and stopped after."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Airflow reads its home at import: keep tests away from ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="mlcycle-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# Ray reads its authentication mode when first imported (test collection imports it): clusters
# use token authentication, so every Ray client in the session must know it.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import pandas as pd
import pytest

from pipelines.core.settings import Settings, scoped_environ
from pipelines.ml.datagen import ChurnConfig, generate_churn
from tests.services import S3Server, seaweedfs
from tests.specs import CHURN_SPEC, churn_spec_dict, write_spec

__all__ = ["CHURN_SPEC", "churn_spec_dict", "write_spec"]


@pytest.fixture(scope="session")
def churn_df() -> pd.DataFrame:
    """A small clean churn dataset (about 4,500 rows over 12 months)."""
    return generate_churn(ChurnConfig(customers=800, months=12, seed=11))


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The real embedded PostgreSQL (+ pgvector) of a session state dir, migrated."""
    from pipelines.io import db

    state = tmp_path_factory.mktemp("state")
    settings = Settings(state_dir=state)
    # Child processes (the local runtime, airflow) share the state dir.
    with scoped_environ({"MLCYCLE_STATE_DIR": str(state)}):
        db.migrate(settings)
        try:
            yield settings
        finally:
            db.stop_embedded(settings)


@pytest.fixture
def workspace(platform: Settings, tmp_path: Path) -> Settings:
    """Settings on the session database with this test's own pipelines dir and artifact root."""
    (tmp_path / "pipelines").mkdir()
    return platform.model_copy(
        update={"pipelines_dir": tmp_path / "pipelines", "artifact_root": str(tmp_path / "artifacts")}
    )


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API (SeaweedFS) on 127.0.0.1 with credentials in the standard AWS variables."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        credentials = {
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        with scoped_environ(credentials):
            yield server
