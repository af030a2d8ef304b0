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
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from pipelines.core.errors import InvalidArgument, SourceDataError, SourceError, SourceUnavailable
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
    except UnicodeDecodeError as err:
        raise SourceDataError(f"{where}: not a readable CSV file: not UTF-8 text (byte {err.start})") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise SourceDataError(f"{where}: not a readable CSV file: {err}") from None
    if count == 0:
        raise SourceDataError(f"{where}: the source has no rows")


def _parquet_frames(stream: BinaryIO, rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa  # heavy: pyarrow
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(stream)
    for batch in parquet.iter_batches(batch_size=rows):
        yield index_as_columns(pa.Table.from_batches([batch], schema=parquet.schema_arrow).to_pandas())


def index_as_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A frame whose named index levels (pandas' `to_parquet` of `df.set_index("customer_id")`
    stores the index with the data) are columns again, so no column is lost at ingest; an unnamed
    index (a RangeIndex, a row number) is not data and stays an index. Pure."""
    named = [n for n in df.index.names if n is not None and n not in df.columns]
    return df.reset_index(level=named) if named else df


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
                f"read as one column, and its header holds '{shown}': the file looks separated by '{shown}', "
                f"not '{delimiter}'; set source.delimiter: '{shown}' in the spec"
            )
    return None


def columns_text(n: int) -> str:
    """ "1 column", "7 columns". Pure."""
    return f"{n} column" + ("" if n == 1 else "s")


def no_column_text(n_columns: int, column: str, required: Sequence[str] = (), delimiter: str | None = ",") -> str:
    """Why data without the column a window is read by cannot be this pipeline's: its count of
    columns and what the contract needs, never its own column names (a file's first line may be
    anything, a copy of /etc/passwd included). `delimiter`: a file's (None: a query's rows). Pure."""
    what = "the file" if delimiter is not None else "the source"
    text = f"{what} has {columns_text(n_columns)} and none is {column}, the column the run's window is read by"
    text += f"; the contract needs {', '.join(required)}" if required else ""
    if delimiter is None:
        return text
    shown = "\\t" if delimiter == "\t" else delimiter
    return f"{text}: is it a CSV of this pipeline with a header, separated by '{shown}' (source.delimiter)?"


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


def _column(df: pd.DataFrame, column: str, required: Sequence[str] = ()) -> pd.Series:
    if column not in df.columns:
        raise SourceDataError(no_column_text(len(df.columns), column, required, delimiter=None))
    return df[column]


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
    frames = _frames(source, settings, window, timestamp if window is not None else "", required)
    return gather(frames, window, timestamp, required)


def gather(
    frames: Iterable[pd.DataFrame], window: Window | None, timestamp: str, required: Sequence[str] = ()
) -> pd.DataFrame:
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
            differ = columns_differ(columns, list(frame.columns), required)
            raise SourceDataError(f"the files of the source have different columns: {differ}")
        if window is not None:
            ts = instants(_column(frame, timestamp, required))
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


def columns_differ(first: list[str], other: list[str], required: Sequence[str] = ()) -> str:
    """How two files' headers differ, naming only the contract's columns (a header is the file's
    content). Pure."""
    lost = [c for c in required if c in first and c not in other]
    gained = [c for c in required if c not in first and c in other]
    text = f"{columns_text(len(first))} in the first, {columns_text(len(other))} in a later one"
    if lost:
        text += f"; the later one lacks {', '.join(lost)}"
    if gained:
        text += f"; the first one lacks {', '.join(gained)}"
    if not lost and not gained:
        text += "; the names or their order differ"
    return text


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


def _frames(
    source: Source, settings: Settings, window: Window | None, timestamp: str = "", required: Sequence[str] = ()
) -> Iterator[pd.DataFrame]:
    if isinstance(source, (FileSource, S3Source)):
        for f in _files(source, settings, window):
            with f.open() as stream:
                for n, frame in enumerate(file_frames(stream, f.fmt, f.where, source.delimiter)):
                    if n == 0 and timestamp and timestamp not in frame.columns:
                        problem = no_column_text(len(frame.columns), timestamp, required, source.delimiter)
                        raise SourceDataError(f"{f.where}: {problem}")
                    yield frame
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
        path = local_path(render_location(source.path, window) if window else source.path, settings)
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


def local_path(text: str, settings: Settings) -> Path:
    """A file source's path as the platform reads it: `~` expanded, a relative path taken from the
    project directory (`MLCYCLE_PROJECT_DIR`, default the repository root or the image's install
    root), never from the current directory."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else settings.project_dir / path


def fixed_part(template: str) -> str:
    """The part of a path before its first window field (`data/dt={as_of:%Y}.csv` -> `data/dt=`). Pure."""
    return template.split("{", 1)[0]


def template_glob(template: str) -> str:
    """A window template as the glob of the files it can name (`dt={as_of:%Y-%m-%d}.csv` ->
    `dt=*.csv`). Pure."""
    return re.sub(r"\{[^{}]*\}", "*", template)


def file_source_problem(source: FileSource, settings: Settings) -> str | None:
    """Why a file source's path names no data on this machine (None: it does), resolved as ingest
    resolves it (`local_path`): a file that does not exist, a directory with no .csv or .parquet
    file, a window template whose folder is missing or matches no file yet."""
    templated = template_glob(source.path) != source.path
    if templated:
        pattern = local_path(template_glob(source.path), settings)
        folder = local_path(fixed_part(source.path) or ".", settings)
        folder = folder if fixed_part(source.path).endswith("/") else folder.parent
        if not folder.is_dir():
            return f"source.path: {source.path}: the folder {folder} does not exist"
        if not any(folder.glob(str(pattern.relative_to(folder)))):
            return f"source.path: {source.path}: no file matches {pattern} yet"
        return None
    path = local_path(source.path, settings)
    where = source.path if str(path) == source.path else f"{source.path} ({path})"
    if path.is_dir():
        if not any(f.is_file() and _data_file(f.name) for f in path.iterdir()):
            return f"source.path: {where}: the folder holds no .csv or .parquet file"
        return None
    if not path.exists():
        return f"source.path: {where} does not exist (a relative path is read from {settings.project_dir})"
    return None


OVERRIDE_DIR = "data"
"""The state directory's folder from which a run's `source_uri` may read any file."""


def override_roots(source: Source, settings: Settings) -> list[Path]:
    """The folders a run's local `source_uri` may read from: `<state dir>/data` and, where the
    spec's own source is a file source, the folder it reads (a directory source: itself; a file or a
    window template: the folder that holds it)."""
    roots = [settings.state_path / OVERRIDE_DIR]
    if isinstance(source, FileSource):
        fixed = fixed_part(source.path)
        spec_path = local_path(fixed or ".", settings)
        templated = fixed != source.path
        roots.append(spec_path if spec_path.is_dir() and not templated else spec_path.parent)
    return roots


def check_override(uri: str, source: Source, settings: Settings) -> None:
    """Refuse a run's local `source_uri` outside `override_roots` (after symlinks are resolved), so
    a run trigger cannot make ingest read any file on the host. An `s3://` URI is not limited
    here: per-pipeline prefixes need the settings of the least-privilege issue (#34)."""
    if uri.startswith("s3://"):
        return
    path = local_path(uri, settings).resolve()
    roots = [r.resolve() for r in override_roots(source, settings)]
    if not any(path.is_relative_to(r) for r in roots):
        allowed = " or ".join(str(r) for r in roots)
        raise InvalidArgument(
            f"source_uri: {uri} is outside the folders a run may read from ({allowed}); copy the file there "
            "or change the spec's source"
        )


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
