from __future__ import annotations

import gzip
import io
import re
from datetime import timedelta

import pandas as pd
import pytest

from pipelines.core.errors import SourceDataError, SourceError
from pipelines.core.spec import SyntheticSource
from pipelines.core.window import data_window
from pipelines.io.sources import file_frames, gather, infer_format, normalize_frame, widened, within
from pipelines.io.storage import parquet_bytes
from pipelines.steps.ingest import build_manifest, content_hash, schema_fingerprint


def test_normalize_keeps_bad_values_as_text() -> None:
    df = pd.DataFrame({"n": [1, "n/a", 3, None], "s": ["a", "b", None, "d"]}, index=[5, 6, 7, 8])
    out = normalize_frame(df)
    assert list(out.index) == [0, 1, 2, 3]
    assert out["n"].tolist() == ["1", "n/a", "3", None]
    assert out["s"].tolist() == ["a", "b", None, "d"]
    parquet_bytes(out)  # storable


def test_content_hash_is_about_data(churn_df: pd.DataFrame) -> None:
    h = content_hash(churn_df)
    assert h == content_hash(churn_df.copy())
    changed = churn_df.copy()
    changed.loc[0, "monthly_charges"] += 0.01
    assert content_hash(changed) != h
    assert content_hash(churn_df.astype({"tenure_months": "float64"})) != h
    assert schema_fingerprint(churn_df) == schema_fingerprint(changed)


def test_parquet_bytes_are_deterministic(churn_df: pd.DataFrame) -> None:
    assert parquet_bytes(churn_df) == parquet_bytes(churn_df.copy())


def test_manifest(churn_df: pd.DataFrame) -> None:
    m = build_manifest(churn_df, SyntheticSource(kind="synthetic"), "/x/snapshot.parquet")
    assert m["rows"] == len(churn_df)
    assert m["source"]["kind"] == "synthetic"
    assert m["time_range"]["event_timestamp"][0].startswith("2025-01-31")


def test_infer_format() -> None:
    assert infer_format("a/b.PARQUET", None) == "parquet"
    assert infer_format("b.csv.gz", None) == "csv"
    assert infer_format("b.data", "csv") == "csv"
    with pytest.raises(SourceError, match="set source.format"):
        infer_format("b.data", None)


def parse_bytes(data: bytes, fmt: str, where: str, delimiter: str = ",", rows: int = 1000) -> pd.DataFrame:
    return gather(file_frames(io.BytesIO(data), fmt, where, delimiter, rows), None, "")


def test_parse_bytes_errors(churn_df: pd.DataFrame) -> None:
    with pytest.raises(SourceError, match="empty"):
        parse_bytes(b"", "csv", "x.csv")
    data = parquet_bytes(churn_df)
    with pytest.raises(SourceError, match="truncated or corrupt"):
        parse_bytes(data[: len(data) // 2], "parquet", "x.parquet")
    with pytest.raises(SourceError, match="no rows"):
        parse_bytes(b"a,b\n", "csv", "x.csv")
    with pytest.raises(SourceError, match="not a readable CSV"):
        parse_bytes(b'a,b\n1,"2\n', "csv", "x.csv")
    buf = io.BytesIO()
    churn_df.head(3).to_csv(buf, index=False)
    assert len(parse_bytes(buf.getvalue(), "csv", "x.csv")) == 3


def test_a_csv_of_another_separator_is_named_and_read_with_source_delimiter(churn_df: pd.DataFrame) -> None:
    """A semicolon CSV (a European spreadsheet's export) read with ',' is one column: the error says
    which separator it looks like and the spec key that reads it; with `delimiter` it reads."""
    text = churn_df.head(3).to_csv(index=False, sep=";").encode()
    with pytest.raises(SourceDataError, match=r"looks separated by ';', not ','; set source.delimiter: ';'"):
        parse_bytes(text, "csv", "x.csv")
    assert list(parse_bytes(text, "csv", "x.csv", ";").columns) == list(churn_df.columns)
    tabs = churn_df.head(3).to_csv(index=False, sep="\t").encode()
    with pytest.raises(SourceDataError, match=r"separated by '\\t'"):
        parse_bytes(tabs, "csv", "x.csv")
    with pytest.raises(SourceDataError, match="separated by ','"):  # the other way round
        parse_bytes(churn_df.head(3).to_csv(index=False).encode(), "csv", "x.csv", ";")


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(churn_df: pd.DataFrame) -> None:
    data = b"\xef\xbb\xbf" + churn_df.head(3).to_csv(index=False).encode()
    assert list(parse_bytes(data, "csv", "x.csv").columns) == list(churn_df.columns)


def test_a_file_read_in_chunks_is_the_whole_file_and_the_window_applies_to_every_chunk(churn_df: pd.DataFrame) -> None:
    """Chunks of 97 rows (CSV, gzipped CSV, Parquet record batches) give the frame a whole read
    gives; the window keeps the same rows; a window with none names the span of every chunk."""
    text = churn_df.to_csv(index=False).encode()
    whole = parse_bytes(text, "csv", "x.csv", rows=10**9)
    pd.testing.assert_frame_equal(parse_bytes(text, "csv", "x.csv", rows=97), whole)
    pd.testing.assert_frame_equal(parse_bytes(gzip.compress(text), "csv", "x.csv.gz", rows=97), whole)
    pd.testing.assert_frame_equal(parse_bytes(parquet_bytes(churn_df), "parquet", "x.parquet", rows=97), churn_df)

    stamps = churn_df["event_timestamp"]
    window = data_window(stamps.iloc[len(stamps) // 2].to_pydatetime(), 30)
    chunked = gather(file_frames(io.BytesIO(text), "csv", "x.csv", rows=97), window, "event_timestamp")
    assert len(chunked) > 0
    pd.testing.assert_frame_equal(chunked, within(whole, "event_timestamp", window))

    past = data_window(stamps.min().to_pydatetime() - timedelta(days=400), 30)
    with pytest.raises(SourceDataError, match=re.escape(f"spans {stamps.min()} .. {stamps.max()}")):
        gather(file_frames(io.BytesIO(text), "csv", "x.csv", rows=97), past, "event_timestamp")


def test_the_span_grows_by_each_chunk_and_a_chunk_without_time_leaves_it() -> None:
    a, b, c = (pd.Timestamp(f"2026-0{m}-01", tz="UTC") for m in (1, 2, 3))
    assert widened(None, pd.NaT, pd.NaT) is None
    assert widened(None, b, b) == (b, b)
    assert widened((b, b), a, c) == (a, c)
    assert widened((a, c), pd.NaT, pd.NaT) == (a, c)


def test_a_header_only_file_has_no_rows_in_chunks_too() -> None:
    with pytest.raises(SourceDataError, match="x.csv: the source has no rows"):
        parse_bytes(b"a,b\n", "csv", "x.csv", rows=1)
    with pytest.raises(SourceDataError, match="not a readable CSV file .truncated or corrupt"):
        parse_bytes(gzip.compress(b"a,b\n1,2\n")[:10], "csv", "x.csv.gz")
