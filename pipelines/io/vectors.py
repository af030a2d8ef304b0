"""Vector spaces in PostgreSQL + pgvector: one per model version, never two versions in one.

A space is a table `vectors."<pipeline>_v<version>"` (entity_id, embedding vector(dim), source,
written_at) with its own HNSW or IVFFlat index, and a row of `vector_spaces` that says its state
(filling -> indexing -> ready -> retired -> dropped), size, recall and when it was built. The
`embed` step fills and indexes the challenger's space; the serving ingress adds (or refreshes)
the entities it scores in the space of the version that scored them; similarity reads the space of
the version the `champion` alias names, resolved in the database in the same statement that finds
the space, so the alias move at promotion switches every read at once and a read never mixes two
versions' vectors.

The alias is read from MLflow's own table (`mlflow.registered_model_aliases`): MLflow's backend
store is the platform database's `mlflow` schema, so the registry and the spaces are read in one
snapshot, and an alias moved in MLflow's UI moves the reads too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import MlcycleError
from pipelines.core.settings import Settings
from pipelines.io.db import connect, fetch_dicts

if TYPE_CHECKING:
    import numpy as np
    import psycopg

log = logging.getLogger(__name__)

SCHEMA = "vectors"
OPERATORS = {
    "cosine": ("<=>", "vector_cosine_ops"),
    "l2": ("<->", "vector_l2_ops"),
    "inner_product": ("<#>", "vector_ip_ops"),
}
"""pgvector's distance operator and index operator class per distance (`<#>` is the negative
inner product, so that smaller is nearer for every distance)."""
WRITABLE = ("filling", "indexing", "ready")
READABLE = ("ready", "retired")
HNSW = {"m": 16, "ef_construction": 64}


class SpaceError(MlcycleError):
    """A vector space that cannot be used as asked (another dimension, dropped, missing)."""


class NotInSpace(MlcycleError):
    """The entity has no vector in the champion's space (unknown, or not yet embedded)."""


@dataclass(frozen=True)
class Space:
    pipeline: str
    version: int
    dimension: int
    distance: str
    index_kind: str
    state: str = "filling"
    rows: int = 0

    @property
    def table(self) -> str:
        return space_table(self.pipeline, self.version)


def space_table(pipeline: str, version: int) -> str:
    """The table name of a version's space (its schema is `vectors`). Pure."""
    return f"{pipeline}_v{int(version)}"


