"""`features`: apply the Feast repo, materialize the run's data, build the training set.

1. `apply` the pipeline's Feast objects (entity, source on this run's validated snapshot, views,
   the versioned feature service) to the SQL registry in the platform database;
2. materialize the snapshot's time range into the online store, Postgres (pgvector) or, where
   `MLCYCLE_REDIS_URL` is set, Redis (an explicit range: `materialize_incremental` starts at
   now - TTL and would skip historical data);
3. build a point-in-time correct training set with `get_historical_features` for the feature
   service, from the entity rows (key, event time, label) of the validated snapshot;
4. split it by time into train, validation and test (oldest to newest; one timestamp never spans
   two splits, so no future leaks into training).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipelines.context import StepContext
from pipelines.errors import DataQualityError, StepInputError
from pipelines.spec import PipelineSpec, Split
from pipelines.storage import read_parquet, write_json, write_parquet

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd

    from pipelines.settings import Settings

STEP = "features"
SPLITS = ("train", "validation", "test")


REPO_YAML = "feature_store.yaml"
REDIS_REPO_YAML = "feature_store.redis.yaml"


# ----------------------------------------------------------------------------------- pure core
def redis_connection_string(url: str) -> str:
    """Feast's Redis `connection_string` (`host:port,password=...,db=N[,ssl=true]`) from a
    `redis://[:password@]host[:port][/db]` or `rediss://` URL. Pure."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"MLCYCLE_REDIS_URL: expected redis://[:password@]host[:port][/db], got {url!r}")
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
    return ",".join(out)


def feast_env(project: str, sqlalchemy_url: str, libpq_url: str) -> dict[str, str]:
    """The variables `feature_repo/feature_store.yaml` reads, from the platform database URL."""
    from psycopg.conninfo import conninfo_to_dict

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


def time_split(df: pd.DataFrame, ts_col: str, split: Split) -> pd.Series:
    """Assign each row to train/validation/test by its timestamp. Pure.

    Timestamps are taken oldest first; a timestamp goes to the split in which the middle of its
    rows falls, so all rows of one timestamp share a split and every split is later than the
    previous one. With coarse timestamps (monthly snapshots) the fractions are approximate.
    """
    import pandas as pd

    counts = df[ts_col].value_counts().sort_index()
    middle = (counts.cumsum() - counts / 2) / counts.sum()
    cut1, cut2 = split.train, split.train + split.validation
    label = pd.Series(
        ["train" if m < cut1 else "validation" if m < cut2 else "test" for m in middle],
        index=counts.index,
    )
    assigned = df[ts_col].map(label)
    empty = [s for s in SPLITS if not (assigned == s).any()]
    if empty:
        raise DataQualityError(
            f"too few distinct {ts_col} values ({len(counts)}) to split by time: {empty} would be empty"
        )
    return assigned


def entity_rows(df: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """The entity dataframe for `get_historical_features`: key, event time and label."""
    cols = [spec.entity.join_key, spec.entity.timestamp, spec.label.column]
    return df[cols].copy()


# -------------------------------------------------------------------------------------- Feast I/O
@contextmanager
def feature_store(spec: PipelineSpec, settings: Settings) -> Iterator[Any]:
    """A FeatureStore on `feature_repo/`, its variables set from the settings for its lifetime; the
    online store is Redis where the settings name one (`feature_store.redis.yaml`)."""
    from feast import FeatureStore

    from pipelines.db import database_url, sqlalchemy_url
    from pipelines.settings import scoped_environ

    url = database_url(settings)
    env = feast_env(spec.name, sqlalchemy_url(url), url)
    repo = settings.project_dir / "feature_repo"
    yaml_file = repo / REPO_YAML
    if settings.redis_url:
        env["MLCYCLE_FEAST_REDIS"] = redis_connection_string(settings.redis_url)
        yaml_file = repo / REDIS_REPO_YAML
    with scoped_environ(env):
        yield FeatureStore(repo_path=str(repo), fs_yaml_file=yaml_file)


@contextmanager
def offline_source(uri: str, df: pd.DataFrame) -> Iterator[str]:
    """The path Feast's file offline store reads the validated snapshot from: the snapshot itself
    when it is a local file; for an object-store snapshot, a local copy for the step's lifetime
    (Feast reads s3:// through s3fs, whose aiobotocore cannot sit beside the pinned boto3)."""
    if "://" not in uri or uri.startswith("file://"):
        yield uri
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlcycle-offline-") as tmp:
        path = f"{tmp}/validated.parquet"
        df.to_parquet(path, index=False)
        yield path


def apply_and_materialize(store: Any, spec: PipelineSpec, source_uri: str, df: pd.DataFrame) -> None:
    from datetime import timedelta

    from feature_repo.definitions import build_definitions

    store.apply(build_definitions(spec, source_uri))
    ts = df[spec.entity.timestamp]
    start = ts.min().to_pydatetime() - timedelta(seconds=1)
    end = ts.max().to_pydatetime() + timedelta(seconds=1)
    store.materialize(start_date=start, end_date=end)


def historical_features(store: Any, spec: PipelineSpec, entities: pd.DataFrame) -> pd.DataFrame:
    service = store.get_feature_service(spec.features.feature_service)
    out: pd.DataFrame = store.get_historical_features(entity_df=entities, features=service).to_df()
    return out


# ----------------------------------------------------------------------------------------- step
def run(ctx: StepContext) -> dict[str, Any]:
    validation = ctx.manifest("validate")
    if not validation.get("passed"):
        raise StepInputError(f"{ctx.pipeline}/{ctx.run_id}: validation did not pass; no features from rejected data")
    validated_key = ctx.require("validate", "validated.parquet")
    df = read_parquet(ctx.storage, validated_key)
    spec = ctx.spec
    entities = entity_rows(df, spec)
    with feature_store(spec, ctx.settings) as store, offline_source(ctx.storage.uri(validated_key), df) as path:
        apply_and_materialize(store, spec, path, df)
        training = historical_features(store, spec, entities)
    ts = spec.entity.timestamp
    training = training.sort_values([ts, spec.entity.join_key], kind="stable").reset_index(drop=True)
    assigned = time_split(training, ts, spec.features.split)
    manifest: dict[str, Any] = {
        "step": STEP,
        "feature_service": spec.features.feature_service,
        "features": spec.features.feature_names,
        "label": spec.label.column,
        "feast_project": spec.name,
        "source": ctx.storage.uri(validated_key),
        "content_hash": validation["content_hash"],
        # Feast's file offline store drops entity rows no view answers within its TTL.
        "entity_rows": len(entities),
        "dropped_entity_rows": len(entities) - len(training),
        "splits": {},
    }
    for name in SPLITS:
        part = training[assigned == name].reset_index(drop=True)
        uri = write_parquet(ctx.storage, ctx.key(f"{name}.parquet"), part)
        manifest["splits"][name] = {
            "uri": uri,
            "rows": len(part),
            "time_range": [str(part[ts].min()), str(part[ts].max())],
            "label_rate": float(part[spec.label.column].mean()),
        }
    write_json(ctx.storage, ctx.key("manifest.json"), manifest)
    return manifest
