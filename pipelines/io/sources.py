"""Source readers: a spec's (or a labels load's) source read into a frame, with clear errors for
missing, empty, truncated or malformed input. Files (or a directory of them), S3 objects (or every
object under a prefix), Postgres queries (the window as bound parameters), synthetic data.

With a window (`pipelines.core.window`), a location template is rendered for it and the rows are
kept by the entity timestamp: `(start, end]`. A row whose timestamp cannot be read is kept, so
that validation sees it and says so.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from pipelines.core.errors import SourceDataError, SourceError, SourceUnavailable
from pipelines.core.settings import Settings
from pipelines.core.spec import (
    DatasetSource,
    FileSource,
    PipelineSpec,
    PostgresSource,
    S3Source,
    Source,
    SyntheticSource,
)
from pipelines.core.window import Window, query_params, render_location
from pipelines.io.db import database_url
from pipelines.io.storage import parse_s3_uri
from pipelines.ml.datagen import ChurnConfig, auto_start, generate_churn
from pipelines.ml.datasets import DATASETS
from pipelines.ml.labels import decode_label

if TYPE_CHECKING:
    import pandas as pd


def normalize_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Make a frame storable as Parquet without losing what validation must see.

    Object columns that mix Python types (a number column with a stray `"n/a"`) become strings, so
    the bad values reach `validate` as they were instead of failing the write. Column names become
    strings; the index is dropped.
    """
    out = df.reset_index(drop=True)
    out.columns = [str(c) for c in out.columns]
    for col in out.columns:
        s = out[col]
        if s.dtype == object:
            kinds = {type(v) for v in s.dropna()}
            if len(kinds) > 1:
                out[col] = s.map(lambda v: None if v is None or v != v else str(v)).astype(object)
    return out


def infer_format(name: str, declared: str | None) -> str:
    if declared:
        return declared
    lower = name.lower()
    for ext, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".csv", "csv"), (".csv.gz", "csv")):
        if lower.endswith(ext):
            return fmt
    raise SourceError(f"{name}: cannot tell the format from the name; set source.format (csv|parquet)")


CHUNK_ROWS = 100_000  # rows a file is read by: tens of MB of frame, whatever the file's size


