"""Batch predictions' I/O: the entities staged in the run's storage and read back a chunk at a
time, their point-in-time features from Feast's offline store, and a partition's outputs written as
it scores (the platform database's `batch_predictions`, migration 0022; Parquet), then
`batch_runs` and the latest view."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import SourceDataError, StepInputError
from pipelines.core.settings import Settings
from pipelines.core.spec import FileSource, OfflineStoreEntities, PipelineSpec, S3Source, Source
from pipelines.io import db
from pipelines.io.batch_history import COLUMNS
from pipelines.io.featurestore import feature_store, historical_features
from pipelines.io.sources.files import data_files, index_as_columns
from pipelines.io.sources.frames import columns_differ
from pipelines.io.sources.readers import source_frames
from pipelines.io.storage import Storage, local_file, upload_file, write_parquet

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

TABLE_COLUMNS = ("entity_id", "score", "class", "probabilities")
"""A scored partition's frame: the entity id (text) and the endpoint's answer."""


def partition_of(ids: pd.Series, parallelism: int) -> np.ndarray:
    """The partition of each entity id: a stable hash of the id (of an integer id's value, of any
    other's text) modulo `parallelism`, the same in every process and on every run. Pure."""
    from pandas.api.types import is_integer_dtype
    from pandas.util import hash_pandas_object

    hashed = hash_pandas_object(ids if is_integer_dtype(ids) else ids.astype(str), index=False).to_numpy()
    out: np.ndarray = (hashed % parallelism).astype("int64")
    return out


def newest_mask(
    keys: pd.Series, moments: pd.Series | None, as_of: datetime, since: datetime | None = None
) -> np.ndarray:
    """Which rows are an entity's newest at or before `as_of` (and after `since`, where given): one
    row per entity; where there is no time (`moments` None), each entity's last row. Pure."""
    import numpy as np
    import pandas as pd

    if moments is None:
        last: np.ndarray = ~keys.duplicated(keep="last").to_numpy()
        return last
    instants = pd.to_datetime(moments, utc=True)
    ok = (instants <= pd.Timestamp(as_of)).to_numpy()
    if since is not None:
        ok &= (instants > pd.Timestamp(since)).to_numpy()
    positions = np.flatnonzero(ok)
    kept = pd.DataFrame(
        {"k": keys.to_numpy()[positions], "t": instants.to_numpy(dtype="datetime64[ns]")[positions], "p": positions}
    )
    if not kept["k"].is_unique:
        kept = kept.sort_values("t", kind="stable").drop_duplicates("k", keep="last")
    out = np.zeros(len(keys), dtype=bool)
    out[kept["p"].to_numpy()] = True
    return out


def offline_snapshot(store: Any, spec: PipelineSpec) -> str:
    """The file the offline store's source reads (the snapshot the last features step applied)."""
    try:
        path = str(store.get_data_source(f"{spec.name}_snapshot_source").path)
    except Exception as err:  # feast raises its own not-found errors
        raise StepInputError(f"{spec.name}: the feature store has no source yet; run the lifecycle first") from err
    if "://" in path and not path.startswith("file://"):
        return path
    if not Path(path.removeprefix("file://")).exists():
        raise StepInputError(
            f"{spec.name}: the offline store's snapshot {path} is not readable here; run the features step again"
        )
    return path


@dataclass(frozen=True)
class Staged:
    """A batch run's entities as the pin staged them: Parquet files in the run's storage (their
    keys, their rows) and which of their rows are scored (each entity's newest at as_of)."""

    files: list[str]
    rows: list[int]
    keep: np.ndarray
    partition_rows: list[int]


def stage_entities(
    spec: PipelineSpec,
    settings: Settings,
    storage: Storage,
    key_of: Callable[[str], str],
    as_of: datetime,
    parallelism: int = 1,
) -> Staged:
    """Stage the entities to score in the run's storage, reading no more than a file chunk at a
    time: a Parquet source's files copied byte for byte (only their id and time columns read), any
    other source's rows written a chunk per file; the offline store's ids of every entity it can
    answer for at `as_of` (a row within the longest view's TTL). One row per entity is kept: the
    newest at or before `as_of` (and within the source's `lookback_days`); counted by the partition
    (of `parallelism`) its id hashes to."""
    import numpy as np
    import pandas as pd

    key, ts = spec.entity.join_key, spec.entity.timestamp
    entities = spec.batch.entities if spec.batch is not None else OfflineStoreEntities(kind="offline_store")
    if isinstance(entities, OfflineStoreEntities):
        with feature_store(spec, settings) as store:
            df = pd.read_parquet(offline_snapshot(store, spec), columns=[key, ts])
        since: datetime | None = as_of - timedelta(days=max(v.ttl_days for v in spec.features.views))
        ids = df.loc[newest_mask(df[key], df[ts], as_of, since), [key]].reset_index(drop=True)
        write_parquet(storage, key_of("entities-0.parquet"), ids)
        files, columns = [key_of("entities-0.parquet")], [(ids[key], None)]
    else:
        since = as_of - timedelta(days=entities.lookback_days) if entities.lookback_days is not None else None
        files, columns = _stage_source(entities, settings, storage, key_of, key, ts)
    keys = pd.concat([k for k, _ in columns], ignore_index=True)
    times = [t for _, t in columns]
    moments = None if any(t is None for t in times) else pd.concat(times, ignore_index=True)
    keep = newest_mask(keys, moments, as_of, since)
    if not keep.any():
        raise SourceDataError(f"{spec.name}: no entity to score at or before {as_of.isoformat()}")
    sizes, offset = np.zeros(parallelism, dtype="int64"), 0
    for k, _ in columns:  # each file's ids as a partition reads them (their own dtype)
        mine = keep[offset : offset + len(k)]
        sizes += np.bincount(partition_of(k[mine], parallelism), minlength=parallelism)
        offset += len(k)
    return Staged(files, [len(k) for k, _ in columns], keep, [int(x) for x in sizes])


Columns = list[tuple["pd.Series", "pd.Series | None"]]


def _stage_source(
    source: Source, settings: Settings, storage: Storage, key_of: Callable[[str], str], key: str, ts: str
) -> tuple[list[str], Columns]:
    """(the staged files' keys, each file's id and time columns): a source of Parquet files copied
    as they are; any other source's frames (CSV chunks, a query's rows) written a file each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files: list[str] = []
    columns: Columns = []
    found = data_files(source, settings, None) if isinstance(source, (FileSource, S3Source)) else []
    if found and all(f.fmt == "parquet" for f in found):
        first: list[str] | None = None
        for f in found:
            files.append(key_of(f"entities-{len(files)}.parquet"))
            with f.open() as stream:
                storage.write_stream(files[-1], stream)
            with local_file(storage, files[-1]) as path:
                try:
                    schema = pq.read_schema(path)
                    names = [c for c in (key, ts) if c in schema.names]
                    table = pq.read_table(path, columns=names)
                except (pa.ArrowInvalid, OSError) as err:
                    raise SourceDataError(
                        f"{f.where}: not a readable Parquet file (truncated or corrupt?): {err}"
                    ) from None
            first = first or schema.names
            if sorted(schema.names) != sorted(first):  # a stored index comes last
                raise SourceDataError(
                    f"the files of the source have different columns: {columns_differ(first, schema.names)}"
                )
            columns.append(_id_and_time(table.column_names, table.column, key, ts, f.where))
        return files, columns
    for frame in source_frames(source, settings, None):
        files.append(key_of(f"entities-{len(files)}.parquet"))
        write_parquet(storage, files[-1], frame)
        columns.append(_id_and_time(list(frame.columns), frame.__getitem__, key, ts, "the batch's entities"))
    return files, columns


def _id_and_time(
    names: list[str], column: Callable[[str], Any], key: str, ts: str, where: str
) -> tuple[pd.Series, pd.Series | None]:
    """A staged file's id and time columns (no time column: None), or a clear error without its id."""
    import pandas as pd

    if key not in names:
        raise SourceDataError(f"{where}: no column '{key}' (entity.join_key)")

    def series(name: str) -> pd.Series:
        values = column(name)
        return values if isinstance(values, pd.Series) else values.to_pandas()

    return series(key), series(ts) if ts in names else None


class OfflineFeatures:
    """The feature service's features of entities point-in-time at an instant (Feast's
    `get_historical_features`, as the features step builds the training set), one row per entity
    the views answer within their TTL; the feature store opened on the first lookup and kept for
    the next ones (a partition's every chunk), closed with the object."""

    def __init__(self, spec: PipelineSpec, settings: Settings) -> None:
        self.spec, self.settings = spec, settings
        self._open = ExitStack()
        self._store: Any = None

    def __call__(self, ids: Sequence[Any], as_of: datetime) -> pd.DataFrame:
        import pandas as pd

        if self._store is None:
            self._store = self._open.enter_context(feature_store(self.spec, self.settings))
        key, ts = self.spec.entity.join_key, self.spec.entity.timestamp
        entity_df = pd.DataFrame({key: list(ids), ts: pd.Timestamp(as_of)})
        out = historical_features(self._store, self.spec, entity_df)
        return out.drop(columns=[ts]).drop_duplicates(key, keep="last")

    def __enter__(self) -> OfflineFeatures:
        return self

    def __exit__(self, *exc: object) -> None:
        self._store = None
        self._open.close()


def kept_rows(
    parquet: pq.ParquetFile,
    keep: np.ndarray,
    rows: int,
    *,
    offset: int = 0,
    row_groups: Sequence[int] | None = None,
    threads: int = 1,
    also: Callable[[pa.RecordBatch], np.ndarray] | None = None,
) -> Iterator[pd.DataFrame]:
    """The rows of a staged file that the pin kept (`keep` from the file's first row at `offset`
    among all staged rows; `also` narrows them further), read `rows` at a time (all its row groups,
    or `row_groups`, which must then begin at `offset`), decoded on reader threads only where the
    step has more than one CPU. Text columns stay Arrow strings (pandas' `string[pyarrow]`): no
    Python object per value, nulls from the validity bitmap."""
    import pandas as pd
    import pyarrow as pa

    text = pd.StringDtype("pyarrow")
    arrow_text = {pa.string(): text, pa.large_string(): text}.get

    for batch in parquet.iter_batches(batch_size=rows, row_groups=row_groups, use_threads=threads > 1):
        mine = keep[offset : offset + batch.num_rows].copy()
        offset += batch.num_rows
        if mine.any() and also is not None:
            mine &= also(batch)
        if mine.any():
            table = pa.Table.from_batches([batch.filter(pa.array(mine))], schema=parquet.schema_arrow)
            yield index_as_columns(table.to_pandas(types_mapper=arrow_text))


def partition_chunks(
    storage: Storage,
    files: Sequence[str],
    keep: np.ndarray,
    key: str,
    parallelism: int,
    partition: int,
    rows: int,
    threads: int = 1,
) -> Iterator[pd.DataFrame]:
    """A partition's rows of the staged files, at most `rows` at a time: the rows the pin kept
    whose id hashes to `partition` (as `partition_of`)."""
    import pyarrow.parquet as pq

    def ours(batch: pa.RecordBatch) -> np.ndarray:
        mask: np.ndarray = partition_of(batch.column(key).to_pandas(), parallelism) == partition
        return mask

    offset = 0
    for name in files:
        with local_file(storage, name) as path:
            parquet = pq.ParquetFile(path)
            yield from kept_rows(parquet, keep, rows, offset=offset, threads=threads, also=ours)
            offset += parquet.metadata.num_rows
    if offset != len(keep):
        raise StepInputError(f"the staged entities hold {offset} rows, the pin planned {len(keep)}: changed since")


COPY_ROWS = (
    "COPY batch_predictions (pipeline, run_id, partition, entity_id, as_of, version, score, class, probabilities)"
    " FROM STDIN"
)


class PartitionWriter:
    """A partition's outputs, written as it scores: its rows of `batch_predictions` (its earlier
    attempt's deleted, the new ones copied in chunk by chunk, one transaction committed when the
    `with` block ends without an error: readers see the old rows or the new, never both), and
    Parquet files of its answers and its quarantine (local files, uploaded by `finish`)."""

    def __init__(self, settings: Settings, storage: Storage, meta: dict[str, Any], tmp: Path) -> None:
        self.settings, self.storage, self.meta, self.tmp = settings, storage, meta, tmp
        self.rows_scored = self.rows_quarantined = 0
        self._writers: dict[str, Any] = {}
        self._cursor: Any = None
        self._stack: Any = None

    def __enter__(self) -> PartitionWriter:
        from contextlib import ExitStack

        self._stack = ExitStack()
        if self.meta["table"]:
            conn = self._stack.enter_context(db.connect(self.settings))
            self._cursor = self._stack.enter_context(conn.cursor())
            self._cursor.execute(
                "DELETE FROM batch_predictions WHERE pipeline=%s AND run_id=%s AND partition=%s",
                (self.meta["pipeline"], self.meta["run_id"], self.meta["partition"]),
            )
        return self

    def add(self, scored: pd.DataFrame, quarantined: pd.DataFrame) -> None:
        """One chunk's answers (`TABLE_COLUMNS`) and quarantined rows (`entity_id`, `reasons`)."""
        m = self.meta
        self.rows_scored += len(scored)
        self.rows_quarantined += len(quarantined)
        if len(scored) and self._cursor is not None:
            with self._cursor.copy(COPY_ROWS) as copy:
                head = (m["pipeline"], m["run_id"], m["partition"])
                for eid, score, cls, probs in scored[list(TABLE_COLUMNS)].itertuples(index=False, name=None):
                    copy.write_row((*head, eid, m["as_of"], m["version"], score, cls, probs))
        if len(scored) and m["parquet"]:
            extra = {"as_of": m["as_of"], "version": m["version"], "run_id": m["run_id"], "partition": m["partition"]}
            self._write("answers", scored, extra)
        if len(quarantined):
            self._write("quarantine", quarantined)

    def _write(self, name: str, frame: pd.DataFrame, constants: dict[str, Any] | None = None) -> None:
        """Append the frame's rows to the output's Parquet file; `constants`: columns of one value
        for every row, made as Arrow arrays (not a column of Python objects per chunk)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = OUTPUT_SCHEMAS[name]()
        if name not in self._writers:
            self._writers[name] = pq.ParquetWriter(self.tmp / f"{name}.parquet", schema, compression="zstd")
        fields = [f for f in schema if f.name not in (constants or {})]
        table = pa.Table.from_pandas(frame[[f.name for f in fields]], schema=pa.schema(fields), preserve_index=False)
        columns = {f.name: table.column(f.name) for f in fields}
        for key, value in (constants or {}).items():
            columns[key] = pa.chunked_array([pa.repeat(pa.scalar(value, schema.field(key).type), len(frame))])
        self._writers[name].write_table(pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema))

    def finish(self, keys: dict[str, str]) -> dict[str, str]:
        """Upload the Parquet files written (`keys`: `answers` and `quarantine` by their storage
        key); what was written where. The table's rows commit when the `with` block ends."""
        outputs = {"table": "batch_predictions"} if self._cursor is not None else {}
        for name, writer in self._writers.items():
            writer.close()
            outputs["parquet" if name == "answers" else name] = upload_file(
                self.storage, keys[name], self.tmp / f"{name}.parquet"
            )
        self._writers = {}
        return outputs

    def __exit__(self, *exc: object) -> None:
        for writer in self._writers.values():
            writer.close()
        self._stack.__exit__(*exc)


def _answers_schema() -> Any:
    import pyarrow as pa

    text, number = pa.string(), pa.int64()
    answer = [("entity_id", text), ("score", pa.float64()), ("class", text), ("probabilities", text)]
    return pa.schema([*answer, ("as_of", text), ("version", number), ("run_id", text), ("partition", number)])


def _quarantine_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("entity_id", pa.string()), ("reasons", pa.string())])