def index_options(kind: str, rows: int) -> dict[str, int]:
    """The index's build options: HNSW's graph degree and build beam; IVFFlat's list count (rows /
    1000, at least 1, as pgvector recommends up to a million rows). Pure."""
    if kind == "hnsw":
        return dict(HNSW)
    return {"lists": max(1, rows // 1000)}


def probes(lists: int) -> int:
    """How many IVFFlat lists a query visits: all of them up to 10, then the square root (at least
    10), as pgvector suggests; the recall gate measures with the same number the endpoint uses. Pure."""
    return min(lists, max(10, math.isqrt(lists)))


def recall(approximate: Sequence[Sequence[float]], exact: Sequence[Sequence[float]], k: int) -> float:
    """Mean recall@k of approximate neighbours against exact search, from the distances of each
    query's neighbours (nearest first). Tie-aware: an approximate neighbour as near as the exact
    k-th is a hit (entities with the same features have the same vector, and which of them exact
    search lists is arbitrary). Pure."""
    hits = []
    for a, e in zip(approximate, exact, strict=True):
        if not e:
            continue
        wanted = min(k, len(e))
        bound = e[wanted - 1] + 1e-6 * max(1.0, abs(e[wanted - 1]))
        hits.append(min(wanted, sum(1 for d in a[:k] if d <= bound)) / wanted)
    return sum(hits) / len(hits) if hits else 1.0


def vector_text(values: Sequence[float]) -> str:
    """pgvector's text form of a vector, `[0.1,0.2]`. Pure."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def latest_vectors(rows: Sequence[tuple[int, str, Any]]) -> dict[int, dict[str, Any]]:
    """The last vector queued per entity, by version. Pure."""
    out: dict[int, dict[str, Any]] = {}
    for version, entity, vector in rows:
        out.setdefault(version, {})[entity] = vector
    return out


def _table(space: Space) -> Any:
    from psycopg import sql

    return sql.Identifier(SCHEMA, space.table)


SPACE_ROW = "SELECT * FROM vector_spaces WHERE pipeline = %s AND model_version = %s"


def _space(row: dict[str, Any]) -> Space:
    fields = ("pipeline", "model_version", "dimension", "distance", "index_kind", "state", "rows")
    return Space(*(row[f] for f in fields))


def space_info(settings: Settings, pipeline: str, version: int) -> dict[str, Any] | None:
    """The `vector_spaces` row of a version's space, or None."""
    with connect(settings) as conn:
        rows = fetch_dicts(conn, SPACE_ROW, (pipeline, version))
    return rows[0] if rows else None


def open_space(
    settings: Settings,
    pipeline: str,
    version: int,
    dimension: int,
    distance: str,
    index_kind: str,
    run_id: str,
    model_sha256: str,
) -> Space:
    """The version's space, created (its table and its row, `filling`) when new. A space of the
    version with another dimension or distance, or one already dropped, is an error; a space left
    by another model under the same version number (the registered model deleted and made again)
    is stale: it is dropped and made anew."""
    from psycopg import sql

    with connect(settings) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"vectors:{pipeline}:{version}",))
        found = fetch_dicts(conn, SPACE_ROW, (pipeline, version))
        if found and found[0]["model_sha256"] != model_sha256:
            log.warning(
                "%s v%s: the space of another model (%s) is replaced", pipeline, version, found[0]["model_sha256"]
            )
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, space_table(pipeline, version)))
            )
            conn.execute("DELETE FROM vector_spaces WHERE pipeline = %s AND model_version = %s", (pipeline, version))
            found = []
        if found:
            space = _space(found[0])
            if (space.dimension, space.distance) != (dimension, distance):
                raise SpaceError(
                    f"{pipeline} v{version} has a space of {space.dimension} dimensions ({space.distance}); "
                    f"asked for {dimension} ({distance})"
                )
            if space.state == "dropped":
                raise SpaceError(f"{pipeline} v{version}'s space was dropped ({found[0]['reason']})")
            return space
        space = Space(pipeline, version, dimension, distance, index_kind)
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (entity_id text PRIMARY KEY, embedding vector({}) NOT NULL,"
                " source text NOT NULL CHECK (source IN ('backfill', 'served')),"
                " written_at timestamptz NOT NULL DEFAULT now())"
            ).format(_table(space), sql.SQL(str(int(dimension))))
        )
        conn.execute(
            "INSERT INTO vector_spaces (pipeline, model_version, model_sha256, table_name, dimension, distance,"
            " index_kind, state, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, 'filling', %s)",
            (pipeline, version, model_sha256, f"{SCHEMA}.{space.table}", dimension, distance, index_kind, run_id),
        )
    return space


def present(settings: Settings, space: Space) -> set[str]:
    """The entities that have a vector in the space already (a resumed backfill skips them)."""
    from psycopg import sql

    with connect(settings) as conn:
        return {r[0] for r in conn.execute(sql.SQL("SELECT entity_id FROM {}").format(_table(space)))}


def copy_vectors(settings: Settings, space: Space, ids: Sequence[str], vectors: np.ndarray) -> int:
    """COPY vectors into the space (binary, through a temporary table); an entity already there
    (written by serving meanwhile: fresher) is kept. Returns the rows added."""
    from pgvector.psycopg import register_vector
    from psycopg import sql

    with connect(settings) as conn:
        register_vector(conn)
        conn.execute(
            sql.SQL("CREATE TEMP TABLE stage (entity_id text, embedding vector({})) ON COMMIT DROP").format(
                sql.SQL(str(int(space.dimension)))
            )
        )
        with conn.cursor().copy("COPY stage FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "vector"])
            for entity, vector in zip(ids, vectors, strict=True):
                copy.write_row((entity, vector))
        added = conn.execute(
            sql.SQL(
                "INSERT INTO {} (entity_id, embedding, source) SELECT entity_id, embedding, 'backfill' FROM stage"
                " ON CONFLICT (entity_id) DO NOTHING"
            ).format(_table(space))
        ).rowcount
        conn.execute(
            "UPDATE vector_spaces SET rows = rows + %s WHERE pipeline = %s AND model_version = %s",
            (added, space.pipeline, space.version),
        )
    return int(added)


def build_index(settings: Settings, space: Space) -> float:
    """Build the space's index (once: a resumed step finds it) and record the build; returns seconds."""
    from psycopg import sql

    with connect(settings) as conn:
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_table(space))).fetchone()
    n = int(rows[0]) if rows else 0
    options = index_options(space.index_kind, n)
    with connect(settings, autocommit=True) as conn:
        conn.execute(
            "UPDATE vector_spaces SET state = 'indexing', rows = %s WHERE pipeline = %s AND model_version = %s",
            (n, space.pipeline, space.version),
        )
        conn.execute("SET maintenance_work_mem = '256MB'")
        started = time.monotonic()
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING {} (embedding {}) WITH ({})").format(
                sql.Identifier(f"{space.table}_{space.index_kind}"),
                _table(space),
                sql.SQL(space.index_kind),
                sql.SQL(OPERATORS[space.distance][1]),
                sql.SQL(", ").join(sql.SQL(f"{k} = {int(v)}") for k, v in options.items()),
            )
        )
        seconds = time.monotonic() - started
        conn.execute(
            "UPDATE vector_spaces SET built_at = now(), build_seconds = %s WHERE pipeline = %s AND model_version = %s",
            (seconds, space.pipeline, space.version),
        )
    return seconds


