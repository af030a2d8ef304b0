"""Files and S3 objects: the files a source names (a path or a directory, an object or a prefix),
opened as seekable streams, and read as CSV or Parquet in bounded chunks with clear errors for
empty, truncated or malformed input.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from pipelines.core.errors import SourceDataError, SourceError, SourceUnavailable
from pipelines.core.settings import Settings
from pipelines.core.spec import FileSource, S3Source
from pipelines.core.window import Window, render_location
from pipelines.io.sources.paths import is_data_file, local_path
from pipelines.io.storage import parse_s3_uri

if TYPE_CHECKING:
    import pandas as pd


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


@dataclass(frozen=True)
class DataFile:
    """One file of a file or S3 source: where it is (for errors), its format, how to open it."""

    where: str
    fmt: str
    open: Callable[[], AbstractContextManager[BinaryIO]]


def data_files(source: FileSource | S3Source, settings: Settings, window: Window | None) -> list[DataFile]:
    """The files a file source (a path or a directory) or an S3 source (an object or a prefix) names."""
    if isinstance(source, FileSource):
        path = local_path(render_location(source.path, window) if window else source.path, settings)
        paths = [path]
        if path.is_dir():
            paths = sorted(f for f in path.iterdir() if f.is_file() and is_data_file(f.name))
            if not paths:
                raise SourceError(f"source.path: {path} holds no .csv or .parquet file")
        return [DataFile(str(p), infer_format(p.name, source.format), functools.partial(_open_file, p)) for p in paths]
    uri = render_location(source.uri, window) if window else source.uri
    uris = [uri]
    if uri.endswith("/"):
        bucket, _ = parse_s3_uri(uri)
        uris = [f"s3://{bucket}/{k}" for k in _list_s3(uri, settings) if is_data_file(k)]
        if not uris:
            raise SourceError(f"source.uri: no .csv or .parquet object under {uri}")
    return [DataFile(u, infer_format(u, source.format), functools.partial(_open_s3, u, settings)) for u in uris]


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