OUTPUT_SCHEMAS: dict[str, Callable[[], Any]] = {"answers": _answers_schema, "quarantine": _quarantine_schema}


def latest_view(pipeline: str) -> str:
    """The view of a pipeline's newest published batch run. Pure."""
    return f"{pipeline}_predictions_latest"


def publish(settings: Settings, summary: dict[str, Any], view: bool) -> None:
    """Record a batch run's summary and publish it: one transaction, so the latest view flips from
    the previous run to this one at its commit."""
    from psycopg import sql

    p = summary["pipeline"]
    with db.connect(settings) as conn:
        conn.execute(
            "INSERT INTO batch_runs (pipeline, run_id, version, as_of, partitions, rows_scored, rows_quarantined,"
            " seconds, outputs, published_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp())"
            " ON CONFLICT (pipeline, run_id) DO UPDATE SET version=EXCLUDED.version, as_of=EXCLUDED.as_of,"
            " partitions=EXCLUDED.partitions, rows_scored=EXCLUDED.rows_scored,"
            " rows_quarantined=EXCLUDED.rows_quarantined, seconds=EXCLUDED.seconds, outputs=EXCLUDED.outputs,"
            " published_at=EXCLUDED.published_at, rows_removed_at=NULL",
            (
                p,
                summary["run_id"],
                summary["version"],
                summary["as_of"],
                summary["partitions"],
                summary["rows_scored"],
                summary["rows_quarantined"],
                summary["seconds"],
                json.dumps(summary["outputs"]),
            ),
        )
        if view:
            conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE VIEW {view} AS SELECT p.entity_id, p.as_of, p.version, p.score, p.class,"
                    " p.probabilities, p.run_id, p.partition, p.scored_at FROM batch_predictions p"
                    " WHERE p.pipeline = {p} AND p.run_id = (SELECT r.run_id FROM batch_runs r"
                    " WHERE r.pipeline = {p} AND r.published_at IS NOT NULL"
                    " ORDER BY r.published_at DESC, r.run_id DESC LIMIT 1)"
                ).format(view=sql.Identifier(latest_view(p)), p=sql.Literal(p))
            )