def neighbours_sql(space: Space) -> Any:
    from psycopg import sql

    return sql.SQL(
        "SELECT entity_id, embedding {op} %(q)s::vector AS distance FROM {t} WHERE entity_id <> %(id)s"
        " ORDER BY embedding {op} %(q)s::vector LIMIT %(k)s"
    ).format(op=sql.SQL(OPERATORS[space.distance][0]), t=_table(space))


def search_settings(conn: psycopg.Connection[Any], space: Space) -> None:
    """The session's search settings for the space's index (IVFFlat: the lists to visit)."""
    from psycopg import sql

    if space.index_kind == "ivfflat":
        lists = index_options("ivfflat", space.rows)["lists"]
        conn.execute(sql.SQL("SET ivfflat.probes = {}").format(sql.SQL(str(probes(lists)))))


def query_vector(conn: psycopg.Connection[Any], space: Space, entity_id: str) -> str | None:
    from psycopg import sql

    row = conn.execute(
        sql.SQL("SELECT embedding::text FROM {} WHERE entity_id = %s").format(_table(space)), (entity_id,)
    ).fetchone()
    return str(row[0]) if row else None


def measure_recall(settings: Settings, space: Space, sample: int, k: int = 10) -> float:
    """Recall@k of the index against exact search (the index switched off) for `sample` entities
    of the space (the same ones on every call: by a hash of their id)."""
    from psycopg import sql

    approximate, exact = [], []
    with connect(settings) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT entity_id FROM {} ORDER BY md5(entity_id) LIMIT %s").format(_table(space)), (sample,)
            )
        ]
        counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_table(space))).fetchone()
        space = dataclasses.replace(space, rows=int(counted[0]) if counted else 0)
        search_settings(conn, space)
        query = neighbours_sql(space)
        conn.execute("SET LOCAL enable_seqscan = off")  # the index, even where a small table would be scanned
        queries = [{"q": query_vector(conn, space, entity), "id": entity, "k": k} for entity in ids]
        for params in queries:
            approximate.append([float(r[1]) for r in conn.execute(query, params)])
        conn.execute("SET LOCAL enable_seqscan = on")
        conn.execute("SET LOCAL enable_indexscan = off")
        for params in queries:
            exact.append([float(r[1]) for r in conn.execute(query, params)])
    return recall(approximate, exact, k)


def mark_ready(settings: Settings, space: Space, recall_at_10: float) -> None:
    """The space answers similarity queries once its version is the champion."""
    from psycopg import sql

    with connect(settings) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE vector_spaces SET state = 'ready', ready_at = now(), recall_at_10 = %s,"
                " rows = (SELECT count(*) FROM {}) WHERE pipeline = %s AND model_version = %s"
            ).format(_table(space)),
            (recall_at_10, space.pipeline, space.version),
        )


def retire_space(settings: Settings, pipeline: str, version: int) -> bool:
    """Mark a replaced champion's space retired (kept `embeddings.retain_hours`); False if it has none."""
    with connect(settings) as conn:
        return bool(
            conn.execute(
                "UPDATE vector_spaces SET state = 'retired', retired_at = now() WHERE pipeline = %s"
                " AND model_version = %s AND state IN ('filling', 'indexing', 'ready')",
                (pipeline, version),
            ).rowcount
        )


def drop_space(settings: Settings, pipeline: str, version: int, reason: str) -> bool:
    """Drop a version's space (its table; the row stays, `dropped`, with the reason); False if it
    had none or it was dropped already."""
    from psycopg import sql

    with connect(settings) as conn:
        found = conn.execute(
            "SELECT 1 FROM vector_spaces WHERE pipeline = %s AND model_version = %s AND state <> 'dropped' FOR UPDATE",
            (pipeline, version),
        ).fetchone()
        if not found:
            return False
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, space_table(pipeline, version))))
        conn.execute(
            "UPDATE vector_spaces SET state = 'dropped', dropped_at = now(), reason = %s"
            " WHERE pipeline = %s AND model_version = %s",
            (reason, pipeline, version),
        )
    return True


