"""The unit tier runs no server: a test that would start the embedded PostgreSQL (a `Settings`
without `database_url` reaching `pipelines.io.db.database_url`) fails instead, naming the fix. Such
a test left a server running through the later tiers, once in the project's own state dir."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_embedded_database(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.io import db

    def refuse(settings: Any) -> str:
        raise AssertionError(
            f"a unit test would start the embedded PostgreSQL in {settings.state_dir}: give its Settings a"
            " database_url (the unit tier runs no server; tests/integration has the real one)"
        )

    monkeypatch.setattr(db, "start_embedded", refuse)
