"""A source read into a frame: the reader of each kind (files and S3 objects, a Postgres query with
the window as bound parameters, synthetic data, a bundled dataset), the window applied as it reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import SourceDataError, SourceError, SourceUnavailable, redact
from pipelines.core.settings import Settings
from pipelines.core.spec import (
    DatasetSource,
    FileSource,
    PostgresSource,
    S3Source,
    Source,
    SourceBase,
    SyntheticSource,
)
from pipelines.core.sql import query_problem
from pipelines.core.window import Window, query_params
from pipelines.io.db import database_url
from pipelines.io.sources.files import CHUNK_ROWS, data_files, file_frames
from pipelines.io.sources.frames import gather, no_column_text
from pipelines.ml.datagen import ChurnConfig, auto_start, generate_churn
from pipelines.ml.datasets import DATASETS

if TYPE_CHECKING:
    import pandas as pd


def read_source(
    source: Source,
    settings: Settings,
    window: Window | None = None,
    timestamp: str = "",
    required: Sequence[str] = (),
) -> pd.DataFrame:
    """Read the spec's source into a frame; with a window, only its rows (by the `timestamp`
    column), or a SourceError saying which window found none. Files are read chunk by chunk and
    the window applied to each, so memory holds the window's rows, not the file. `required` (the
    contract's columns) only words the error for a file that is not this pipeline's data; no error
    quotes a file's content."""
    frames = source_frames(source, settings, window, timestamp if window is not None else "", required)
    return gather(frames, window, timestamp, required)


def source_frames(
    source: Source, settings: Settings, window: Window | None, timestamp: str = "", required: Sequence[str] = ()
) -> Iterator[pd.DataFrame]:
    if isinstance(source, (FileSource, S3Source)):
        for f in data_files(source, settings, window):
            with f.open() as stream:
                for n, frame in enumerate(file_frames(stream, f.fmt, f.where, source.delimiter)):
                    if n == 0 and timestamp and timestamp not in frame.columns:
                        problem = no_column_text(len(frame.columns), timestamp, required, source.delimiter)
                        raise SourceDataError(f"{f.where}: {problem}")
                    yield frame
    elif isinstance(source, PostgresSource):
        yield from postgres_frames(source, settings, window)
    elif isinstance(source, SyntheticSource):
        yield generate_churn(synthetic_config(source, datetime.now(UTC).date()))
    elif isinstance(source, DatasetSource):
        end = datetime.now(UTC).date() if source.end == "auto" else date.fromisoformat(source.end)
        yield DATASETS[source.name](source.months, end, source.seed)
    else:
        raise AssertionError(f"unhandled source {source!r}")


SOURCE_ROLE = "mlcycle_source"
"""The read-only role of the platform database (migration 0014) a Postgres source reads as by default."""


def source_url(source: PostgresSource, settings: Settings) -> str:
    """The connection URL of a Postgres source: `url_env`'s, else `MLCYCLE_SOURCE_DATABASE_URL`, else
    the platform database's as its read-only role (no password: the embedded server trusts its
    socket; a cluster sets the URL), never the platform's own user."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if source.url_env:
        url = os.environ.get(source.url_env)
        if not url:
            raise SourceError(f"source.url_env: environment variable {source.url_env} is not set")
        return url
    if settings.source_database_url:
        return settings.source_database_url
    params = {k: v for k, v in conninfo_to_dict(database_url(settings)).items() if k != "password"}
    return make_conninfo(**{**params, "user": SOURCE_ROLE})  # type: ignore[arg-type]


def postgres_frames(
    source: PostgresSource, settings: Settings, window: Window | None, rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The query's rows, `rows` at a time, through a server-side cursor (DECLARE ... FETCH: the
    server holds the result, this process one chunk of it) declared through the extended protocol
    (one statement at most), in a READ ONLY transaction, the window's instants bound as parameters
    (never formatted into the text), as `source_url`'s role. One read statement only, refused
    before connecting otherwise; a write in a WITH is refused by the server."""
    import pandas as pd  # heavy: pandas
    import psycopg

    problem = query_problem(source.query)
    if problem:
        raise SourceError(f"source.query: {problem}")
    url = source_url(source, settings)
    read = 0
    try:
        with psycopg.connect(url) as conn:
            conn.read_only = True
            params: dict[str, Any] | None = None
            if query_params(source.query):
                if window is None:
                    raise SourceError("source.query: binds the run's window, and this read has none")
                params = window.names()
            with conn.cursor(name="mlcycle_source") as cur:
                cur.execute(source.query, params)
                if cur.description is None:
                    raise SourceError("source.query: the statement returns no rows (not a SELECT?)")
                cols = [d.name for d in cur.description]
                while chunk := cur.fetchmany(rows):
                    read += len(chunk)
                    yield pd.DataFrame.from_records(chunk, columns=cols)  # Decimal stays exact (numeric ids)
    except psycopg.OperationalError as err:  # the server: down, restarting, unreachable
        raise SourceUnavailable(f"source.query: {redact(str(err).strip())}") from None
    except psycopg.Error as err:
        raise SourceError(f"source.query: {redact(str(err).strip())}") from None
    if not read:
        raise SourceDataError("source.query: the query returned no rows")


def synthetic_config(source: SyntheticSource, today: date, seed_offset: int = 0) -> ChurnConfig:
    """The generator's configuration of a synthetic source (`start: auto` resolved for `today`);
    `seed_offset` draws other customers of the same world. Pure."""
    cfg = source.model_dump(exclude={"kind", *SourceBase.model_fields})
    if cfg["start"] == "auto":
        cfg["start"] = auto_start(source.months, today)
    return ChurnConfig(**{**cfg, "seed": source.seed + seed_offset})
