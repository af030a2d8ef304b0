"""Online features for serving: many entities in one read, awaited on the replica's event loop.

Feast's SDK (`get_online_features`) costs about 0.7 ms for one entity here, most of it Python
around a 0.2 ms query, and it blocks, so the replica called it in a worker thread (another 0.2 ms of
thread switches). Where the online store is Feast's PostgreSQL store, `PostgresOnlineTables` reads
Feast's own tables directly: the tables, the entity-key encoding and the value decoding are
Feast's (resolved once from the registry when the replica starts), the read is one prepared
statement for every view of the feature service on an async connection, so a lookup costs one
round trip and no thread. Any other online store (Redis) goes through the SDK in a thread
(`FeastSdk`). Both answer the same: a dict of feature -> value (None when absent) per entity; a
test holds the direct read to the SDK's answers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.core.errors import redact
from pipelines.core.settings import Settings
from pipelines.core.spec import PipelineSpec
from pipelines.io.db import database_url
from pipelines.io.featurestore import feature_store

log = logging.getLogger(__name__)


class FeaturesUnavailable(RuntimeError):
    """The online store could not be read (down, unreachable). No version can answer without it
    and none is to blame: the request is answered 503 naming the store (the cause goes to the
    replica's log, never to the client), counted against no version (an outage of the store never
    rolls a canary back), and nothing is scored with features missing."""

    def __init__(self, detail: str, store: str = "online") -> None:
        super().__init__(detail)
        self.store = store

    def __reduce__(self) -> tuple[type[FeaturesUnavailable], tuple[str, str]]:  # through Ray's handles
        return (type(self), (str(self), self.store))


def unavailable(store: str, err: BaseException) -> FeaturesUnavailable:
    """The error a failed read becomes, naming the store and the cause (credentials redacted). Pure."""
    detail = redact(f"the online feature store ({store}) could not be read: {type(err).__name__}: {err}")
    return FeaturesUnavailable(detail[:400], store)


class OnlineFeatures(Protocol):
    key_is_int: bool  # the entity's join key is an integer (ids must read as integers)

    async def lookup(self, entity_ids: Sequence[str | int]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ViewRead:
    """One feature view of the service as stored online: its table and the features read."""

    table: str
    features: tuple[str, ...]


def lookup_sql(views: Sequence[ViewRead]) -> str:
    """One statement for every view: `(view index, entity key, feature, value)` rows of the keys
    in `%s` (a bytea array, once per view). Table names are quoted identifiers. Pure."""

    def ident(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    branches = [
        f"SELECT {n} AS view, entity_key, feature_name, value FROM {ident(v.table)} "  # noqa: S608 (quoted)
        f"WHERE entity_key = ANY(%s) AND feature_name = ANY(%s)"
        for n, v in enumerate(views)
    ]
    return " UNION ALL ".join(branches)


def assemble(
    keys: Sequence[bytes],
    views: Sequence[ViewRead],
    rows: Sequence[tuple[int, bytes, str, Any]],
    features: Sequence[str],
) -> list[dict[str, Any]]:
    """Per key, in order: `features` -> decoded value, None where the store has none (as Feast's
    SDK answers). `rows` hold decoded values already. Pure."""
    found: dict[bytes, dict[str, Any]] = {}
    for view, key, name, value in rows:
        if name in views[view].features:
            found.setdefault(bytes(key), {})[name] = value
    return [{f: found.get(k, {}).get(f) for f in features} for k in keys]


def known(features: dict[str, Any]) -> dict[str, Any]:
    """An entity's online features, or {} when the store holds none of them: an entity it does not
    know (whose features are then missing, never null, whatever the contract allows). Feast's SDK
    answers an unknown entity with every feature None, as the direct read does. Pure."""
    return features if any(v is not None for v in features.values()) else {}


class PostgresOnlineTables:
    """Feast's PostgreSQL online tables of one feature service, read directly (see the module)."""

    def __init__(self, spec: PipelineSpec, settings: Settings, features: Sequence[str]) -> None:
        """Resolve the service's views from Feast's registry (blocking: call it in a thread)."""
        from feast.infra.online_stores.postgres_online_store.postgres import _table_id

        with feature_store(spec, settings) as store:
            config = store.config
            service = store.get_feature_service(spec.features.feature_service)
            versioning = config.registry.enable_online_feature_view_versioning
            self.views = [
                ViewRead(
                    _table_id(config.project, store.get_feature_view(p.name), versioning),
                    tuple(f.name for f in p.features),
                )
                for p in service.feature_view_projections
            ]
            self.key_version = config.entity_key_serialization_version
        self.url = database_url(settings)
        self.join_key = spec.entity.join_key
        self.key_is_int = spec.contract.columns[self.join_key].dtype == "int"
        self.features = list(features)
        self.sql = lookup_sql(self.views)
        self._conn: Any = None
        self._connecting = asyncio.Lock()

    def encode(self, entity_id: str | int) -> bytes:
        """Feast's serialized entity key of an id (the encoding the materializer wrote)."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        value = Value(int64_val=int(entity_id)) if self.key_is_int else Value(string_val=str(entity_id))
        key = EntityKey(join_keys=[self.join_key], entity_values=[value])
        return bytes(serialize_entity_key(key, entity_key_serialization_version=self.key_version))

    async def _connection(self) -> Any:
        import psycopg

        async with self._connecting:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            return self._conn

    async def lookup(self, entity_ids: Sequence[str | int]) -> list[dict[str, Any]]:
        """The features of each entity: one prepared statement; a broken connection (a database
        restart) is replaced and the read tried once more."""
        import psycopg
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        keys = [self.encode(e) for e in entity_ids]
        params: list[Any] = []
        for view in self.views:
            params += [keys, list(view.features)]
        for attempt in (1, 2):
            try:
                conn = await self._connection()
            except psycopg.OperationalError as err:
                raise unavailable("PostgreSQL", err) from err
            try:
                cursor = await conn.execute(self.sql, params, prepare=True)
                raw = await cursor.fetchall()
                break
            except psycopg.OperationalError as err:
                await conn.close()
                if attempt == 2:
                    raise unavailable("PostgreSQL", err) from err
                log.warning("online store connection lost; reconnecting")
        rows = []
        for view, key, name, blob in raw:
            value = Value()
            value.ParseFromString(bytes(blob))
            rows.append((view, key, name, feast_value_type_to_python_type(value)))
        return assemble(keys, self.views, rows, self.features)

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            # the replica is going away with its loop: a synchronous close of the socket
            self._conn.pgconn.finish()


class FeastSdk:
    """Any Feast online store through the SDK, in a worker thread (it blocks)."""

    def __init__(self, spec: PipelineSpec, settings: Settings, features: Sequence[str]) -> None:
        self._ctx = feature_store(spec, settings)
        self.store = self._ctx.__enter__()
        self.service = self.store.get_feature_service(spec.features.feature_service)
        self.key = spec.entity.join_key
        self.key_is_int = spec.contract.columns[self.key].dtype == "int"
        self.features = list(features)
        self.lock = threading.Lock()
        self.store_kind = str(self.store.config.online_store.type)
        # a store that is down may hang a read (DNS, connect retries with backoff): the request
        # waits no longer than a version may take before the fallback races it
        self.timeout_s = spec.serving.request_timeout_s

    def lookup_blocking(self, entity_ids: Sequence[str | int]) -> list[dict[str, Any]]:
        rows = [{self.key: int(e) if self.key_is_int else str(e)} for e in entity_ids]
        with self.lock:
            found = self.store.get_online_features(features=self.service, entity_rows=rows).to_dict()
        return [{f: found[f][i] if f in found else None for f in self.features} for i in range(len(rows))]

    async def lookup(self, entity_ids: Sequence[str | int]) -> list[dict[str, Any]]:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.lookup_blocking, entity_ids), self.timeout_s)
        except TimeoutError as err:
            why = TimeoutError(f"no answer within {self.timeout_s:g} s (serving.request_timeout_s)")
            raise unavailable(self.store_kind, why) from err
        except Exception as err:  # the SDK's stores raise their own errors (redis, ...)
            raise unavailable(self.store_kind, err) from err

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)


def open_online_features(spec: PipelineSpec, settings: Settings, features: Sequence[str]) -> OnlineFeatures:
    """The direct reader where the online store is the platform PostgreSQL, else the SDK.
    Blocking (reads Feast's registry): call it in a thread."""
    if settings.redis_url:
        return FeastSdk(spec, settings, features)
    return PostgresOnlineTables(spec, settings, features)
