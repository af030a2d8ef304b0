"""Source readers: a spec's (or a labels load's) source read into a frame, with clear errors for
missing, empty, truncated or malformed input. Files (or a directory of them), S3 objects (or every
object under a prefix), Postgres queries (the window as bound parameters), synthetic data.

With a window (`pipelines.core.window`), a location template is rendered for it and the rows are
kept by the entity timestamp: `(start, end]`. A row whose timestamp cannot be read is kept, so
that validation sees it and says so.
"""

from __future__ import annotations

import io
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import SourceDataError, SourceError, SourceUnavailable
from pipelines.core.settings import Settings
from pipelines.core.spec import FileSource, PipelineSpec, PostgresSource, S3Source, Source, SyntheticSource
from pipelines.core.window import Window, query_params, render_location
from pipelines.io.db import database_url
from pipelines.io.storage import parse_s3_uri
from pipelines.ml.datagen import ChurnConfig, auto_start, generate_churn

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


def parse_bytes(data: bytes, fmt: str, where: str, delimiter: str = ",") -> pd.DataFrame:
    """A frame from file bytes, with a clear error for empty, truncated or malformed input. A CSV's
    UTF-8 byte order mark is not part of its first column's name."""
    import pandas as pd  # heavy: pandas, pyarrow
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not data:
        raise SourceDataError(f"{where}: the file is empty (0 bytes)")
    try:
        if fmt == "parquet":
            df = pq.read_table(io.BytesIO(data)).to_pandas()
        else:
            df = pd.read_csv(io.BytesIO(data), compression="infer", sep=delimiter, encoding="utf-8-sig")
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceDataError(f"{where}: not a readable Parquet file (truncated or corrupt?): {err}") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SourceDataError(f"{where}: not a readable CSV file: {err}") from None
    if fmt == "csv":
        hint = delimiter_hint(list(df.columns), delimiter)
        if hint:
            raise SourceDataError(f"{where}: {hint}")
    if len(df) == 0:
        raise SourceDataError(f"{where}: the source has no rows")
    return df


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
    """A column as UTC instants (NaT where a value is not a time), whatever mix of ISO forms. Pure."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    return pd.to_datetime(values, utc=True, errors="coerce", format="mixed")


def within(df: pd.DataFrame, column: str, window: Window) -> pd.DataFrame:
    """The rows of the window by `column`; rows whose time cannot be read stay (validation
    rejects them with a reason). Pure."""
    import pandas as pd

    if column not in df.columns:
        columns = list(df.columns)
        raise SourceDataError(f"the source has no {column} column to read a time window by (columns: {columns})")
    ts = instants(df[column])
    keep = ts.isna() | (ts <= pd.Timestamp(window.end))
    if window.start is not None:
        keep &= ts.isna() | (ts > pd.Timestamp(window.start))
    return df[keep.to_numpy()].reset_index(drop=True)


def read_source(source: Source, settings: Settings, window: Window | None = None, timestamp: str = "") -> pd.DataFrame:
    """Read the spec's source into a frame; with a window, only its rows (by the `timestamp`
    column), or a SourceError saying which window found none."""
    df = _read(source, settings, window)
    if window is None:
        return df
    kept = within(df, timestamp, window)
    if len(kept) == 0:
        span = instants(df[timestamp])
        raise SourceDataError(
            f"no rows in the window {window.to_dict()['start'] or '-inf'} .. {window.end.isoformat()} "
            f"(the source's {timestamp} spans {span.min()} .. {span.max()})"
        )
    return kept


def _read(source: Source, settings: Settings, window: Window | None) -> pd.DataFrame:
    if isinstance(source, FileSource):
        path = Path(render_location(source.path, window) if window else source.path).expanduser()
        if not path.is_absolute():
            path = settings.project_dir / path
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.is_file() and _data_file(f.name))
            if not files:
                raise SourceError(f"source.path: {path} holds no .csv or .parquet file")
            return _concat([_read_file(f, source) for f in files])
        return _read_file(path, source)
    if isinstance(source, S3Source):
        uri = render_location(source.uri, window) if window else source.uri
        if uri.endswith("/"):
            keys = [k for k in _list_s3(uri, settings) if _data_file(k)]
            if not keys:
                raise SourceError(f"source.uri: no .csv or .parquet object under {uri}")
            bucket, _ = parse_s3_uri(uri)
            return _concat(
                [
                    parse_bytes(
                        _read_s3(f"s3://{bucket}/{k}", settings), infer_format(k, source.format), k, source.delimiter
                    )
                    for k in keys
                ]
            )
        return parse_bytes(_read_s3(uri, settings), infer_format(uri, source.format), uri, source.delimiter)
    if isinstance(source, PostgresSource):
        return _read_postgres(source, settings, window)
    if isinstance(source, SyntheticSource):
        return generate_churn(synthetic_config(source, datetime.now(UTC).date()))
    raise AssertionError(f"unhandled source {source!r}")


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


def _read_file(path: Path, source: FileSource) -> pd.DataFrame:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SourceError(f"source.path: cannot read {path}: {err.strerror}") from None
    return parse_bytes(data, infer_format(path.name, source.format), str(path), source.delimiter)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    columns = {tuple(f.columns) for f in frames}
    if len(columns) > 1:
        raise SourceDataError(f"the files of the source have different columns: {sorted(columns)}")
    return pd.concat(frames, ignore_index=True)


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


def _read_s3(uri: str, settings: Settings) -> bytes:
    import boto3  # heavy: boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_s3_uri(uri)
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
    try:
        data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        raise SourceError(f"source.uri: cannot read {uri}: {code}") from None
    except BotoCoreError as err:
        raise SourceUnavailable(f"source.uri: cannot reach S3 for {uri}: {err}") from None
    return data


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
            label: r["label"],
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
