from __future__ import annotations

import gzip
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.core.errors import InvalidArgument, SourceDataError, SourceError, SpecError
from pipelines.core.settings import Settings
from pipelines.core.spec import FileSource, PipelineSpec, SyntheticSource, parse_spec
from pipelines.core.uris import allowed_prefixes
from pipelines.core.window import data_window
from pipelines.io.sources import (
    check_override,
    file_frames,
    gather,
    infer_format,
    normalize_frame,
    read_source,
    widened,
    within,
)
from pipelines.io.storage import parquet_bytes
from pipelines.steps.ingest import build_manifest, content_hash, schema_fingerprint
from tests.specs import churn_spec_dict


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


PASSWD = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nbin:x:2:2:bin:/bin:/usr/sbin/nologin\n"


def _settings(tmp_path: Path) -> Settings:
    return Settings(project_dir=tmp_path / "project", state_dir=tmp_path / "state")


def test_a_file_that_is_not_the_contracts_csv_is_refused_without_its_content(tmp_path: Path) -> None:
    """A copy of /etc/passwd named .csv: the error counts its columns and names what the contract
    needs, and quotes nothing of the file."""
    path = tmp_path / "passwd.csv"
    path.write_bytes(PASSWD)
    source = FileSource(kind="file", path=str(path))
    window = data_window(datetime(2026, 12, 1, tzinfo=UTC), None)
    with pytest.raises(SourceDataError) as err:
        read_source(source, _settings(tmp_path), window, "event_timestamp", ["customer_id", "event_timestamp"])
    text = str(err.value)
    assert text == (
        f"{path}: the file has 1 column and none is event_timestamp, the column the run's window is read by; "
        "the contract needs customer_id, event_timestamp: is it a CSV of this pipeline with a header, "
        "separated by ',' (source.delimiter)?"
    )
    assert "root" not in text.replace(str(tmp_path), "") and "bin" not in text
    with pytest.raises(
        SourceDataError,
        match="^the source has 3 columns and none is event_timestamp, the column the run's window is read by$",
    ):
        gather([pd.DataFrame({"a": [1], "b": [2], "c": [3]})], window, "event_timestamp")


def test_no_hint_or_column_error_quotes_the_header(churn_df: pd.DataFrame) -> None:
    secret = b"s3cr3t;token\n1;2\n"
    with pytest.raises(SourceDataError, match="looks separated by ';'") as err:
        parse_bytes(secret, "csv", "x.csv")
    assert "s3cr3t" not in str(err.value)
    first, other = pd.DataFrame({"customer_id": [1], "plan": ["a"]}), pd.DataFrame({"customer_id": [1], "pw": ["a"]})
    with pytest.raises(SourceDataError) as err:
        gather([first, other], None, "", ["customer_id", "plan"])
    assert str(err.value) == (
        "the files of the source have different columns: 2 columns in the first, 2 columns in a later one; "
        "the later one lacks plan"
    )
    with pytest.raises(SourceDataError, match="not UTF-8 text \\(byte 0\\)"):
        parse_bytes(b"\xff\xfe" + b"a,b\n" * 3, "csv", "x.csv")


def test_a_parquet_files_named_index_is_read_as_a_column(churn_df: pd.DataFrame, tmp_path: Path) -> None:
    """`df.set_index("customer_id").to_parquet(p)` keeps customer_id in the file as the index; ingest
    reads it as the column it was (validation would report it missing otherwise)."""
    buf = io.BytesIO()
    churn_df.set_index("customer_id").to_parquet(buf)
    got = normalize_frame(parse_bytes(buf.getvalue(), "parquet", "x.parquet", rows=97))
    assert sorted(got.columns) == sorted(churn_df.columns)
    pd.testing.assert_frame_equal(got[list(churn_df.columns)], churn_df)
    buf = io.BytesIO()
    churn_df.set_index(["customer_id", "event_timestamp"]).to_parquet(buf)  # a MultiIndex too
    assert sorted(parse_bytes(buf.getvalue(), "parquet", "x.parquet").columns) == sorted(churn_df.columns)
    buf = io.BytesIO()
    churn_df.iloc[5:].to_parquet(buf)  # an unnamed index is a row number, not data
    assert list(parse_bytes(buf.getvalue(), "parquet", "x.parquet").columns) == list(churn_df.columns)


