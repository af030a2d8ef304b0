"""The rows of a source as frames: storable as Parquet, kept by the run's window `(start, end]` by
the entity timestamp (a row whose timestamp cannot be read is kept, so that validation sees it and
says so), gathered into one frame with errors that never quote a file's content; labelled served
predictions as rows of the spec's source.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import SourceDataError
from pipelines.core.spec import PipelineSpec
from pipelines.core.window import Window
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