def file_frames(
    stream: BinaryIO, fmt: str, where: str, delimiter: str = ",", rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """A file's rows in frames of at most `rows` (CSV in chunks, Parquet in record batches), so that
    memory holds one chunk and never the whole file; a clear error for empty, truncated or malformed
    input. A CSV's UTF-8 byte order mark is not part of its first column's name; `.gz` is gunzipped."""
    import pandas as pd  # heavy: pandas, pyarrow
    import pyarrow as pa

    if not stream.read(1):
        raise SourceDataError(f"{where}: the file is empty (0 bytes)")
    stream.seek(0)
    count = 0
    try:
        for frame in _parquet_frames(stream, rows) if fmt == "parquet" else _csv_frames(stream, where, delimiter, rows):
            count += len(frame)
            yield frame
    except (pa.ArrowInvalid, OSError, EOFError) as err:  # EOFError: a truncated gzip
        kind = "Parquet" if fmt == "parquet" else "CSV"
        raise SourceDataError(f"{where}: not a readable {kind} file (truncated or corrupt?): {err}") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SourceDataError(f"{where}: not a readable CSV file: {err}") from None
    if count == 0:
        raise SourceDataError(f"{where}: the source has no rows")


def _parquet_frames(stream: BinaryIO, rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa  # heavy: pyarrow
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(stream)
    for batch in parquet.iter_batches(batch_size=rows):
        yield pa.Table.from_batches([batch], schema=parquet.schema_arrow).to_pandas()


def _csv_frames(stream: BinaryIO, where: str, delimiter: str, rows: int) -> Iterator[pd.DataFrame]:
    import pandas as pd  # heavy: pandas

    compression = "gzip" if where.lower().endswith(".gz") else None
    reader = pd.read_csv(
        stream, sep=delimiter, encoding="utf-8-sig", compression=compression, chunksize=rows, low_memory=False
    )
    with reader:
        for n, frame in enumerate(reader):
            hint = delimiter_hint(list(frame.columns), delimiter) if n == 0 else None
            if hint:
                raise SourceDataError(f"{where}: {hint}")
            yield frame


DELIMITERS = (";", "\t", "|", ",")


def delimiter_hint(columns: list[str], delimiter: str) -> str | None:
    """Why a CSV read as one column is read wrong: its header holds another separator. Pure."""
    if len(columns) != 1:
        return None
    header = str(columns[0])
    for other in DELIMITERS:
        if other != delimiter and other in header:
            shown = "\\t" if other == "\t" else other
            return (
                f"read as one column '{header[:60]}': the file looks separated by '{shown}', not "
                f"'{delimiter}'; set source.delimiter: '{shown}' in the spec"
            )
    return None


def instants(values: pd.Series) -> pd.Series:
    """A column as UTC instants (NaT where a value is not a time), whatever mix of ISO forms: the
    vectorised ISO 8601 parser first, the per-value one only for what it could not read. Pure."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    out = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    rest = out.isna() & values.notna()
    if rest.any():
        out[rest] = pd.to_datetime(values[rest], utc=True, errors="coerce", format="mixed")
    return out


def in_window(ts: pd.Series, window: Window) -> pd.Series:
    """Which instants fall in the window `(start, end]`; an unreadable one (NaT) stays, for
    validation to reject with a reason. Pure."""
    import pandas as pd

    keep = ts.isna() | (ts <= pd.Timestamp(window.end))
    if window.start is not None:
        keep &= ts.isna() | (ts > pd.Timestamp(window.start))
    return keep


def within(df: pd.DataFrame, column: str, window: Window) -> pd.DataFrame:
    """The rows of the window by `column`. Pure."""
    return df[in_window(instants(_column(df, column)), window).to_numpy()].reset_index(drop=True)


def _column(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        columns = list(df.columns)
        raise SourceDataError(f"the source has no {column} column to read a time window by (columns: {columns})")
    return df[column]


def read_source(source: Source, settings: Settings, window: Window | None = None, timestamp: str = "") -> pd.DataFrame:
    """Read the spec's source into a frame; with a window, only its rows (by the `timestamp`
    column), or a SourceError saying which window found none. Files are read chunk by chunk and
    the window applied to each, so memory holds the window's rows, not the file."""
    return gather(_frames(source, settings, window), window, timestamp)


def gather(frames: Iterable[pd.DataFrame], window: Window | None, timestamp: str) -> pd.DataFrame:
    """One frame of the rows of `frames` in the window (every row without one); the frames must
    have the same columns. Holds only the kept rows of the frames read so far."""
    import pandas as pd  # heavy: pandas

    kept: list[pd.DataFrame] = []
    columns: list[str] | None = None
    span: tuple[Any, Any] | None = None  # the earliest and latest readable instants seen
    for frame in frames:
        if columns is None:
            columns = list(frame.columns)
        elif list(frame.columns) != columns:
            other = list(frame.columns)
            raise SourceDataError(f"the files of the source have different columns: {columns} and {other}")
        if window is not None:
            ts = instants(_column(frame, timestamp))
            span = widened(span, ts.min(), ts.max())
            frame = frame[in_window(ts, window).to_numpy()]
        if len(frame):
            kept.append(frame)
    if not kept and window is not None:
        spans = f"spans {span[0]} .. {span[1]}" if span else "holds no readable time"
        raise SourceDataError(
            f"no rows in the window {window.to_dict()['start'] or '-inf'} .. {window.end.isoformat()} "
            f"(the source's {timestamp} {spans})"
        )
    if not kept:
        raise SourceDataError("the source has no rows")
    return pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0].reset_index(drop=True)