def expired(retired: Sequence[tuple[int, datetime]], retain_hours: float, now: datetime) -> list[int]:
    """The retired versions whose retention has passed. Pure."""
    return [v for v, at in retired if now - at >= timedelta(hours=retain_hours)]


def sweep_retired(settings: Settings, pipeline: str, retain_hours: float, now: datetime) -> list[int]:
    """Drop the retired spaces of the pipeline kept longer than `retain_hours`; returns their versions."""
    with connect(settings) as conn:
        retired = [
            (int(r[0]), r[1])
            for r in conn.execute(
                "SELECT model_version, retired_at FROM vector_spaces WHERE pipeline = %s AND state = 'retired'",
                (pipeline,),
            )
        ]
    gone = expired(retired, retain_hours, now)
    for version in gone:
        drop_space(settings, pipeline, version, f"retired more than {retain_hours:g} h ago")
    return gone


CHAMPION_SPACE = (  # the readable states are the module's constants, never input
    "SELECT s.* FROM vector_spaces s JOIN mlflow.registered_model_aliases a"  # noqa: S608 (constants only)
    " ON a.name = %s AND a.alias = 'champion' AND a.version = s.model_version"
    f" WHERE s.pipeline = %s AND s.state IN ({', '.join(repr(state) for state in READABLE)})"
)


def similar(conn: psycopg.Connection[Any], pipeline: str, model: str, entity_id: str, k: int) -> dict[str, Any]:
    """The `k` entities nearest `entity_id` in the space of the version the `champion` alias names
    now: `{"version", "distance", "neighbours": [{"entity_id", "distance"}]}`. The space is
    resolved once, then read: one version's vectors, whatever moves meanwhile."""
    found = fetch_dicts(conn, CHAMPION_SPACE, (model, pipeline))
    if not found:
        raise SpaceError(f"{pipeline}: the champion has no ready vector space (has its `embed` step run?)")
    space = _space(found[0])
    q = query_vector(conn, space, entity_id)
    if q is None:
        raise NotInSpace(f"entity {entity_id!r} has no vector in v{space.version}'s space")
    search_settings(conn, space)
    rows = conn.execute(neighbours_sql(space), {"q": q, "id": entity_id, "k": k}).fetchall()
    return {
        "version": space.version,
        "distance": space.distance,
        "neighbours": [{"entity_id": r[0], "distance": float(r[1])} for r in rows],
    }


def champion_entity(settings: Settings, pipeline: str, model: str) -> str | None:
    """An entity of the champion's space (the first by id), or None without one."""
    with connect(settings) as conn:
        found = fetch_dicts(conn, CHAMPION_SPACE, (model, pipeline))
        if not found:
            return None
        row = conn.execute(_first_entity_sql(_space(found[0]))).fetchone()
    return str(row[0]) if row else None


def _first_entity_sql(space: Space) -> Any:
    from psycopg import sql

    return sql.SQL("SELECT entity_id FROM {} ORDER BY entity_id LIMIT 1").format(_table(space))


def writable_versions(conn: psycopg.Connection[Any], pipeline: str) -> dict[int, int]:
    """The versions of the pipeline whose space takes writes, with their dimension."""
    return {
        int(r[0]): int(r[1])
        for r in conn.execute(
            "SELECT model_version, dimension FROM vector_spaces WHERE pipeline = %s AND state = ANY(%s)",
            (pipeline, list(WRITABLE)),
        )
    }


def write_served(
    conn: psycopg.Connection[Any],
    pipeline: str,
    rows: Sequence[tuple[int, str, Any]],
    spaces: dict[int, int],
) -> int:
    """Upsert served embeddings `(version, entity_id, vector)` into the spaces that take writes
    (`spaces`: `writable_versions`, read in the same transaction; the newest vector of an entity
    wins); rows of versions without one are dropped before any is formatted. Returns the rows
    written."""
    from psycopg import sql

    written = 0
    for version, latest in latest_vectors(rows).items():
        if version not in spaces:
            continue
        table = sql.Identifier(SCHEMA, space_table(pipeline, version))
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (entity_id, embedding, source) VALUES (%s, %s::vector({}), 'served')"
                    " ON CONFLICT (entity_id) DO UPDATE SET embedding = EXCLUDED.embedding, source = 'served',"
                    " written_at = now()"
                ).format(table, sql.SQL(str(int(spaces[version])))),
                [(entity, vector_text(vector)) for entity, vector in latest.items()],
            )
        written += len(latest)
    return written
