"""Source readers: a spec's (or a labels load's) source read into a frame, with clear errors for
missing, empty, truncated or malformed input. Files, S3 objects, Postgres queries, synthetic data."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.core.errors import SourceError
from pipelines.core.settings import Settings
from pipelines.core.spec import FileSource, PostgresSource, S3Source, Source, SyntheticSource
from pipelines.io.db import database_url
from pipelines.io.storage import parse_s3_uri
from pipelines.ml.datagen import ChurnConfig, generate_churn

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


def parse_bytes(data: bytes, fmt: str, where: str) -> pd.DataFrame:
    """A frame from file bytes, with a clear error for empty, truncated or malformed input."""
    import pandas as pd  # heavy: pandas, pyarrow
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not data:
        raise SourceError(f"{where}: the file is empty (0 bytes)")
    try:
        if fmt == "parquet":
            df = pq.read_table(io.BytesIO(data)).to_pandas()
        else:
            df = pd.read_csv(io.BytesIO(data), compression="infer")
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceError(f"{where}: not a readable Parquet file (truncated or corrupt?): {err}") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SourceError(f"{where}: not a readable CSV file: {err}") from None
    if len(df) == 0:
        raise SourceError(f"{where}: the source has no rows")
    return df


def read_source(source: Source, settings: Settings) -> pd.DataFrame:
    """Read the spec's source into a frame."""
    if isinstance(source, FileSource):
        path = Path(source.path).expanduser()
        if not path.is_absolute():
            path = settings.project_dir / path
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SourceError(f"source.path: cannot read {path}: {err.strerror}") from None
        return parse_bytes(data, infer_format(path.name, source.format), str(path))
    if isinstance(source, S3Source):
        return parse_bytes(_read_s3(source.uri, settings), infer_format(source.uri, source.format), source.uri)
    if isinstance(source, PostgresSource):
        return _read_postgres(source, settings)
    if isinstance(source, SyntheticSource):
        return generate_churn(ChurnConfig(**source.model_dump(exclude={"kind"})))
    raise AssertionError(f"unhandled source {source!r}")


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
        raise SourceError(f"source.uri: cannot reach S3 for {uri}: {err}") from None
    return data


def _read_postgres(source: PostgresSource, settings: Settings) -> pd.DataFrame:
    """Run the query in a read-only transaction; the URL comes from `url_env` or the platform DB."""
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
            cur = conn.execute(source.query)
            if cur.description is None:
                raise SourceError("source.query: the statement returns no rows (not a SELECT?)")
            cols = [d.name for d in cur.description]
            rows = cur.fetchall()
    except psycopg.Error as err:
        raise SourceError(f"source.query: {str(err).strip()}") from None
    if not rows:
        raise SourceError("source.query: the query returned no rows")
    return pd.DataFrame.from_records(rows, columns=cols)