def widened(span: tuple[Any, Any] | None, lo: Any, hi: Any) -> tuple[Any, Any] | None:
    """The span `(earliest, latest)` grown by a chunk's; a chunk with no readable time (NaT) leaves
    it as it was. Pure."""
    if lo is None or lo != lo:  # NaT is not equal to itself
        return span
    return (lo, hi) if span is None else (min(span[0], lo), max(span[1], hi))


@dataclass(frozen=True)
class DataFile:
    """One file of a file or S3 source: where it is (for errors), its format, how to open it."""

    where: str
    fmt: str
    open: Callable[[], AbstractContextManager[BinaryIO]]


def _frames(source: Source, settings: Settings, window: Window | None) -> Iterator[pd.DataFrame]:
    if isinstance(source, (FileSource, S3Source)):
        for f in _files(source, settings, window):
            with f.open() as stream:
                yield from file_frames(stream, f.fmt, f.where, source.delimiter)
    elif isinstance(source, PostgresSource):
        yield _read_postgres(source, settings, window)
    elif isinstance(source, SyntheticSource):
        yield generate_churn(synthetic_config(source, datetime.now(UTC).date()))
    elif isinstance(source, DatasetSource):
        end = datetime.now(UTC).date() if source.end == "auto" else date.fromisoformat(source.end)
        yield DATASETS[source.name](source.months, end, source.seed)
    else:
        raise AssertionError(f"unhandled source {source!r}")


def _files(source: FileSource | S3Source, settings: Settings, window: Window | None) -> list[DataFile]:
    """The files a file source (a path or a directory) or an S3 source (an object or a prefix) names."""
    if isinstance(source, FileSource):
        path = Path(render_location(source.path, window) if window else source.path).expanduser()
        if not path.is_absolute():
            path = settings.project_dir / path
        paths = [path]
        if path.is_dir():
            paths = sorted(f for f in path.iterdir() if f.is_file() and _data_file(f.name))
            if not paths:
                raise SourceError(f"source.path: {path} holds no .csv or .parquet file")
        return [DataFile(str(p), infer_format(p.name, source.format), functools.partial(_open_file, p)) for p in paths]
    uri = render_location(source.uri, window) if window else source.uri
    uris = [uri]
    if uri.endswith("/"):
        bucket, _ = parse_s3_uri(uri)
        uris = [f"s3://{bucket}/{k}" for k in _list_s3(uri, settings) if _data_file(k)]
        if not uris:
            raise SourceError(f"source.uri: no .csv or .parquet object under {uri}")
    return [DataFile(u, infer_format(u, source.format), functools.partial(_open_s3, u, settings)) for u in uris]


DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def synthetic_config(source: SyntheticSource, today: date, seed_offset: int = 0) -> ChurnConfig:
    """The generator's configuration of a synthetic source (`start: auto` resolved for `today`);
    `seed_offset` draws other customers of the same world. Pure."""
    cfg = source.model_dump(exclude={"kind", "lookback_days", "feedback"})
    if cfg["start"] == "auto":
        cfg["start"] = auto_start(source.months, today)
    return ChurnConfig(**{**cfg, "seed": source.seed + seed_offset})


def _data_file(name: str) -> bool:
    return name.lower().endswith(DATA_SUFFIXES)


def _list_s3(prefix_uri: str, settings: Settings) -> list[str]:
    import boto3  # heavy: boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(prefix_uri)
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
    keys: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
    except ClientError as err:
        raise SourceError(
            f"source.uri: cannot list {prefix_uri}: {err.response.get('Error', {}).get('Code', '?')}"
        ) from None
    except BotoCoreError as err:
        raise SourceUnavailable(f"source.uri: cannot reach S3 for {prefix_uri}: {err}") from None
    return sorted(keys)


