"""The platform tables on the real embedded PostgreSQL (+ pgvector)."""

from __future__ import annotations

import pytest

from pipelines.core.errors import StepInputError
from pipelines.core.settings import Settings
from pipelines.io import db
from tests.integration.helpers import run, small_spec

pytestmark = pytest.mark.integration


def test_migrations_apply_once_and_pgvector_is_there(platform: Settings) -> None:
    assert db.migrate(platform) == []  # the session fixture applied them already
    with db.connect(platform) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == sorted(db.available_migrations(db.migrations_dir(platform)))
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone() is not None
        assert conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone() == (1.0,)
        server = conn.execute("SHOW server_version_num").fetchone()
        assert server is not None and int(server[0]) >= 180000


def test_every_attempt_is_recorded(workspace: Settings) -> None:
    small_spec(workspace, {"kind": "synthetic", "customers": 200, "months": 6})
    with pytest.raises(StepInputError, match="run `mlcycle step ingest"):
        run(workspace, "validate", "rec-1")
    run(workspace, "ingest", "rec-1")
    run(workspace, "ingest", "rec-1")
    with db.connect(workspace) as conn:
        rows = conn.execute(
            "SELECT step, attempt, status, error IS NOT NULL, outputs ? 'content_hash'"
            " FROM step_runs WHERE pipeline='churn' AND run_id='rec-1' ORDER BY started_at, attempt"
        ).fetchall()
    assert rows == [
        ("validate", 1, "failed", True, False),
        ("ingest", 1, "succeeded", False, True),
        ("ingest", 2, "reused", False, True),
    ]