def _spec(source: dict[str, Any]) -> PipelineSpec:
    return parse_spec(churn_spec_dict(source=source))


def test_a_runs_source_uri_reads_only_under_the_allowed_folders(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    spec_dir = settings.project_dir / "data" / "churn"
    (settings.state_path / "data").mkdir(parents=True)
    spec_dir.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    spec = _spec({"kind": "file", "path": "data/churn/dt={as_of:%Y-%m-%d}.csv"})  # relative: the project dir
    assert allowed_prefixes(spec.source, settings, "churn") == [str(settings.state_path / "data"), str(spec_dir)]
    check_override(str(settings.state_path / "data" / "x.csv"), spec, settings)
    check_override("data/churn/other.parquet", spec, settings)
    check_override(str(spec_dir / "sub" / "x.csv"), spec, settings)
    with pytest.raises(InvalidArgument, match="source_uri: /etc/passwd.csv is outside the folders and prefixes"):
        check_override("/etc/passwd.csv", spec, settings)
    with pytest.raises(InvalidArgument, match="outside"):
        check_override(str(settings.state_path / "data" / ".." / "pg" / "x.csv"), spec, settings)
    with pytest.raises(InvalidArgument, match="outside"):  # a sibling whose name starts alike
        check_override(str(settings.project_dir / "data" / "churn-old" / "x.csv"), spec, settings)
    link = settings.state_path / "data" / "link.csv"
    link.symlink_to(tmp_path / "elsewhere" / "x.csv")
    with pytest.raises(InvalidArgument, match="outside"):  # a link out of the folder is where it points
        check_override(str(link), spec, settings)
    synthetic = _spec({"kind": "synthetic"})
    assert allowed_prefixes(synthetic.source, settings, "churn") == [str(settings.state_path / "data")]
    with pytest.raises(InvalidArgument, match="outside"):
        check_override("data/churn/other.parquet", synthetic, settings)
    directory = _spec({"kind": "file", "path": str(spec_dir)})
    assert allowed_prefixes(directory.source, settings, "churn")[1] == str(spec_dir)


def test_a_runs_s3_source_uri_reads_only_under_its_pipelines_prefixes(tmp_path: Path) -> None:
    """Another pipeline's objects, the artifact root and a `..` key are refused; the spec's own
    prefix, its `allowed_uris` and the settings' prefixes (per pipeline) are taken."""
    settings = Settings(
        project_dir=tmp_path / "project",
        state_dir=tmp_path / "state",
        artifact_root="s3://ml/artifacts",
        source_uri_prefixes=["s3://landing/{pipeline}/"],
    )
    spec = _spec(
        {"kind": "s3", "uri": "s3://data/churn/dt={as_of:%Y-%m-%d}.parquet", "allowed_uris": ["s3://shared/ref"]}
    )
    assert allowed_prefixes(spec.source, settings, "churn") == [
        str(settings.state_path / "data"),
        "s3://data/churn/",
        "s3://shared/ref/",
        "s3://landing/churn/",
    ]
    for taken in ("s3://data/churn/2026.csv", "s3://shared/ref/x.parquet", "s3://landing/churn/a/b.csv"):
        check_override(taken, spec, settings)
    for refused, why in [
        ("s3://data/tumours/x.csv", "outside the folders and prefixes"),
        ("s3://shared/reference/x.csv", "outside"),  # a prefix is a folder
        ("s3://landing/tumours/x.csv", "outside"),
        ("s3://ml/artifacts/tumours/r1/features/train.parquet", "inside the artifact root"),
        ("s3://data/churn/../tumours/x.csv", "a `..` segment"),
    ]:
        with pytest.raises(InvalidArgument, match=f"source_uri: .*{re.escape(why)}"):
            check_override(refused, spec, settings)
    # a local artifact root too, even where a spec allows its parent
    local = _spec({"kind": "file", "path": str(settings.state_path / "in.csv")})
    with pytest.raises(InvalidArgument, match="inside the artifact root"):
        check_override(str(settings.state_path / "artifacts" / "x.csv"), local, Settings(state_dir=settings.state_dir))
    with pytest.raises(SpecError, match="allowed_uris"):
        _spec({"kind": "synthetic", "allowed_uris": ["s3://data/../x/"]})