@contextmanager
def _open_file(path: Path) -> Iterator[BinaryIO]:
    try:
        stream = path.open("rb")
    except OSError as err:
        raise SourceError(f"source.path: cannot read {path}: {err.strerror}") from None
    with stream:
        yield stream


SPOOL_BYTES = 32 << 20  # an S3 object larger than this is spooled to a temporary file, not memory


@contextmanager
def _open_s3(uri: str, settings: Settings) -> Iterator[BinaryIO]:
    """The object's bytes as a seekable file (Parquet needs one): copied as they arrive into a
    temporary file that stays in memory up to SPOOL_BYTES."""
    import boto3  # heavy: boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_s3_uri(uri)
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            shutil.copyfileobj(body, spool, 1 << 20)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            raise SourceError(f"source.uri: cannot read {uri}: {code}") from None
        except BotoCoreError as err:
            raise SourceUnavailable(f"source.uri: cannot reach S3 for {uri}: {err}") from None
        spool.seek(0)
        yield cast(BinaryIO, spool)


def _read_postgres(source: PostgresSource, settings: Settings, window: Window | None) -> pd.DataFrame:
    """Run the query in a read-only transaction, the window's instants bound as parameters (never
    formatted into the text); the URL comes from `url_env` or the platform DB."""
    import pandas as pd  # heavy: pandas
    import psycopg

    if source.url_env:
        url = os.environ.get(source.url_env)
        if not url:
            raise SourceError(f"source.url_env: environment variable {source.url_env} is not set")
    else:
        url = database_url(settings)
    try:
        with psycopg.connect(url) as conn:
            conn.read_only = True
            params: dict[str, Any] | None = None
            if query_params(source.query):
                if window is None:
                    raise SourceError("source.query: binds the run's window, and this read has none")
                params = window.names()
            cur = conn.execute(source.query, params)
            if cur.description is None:
                raise SourceError("source.query: the statement returns no rows (not a SELECT?)")
            cols = [d.name for d in cur.description]
            rows = cur.fetchall()
    except psycopg.OperationalError as err:  # the server: down, restarting, unreachable
        raise SourceUnavailable(f"source.query: {str(err).strip()}") from None
    except psycopg.Error as err:
        raise SourceError(f"source.query: {str(err).strip()}") from None
    if not rows:
        raise SourceDataError("source.query: the query returned no rows")
    return pd.DataFrame.from_records(rows, columns=cols)


def feedback_frame(records: list[dict[str, Any]], spec: PipelineSpec) -> pd.DataFrame:
    """Labelled served predictions (`pipelines.io.requestlog.feedback`) as rows of the spec's
    source: the entity key, the instant served as the entity timestamp, the features exactly as
    served, the label; columns typed as the contract declares (a value that does not parse
    stays as it was, for validation to reject with its reason). Pure."""
    import pandas as pd

    contract = spec.contract.columns
    key, ts, label = spec.entity.join_key, spec.entity.timestamp, spec.label.column
    rows = [
        {
            **{c: r["features"].get(c) for c in contract if c not in (key, ts, label)},
            key: r["entity_id"],
            ts: r["served_at"],
            label: decode_label(r["label"], spec.classes),
        }
        for r in records
    ]
    df = pd.DataFrame(rows, columns=list(contract))
    for column, declared in contract.items():
        values = df[column]
        if declared.dtype in ("int", "float", "bool"):
            number = pd.to_numeric(values, errors="coerce")
            if number.notna().sum() == values.notna().sum():  # all parsed: typed, else left as served
                whole = declared.dtype in ("int", "bool") and number.notna().all() and (number % 1 == 0).all()
                df[column] = number.astype("int64") if whole else number
                if declared.dtype == "bool" and whole:
                    df[column] = df[column].astype(bool)
        elif declared.dtype == "datetime":
            df[column] = pd.to_datetime(values, utc=True, errors="coerce")
        else:
            df[column] = values.map(lambda v: None if v is None else str(v)).astype(object)
    return df
