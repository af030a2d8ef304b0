"""Feast: the feature store of a pipeline on `feature_repo/`, its variables from the settings.

The features step applies and materializes through it, serving reads the online store through
it. The online store is the platform database (Postgres, pgvector) or, where `MLCYCLE_REDIS_URL`
is set, Redis (`feature_store.redis.yaml`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from psycopg.conninfo import conninfo_to_dict

from feature_repo.definitions import build_definitions
from pipelines.core.errors import redact
from pipelines.core.settings import Settings, scoped_environ
from pipelines.core.spec import PipelineSpec
from pipelines.io.db import database_url, sqlalchemy_url

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

REPO_YAML = "feature_store.yaml"
REDIS_REPO_YAML = "feature_store.redis.yaml"
REDIS_CONNECT_TIMEOUT_S, REDIS_SOCKET_TIMEOUT_S = 2, 30


def redis_connection_string(url: str) -> str:
    """Feast's Redis `connection_string` (`host:port,password=...,db=N[,ssl=true]`) from a
    `redis://[:password@]host[:port][/db]` or `rediss://` URL. Pure."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"MLCYCLE_REDIS_URL: expected redis://[:password@]host[:port][/db], got {redact(url)!r}")
    out = [f"{parts.hostname}:{parts.port or 6379}"]
    if parts.password:
        out.append(f"password={unquote(parts.password)}")
    if parts.username:
        out.append(f"username={unquote(parts.username)}")
    db = parts.path.strip("/")
    if db:
        if not db.isdigit():
            raise ValueError(f"MLCYCLE_REDIS_URL: the database must be a number, got {db!r}")
        out.append(f"db={db}")
    if parts.scheme == "rediss":
        out.append("ssl=true")
    # bounded: a Redis that is down fails a read in seconds instead of hanging it
    out += [f"socket_connect_timeout={REDIS_CONNECT_TIMEOUT_S}", f"socket_timeout={REDIS_SOCKET_TIMEOUT_S}"]
    return ",".join(out)


def feast_env(project: str, sqlalchemy_url: str, libpq_url: str) -> dict[str, str]:
    """The variables `feature_repo/feature_store.yaml` reads, from the platform database URL."""
    info = conninfo_to_dict(libpq_url)
    host = str(info.get("host") or "127.0.0.1")
    return {
        "MLCYCLE_FEAST_PROJECT": project,
        "MLCYCLE_FEAST_REGISTRY_URL": sqlalchemy_url,
        "MLCYCLE_FEAST_PG_HOST": host,
        "MLCYCLE_FEAST_PG_PORT": str(info.get("port") or 5432),
        "MLCYCLE_FEAST_PG_DATABASE": str(info.get("dbname") or "postgres"),
        "MLCYCLE_FEAST_PG_USER": str(info.get("user") or "postgres"),
        "MLCYCLE_FEAST_PG_PASSWORD": str(info.get("password") or ""),
        # A Unix socket has no TLS; a network server follows the URL (default: prefer).
        "MLCYCLE_FEAST_PG_SSLMODE": "disable" if host.startswith("/") else str(info.get("sslmode") or "prefer"),
    }


@contextmanager
def feature_store(spec: PipelineSpec, settings: Settings) -> Iterator[Any]:
    """A FeatureStore on `feature_repo/`, its variables set from the settings for its lifetime; the
    online store is Redis where the settings name one (`feature_store.redis.yaml`)."""
    from feast import FeatureStore  # heavy: feast

    url = database_url(settings)
    env = feast_env(spec.name, sqlalchemy_url(url), url)
    repo = settings.project_dir / "feature_repo"
    yaml_file = repo / REPO_YAML
    if settings.redis_url:
        env["MLCYCLE_FEAST_REDIS"] = redis_connection_string(settings.redis_url)
        yaml_file = repo / REDIS_REPO_YAML
    with scoped_environ(env):
        yield FeatureStore(repo_path=str(repo), fs_yaml_file=yaml_file)


def apply_and_materialize(store: Any, spec: PipelineSpec, source_path: str, first: Any, last: Any) -> None:
    """Apply the pipeline's Feast objects on the snapshot at `source_path` (a local Parquet file:
    DuckDB would read s3:// through its httpfs extension, which it downloads at first use) and
    materialize its time range, `first` to `last` event time (explicitly: `materialize_incremental`
    starts at now - TTL and would skip historical data)."""
    store.apply(build_definitions(spec, source_path))
    start = first.to_pydatetime() - timedelta(seconds=1)
    end = last.to_pydatetime() + timedelta(seconds=1)
    store.materialize(start_date=start, end_date=end)


def historical_features(store: Any, spec: PipelineSpec, entities: pd.DataFrame) -> pd.DataFrame:
    """The point-in-time correct features of the spec's feature service for the entity rows that
    some view answers within its TTL (Feast's DuckDB offline store answers the others with nulls
    in every feature: they are left out, for batch scoring to count)."""
    out: pd.DataFrame = _retrieval(store, spec, entities).to_df()
    answered = out[spec.features.feature_names].notna().any(axis=1)
    return out if bool(answered.all()) else out[answered].reset_index(drop=True)


def historical_table(store: Any, spec: PipelineSpec, entities: pd.DataFrame) -> pa.Table:
    """The point-in-time correct features of the spec's feature service for every entity row, as
    an Arrow table in the offline store's own types (a nullable int stays an int: the same schema
    whatever the rows), for a training set written in chunks."""
    table: pa.Table = _retrieval(store, spec, entities).to_arrow()
    return table


def _retrieval(store: Any, spec: PipelineSpec, entities: pd.DataFrame) -> Any:
    """Feast's retrieval job of the spec's feature service for the entity rows."""
    service = store.get_feature_service(spec.features.feature_service)
    return store.get_historical_features(entity_df=entities, features=service)