def batch_runs(settings: Settings, pipeline: str, limit: int = 20) -> list[dict[str, Any]]:
    """A pipeline's published batch runs, newest first."""
    with db.connect(settings) as conn:
        return db.fetch_dicts(
            conn,
            f"SELECT {COLUMNS} FROM batch_runs WHERE pipeline=%s ORDER BY published_at DESC NULLS LAST LIMIT %s",  # noqa: S608 (a constant)
            (pipeline, limit),
        )


def render_batch_runs(pipeline: str, runs: list[dict[str, Any]]) -> str:
    """`mlcycle batch show`: a pipeline's published batch runs, newest first, one line each. Pure."""
    if not runs:
        return f"no published batch runs of {pipeline} yet"
    lines = [f"{pipeline}: batch runs, newest first ({latest_view(pipeline)} shows the first)"]
    for r in runs:
        outputs = r["outputs"] or {}
        where = ", ".join(sorted(k if k != "view" else f"view {v}" for k, v in outputs.items()))
        if r.get("rows_removed_at"):
            where += f" (table rows removed {r['rows_removed_at']:%Y-%m-%d})"
        lines.append(
            f"  {r['run_id']}  v{r['version']}  as_of {r['as_of']:%Y-%m-%d %H:%M}  {r['rows_scored']} scored"
            f"  {r['rows_quarantined']} quarantined  {r['partitions']} partition(s)  {r['seconds']:.1f} s"
            f"  published {r['published_at']:%Y-%m-%d %H:%M:%S}  -> {where}"
        )
    return "\n".join(lines)
