"""`validate`: the data contract (pandera) and distribution-level expectations (Great Expectations).

Row-level problems (a value of the wrong type, a null where none is allowed, a value out of range or
outside the allowed set, a duplicated key) send that row to `quarantine.parquet` with the reasons
for it. Dataset-level problems (a missing column, too few rows, a failed expectation of severity
`error`, a bad-row fraction above `contract.max_bad_fraction`) fail the step. The report
(`report.json`, `report.html`) is written either way, and `validated.parquet` (the clean rows, in the
contract's types) only when the step passes, so nothing downstream ever reads bad rows.
"""

from __future__ import annotations

import html
import logging
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.errors import DataQualityError, SpecError
from pipelines.core.spec import ColumnContract, Contract, Expectation
from pipelines.io.storage import read_parquet, write_json, write_parquet
from pipelines.ml.labels import label_problem
from pipelines.steps.context import StepContext

if TYPE_CHECKING:
    import pandas as pd

STEP = "validate"
REASONS = "_reasons"
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- pure core
def missing_columns(df: pd.DataFrame, contract: Contract) -> list[str]:
    return [c for c in contract.columns if c not in df.columns]


def coerce_column(s: pd.Series, col: ColumnContract) -> tuple[pd.Series, pd.Series]:
    """Cast a column to the contract's type. Returns the cast column and, per row, the reason the
    value could not be cast (empty string when it could). Values that were null stay null."""
    import numpy as np
    import pandas as pd

    was_null = s.isna()
    reasons = pd.Series("", index=s.index, dtype=object)

    def flag(bad: pd.Series, reason: str) -> None:
        reasons[bad] = [f"{s.name}: {reason} ({v!r})" for v in s[bad]]

    if col.dtype in ("int", "float"):
        out = pd.to_numeric(s, errors="coerce").astype("float64")
        flag(out.isna() & ~was_null, "not a number")
        infinite = np.isinf(out)  # no model trains on it, and the linear family's scaler refuses it
        flag(infinite, "not a finite number")
        out = out.where(~infinite)
        if col.dtype == "int":
            fractional = out.notna() & (np.floor(out) != out)
            flag(fractional, "not an integer")
            out = out.where(~fractional)
    elif col.dtype == "datetime":
        out = pd.to_datetime(s, utc=True, errors="coerce", format="mixed")
        flag(out.isna() & ~was_null, "not a timestamp")
        zoned = s.map(has_zone)
        if zoned.any() and (zoned == False).any():  # noqa: E712 (None: null or not a timestamp)
            # naive instants are read as UTC only where no row says otherwise
            naive = (zoned == False) & out.notna()  # noqa: E712
            flag(naive, "a timestamp without a time zone, where other rows have one")
            out = out.where(~naive)
    elif col.dtype == "bool":
        mapping = {"true": True, "false": False, "1": True, "0": False}
        out = s.map(lambda v: v if isinstance(v, bool) or v is None else mapping.get(str(v).lower()))
        flag(out.isna() & ~was_null, "not a boolean")
    else:
        out = s.map(lambda v: v if v is None or v != v else str(v)).astype(object)
    return out, reasons


ZONE = re.compile(r"(?:Z|UTC|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)


def has_zone(value: Any) -> bool | None:
    """Whether a timestamp names its time zone (None for a null or a value that is no timestamp
    text). Pure."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, datetime):
        return value.tzinfo is not None
    text = str(value).strip()
    if not text or not text[:4].isdigit():
        return None
    return bool(ZONE.search(text)) if ("T" in text or " " in text) else False


def contract_schema(contract: Contract, *, with_dtypes: bool) -> Any:
    """The pandera schema of the contract: value checks always, dtypes when `with_dtypes`."""
    import pandera.pandas as pa

    dtypes = {"int": "int64", "float": "float64", "string": object, "bool": bool, "datetime": "datetime64[ns, UTC]"}
    columns = {}
    for name, col in contract.columns.items():
        checks = []
        if col.min is not None:
            checks.append(pa.Check.ge(col.min))
        if col.max is not None:
            checks.append(pa.Check.le(col.max))
        if col.allowed is not None:
            checks.append(pa.Check.isin(col.allowed))
        dtype = dtypes[col.dtype] if with_dtypes and not (col.nullable and col.dtype == "int") else None
        columns[name] = pa.Column(dtype, checks, nullable=col.nullable)
    return pa.DataFrameSchema(columns, strict=False)


def _check_text(check: str, column: str, value: Any) -> str:
    labels = {
        "not_nullable": "is null",
        "greater_than_or_equal_to": "below the minimum",
        "less_than_or_equal_to": "above the maximum",
        "isin": "not an allowed value",
    }
    base = re.sub(r"\(.*$", "", str(check))
    text = labels.get(base, str(check))
    return f"{column}: {text}" + ("" if base == "not_nullable" else f" ({value!r})")


def row_reasons(
    df: pd.DataFrame, contract: Contract, label: str | None = None, kind: str = "binary"
) -> tuple[pd.DataFrame, pd.Series]:
    """Coerce every contract column and check every row (and the `label` by its kind, whatever
    bounds the contract gives it: a binary label is 0 or 1, a regression label a finite number; a
    multiclass label's classes are the contract's `allowed`).
    Returns the coerced frame (contract columns only, in contract order) and the reasons per row
    ('' for a good row). Pure."""
    import pandas as pd
    import pandera.errors as pe

    coerced = pd.DataFrame(index=df.index)
    reasons = pd.Series("", index=df.index, dtype=object)

    def add(mask_reasons: pd.Series) -> None:
        nonlocal reasons
        has = mask_reasons != ""
        joined = reasons.where(reasons == "", reasons + "; ") + mask_reasons
        reasons = reasons.where(~has, joined)

    for name, col in contract.columns.items():
        coerced[name], why = coerce_column(df[name], col)
        add(why)
    try:
        contract_schema(contract, with_dtypes=False).validate(coerced, lazy=True)
    except pe.SchemaErrors as err:
        fc = err.failure_cases.dropna(subset=["index"])
        per_row = pd.Series("", index=df.index, dtype=object)
        for idx, group in fc.groupby("index", sort=True):
            per_row[idx] = "; ".join(
                _check_text(c, col, v)
                for c, col, v in zip(group["check"], group["column"], group["failure_case"], strict=True)
            )
        # A value that could not be coerced is null now; its type reason already says why.
        per_row = per_row.where(reasons == "", "")
        add(per_row)
    if label is not None and label in coerced:
        classes = contract.columns[label].classes if kind == "multiclass" else []
        # a null label: the contract's nullability decides; the value as read goes in the reason
        problems = [None if pd.isna(v) else label_problem(v, kind, classes) for v in coerced[label]]
        why = [f"{label}: {p} ({v!r})" if p else "" for p, v in zip(problems, df[label], strict=True)]
        add(pd.Series(why, index=df.index).where(reasons == "", ""))
    if contract.unique:
        dup = duplicate_keys(coerced, contract.unique)
        add(pd.Series(["duplicate key " + ", ".join(contract.unique) if d else "" for d in dup], index=df.index))
    return coerced, reasons


def duplicate_keys(coerced: pd.DataFrame, key: list[str]) -> pd.Series:
    """Per row, whether an earlier row has the same key, compared on the coerced values (instants
    in UTC, numbers as numbers) of rows whose every key column parsed. A key value that is null
    (never given, or not parsed: that row already has its reason) matches nothing, so refused
    timestamps are never counted as duplicates of each other. Pure."""
    parsed = coerced[key].notna().all(axis=1)
    dup = coerced.loc[parsed].duplicated(subset=key, keep="first")
    return dup.reindex(coerced.index, fill_value=False).astype(bool)


def finalize_types(clean: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """Cast clean rows to the contract's final types (ints back from float64)."""
    out = clean.reset_index(drop=True)
    for name, col in contract.columns.items():
        if col.dtype == "int":
            out[name] = out[name].astype("Int64" if col.nullable else "int64")
        elif col.dtype == "bool" and not col.nullable:
            out[name] = out[name].astype(bool)
    return out


def expectation_class_name(name: str) -> str:
    """`expect_column_mean_to_be_between` -> `ExpectColumnMeanToBeBetween`. Pure."""
    return "".join(part.capitalize() for part in name.split("_"))


def run_expectations(df: pd.DataFrame, expectations: list[Expectation]) -> list[dict[str, Any]]:
    """Run the spec's expectations with Great Expectations on a frame; one result dict each."""
    if not expectations:
        return []
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    _quiet_progress_bars(context)
    batch = (
        context.data_sources.add_pandas("mlcycle")
        .add_dataframe_asset("snapshot")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="contract"))
    for i, e in enumerate(expectations):
        cls = getattr(gx.expectations, expectation_class_name(e.expectation), None)
        if cls is None:
            raise SpecError(f"expectations[{i}].expectation: unknown expectation '{e.expectation}'")
        try:
            suite.add_expectation(cls(**e.kwargs))
        except Exception as err:  # GE raises pydantic errors of its own models
            raise SpecError(f"expectations[{i}].kwargs: {e.expectation}: {err}") from None
    # Validate the batch directly: a ValidationDefinition would also store the result, and GE's
    # store fails to serialize numpy booleans some expectations return (quantile ranges).
    result = batch.get_batch(batch_parameters={"dataframe": df}).validate(suite).to_json_dict()
    out = []
    for e, r in zip(expectations, result["results"], strict=True):
        kwargs = {k: v for k, v in r["expectation_config"]["kwargs"].items() if k != "batch_id"}
        observed = r.get("result", {})
        out.append(
            {
                "expectation": e.expectation,
                "kwargs": kwargs,
                "severity": e.severity,
                "success": bool(r["success"]),
                "observed": {k: observed[k] for k in ("observed_value", "unexpected_percent") if k in observed},
                "error": (r.get("exception_info") or {}).get("exception_message") or None,
            }
        )
    return out


def _quiet_progress_bars(context: Any) -> None:
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # cosmetic only
        log.debug("could not turn off Great Expectations progress bars")


def reason_counts(reasons: pd.Series) -> dict[str, int]:
    """How many rows fail for each kind of reason (column: problem). Pure."""
    counts: dict[str, int] = {}
    for text in reasons[reasons != ""]:
        for part in text.split("; "):
            kind = re.sub(r" \(.*\)$", "", part)
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def verdict(
    total: int,
    bad: int,
    contract: Contract,
    expectations: list[dict[str, Any]],
    reasons: dict[str, int] | None = None,
) -> list[str]:
    """Why the data is rejected (empty list: it passes), with the commonest reasons rows broke
    the contract (`reason_counts`). Pure."""
    problems = []
    fraction = bad / total if total else 1.0
    if fraction > contract.max_bad_fraction:
        common = "; ".join(f"{kind} ({n} rows)" for kind, n in list((reasons or {}).items())[:3])
        problems.append(
            f"{bad} of {total} rows ({fraction:.2%}) break the contract; the spec tolerates "
            f"{contract.max_bad_fraction:.2%} (contract.max_bad_fraction)"
            + (f"; most often: {common}" if common else "")
        )
    if total - bad < contract.min_rows:
        problems.append(f"{total - bad} valid rows, fewer than contract.min_rows={contract.min_rows}")
    for e in expectations:
        if not e["success"] and e["severity"] == "error":
            problems.append(f"expectation failed: {e['expectation']} {e['kwargs']} observed {e['observed']}")
    return problems


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page of the report. Pure."""
    esc = html.escape
    status = "PASSED" if report["passed"] else "FAILED"
    color = "#1a7f37" if report["passed"] else "#cf222e"
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in report["reasons"].items())
    exps = "".join(
        f"<tr><td>{'✔' if e['success'] else '✘'}</td><td>{esc(e['expectation'])}</td>"
        f"<td>{esc(str(e['kwargs']))}</td><td>{esc(str(e['observed']))}</td><td>{esc(e['severity'])}</td></tr>"
        for e in report["expectations"]
    )
    problems = "".join(f"<li>{esc(p)}</li>" for p in report["problems"]) or "<li>none</li>"
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{esc(report["pipeline"])} {esc(report["run_id"])} validation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>{esc(report["pipeline"])} / {esc(report["run_id"])}: <span style="color:{color}">{status}</span></h1>
<p>{report["rows"]} rows, {report["bad_rows"]} quarantined ({report["bad_fraction"]:.2%}),
tolerance {report["max_bad_fraction"]:.2%}. Snapshot {esc(report["content_hash"])}.</p>
<h2>Problems</h2><ul>{problems}</ul>
<h2>Quarantine reasons (rows)</h2><table><tr><th>reason</th><th>rows</th></tr>{rows}</table>
<h2>Expectations</h2><table><tr><th></th><th>expectation</th><th>arguments</th><th>observed</th>
<th>severity</th></tr>{exps}</table></body></html>"""


# ----------------------------------------------------------------------------------------- step
def run(ctx: StepContext) -> dict[str, Any]:
    ingest = ctx.manifest("ingest")
    df = read_parquet(ctx.storage, ctx.require("ingest", "snapshot.parquet"))
    contract = ctx.spec.contract
    base = {
        "step": STEP,
        "pipeline": ctx.pipeline,
        "run_id": ctx.run_id,
        "content_hash": ingest["content_hash"],
        "rows": len(df),
        "max_bad_fraction": contract.max_bad_fraction,
        "extra_columns": [c for c in df.columns if c not in contract.columns],
    }
    missing = missing_columns(df, contract)
    if missing:
        report = {
            **base,
            "passed": False,
            "bad_rows": len(df),
            "bad_fraction": 1.0,
            "reasons": {},
            "expectations": [],
            "problems": [f"columns missing from the data: {missing}"],
        }
        _write_report(ctx, report)
        raise DataQualityError(
            f"{ctx.pipeline}/{ctx.run_id}: {report['problems'][0]}; report: {ctx.storage.uri(ctx.key('report.html'))}"
        )

    coerced, reasons = row_reasons(df, contract, ctx.spec.label.column, ctx.spec.label.kind)
    bad_mask = reasons != ""
    quarantine = df[bad_mask].copy()
    quarantine[REASONS] = reasons[bad_mask]
    write_parquet(ctx.storage, ctx.key("quarantine.parquet"), quarantine.reset_index(names="_row"))
    clean = finalize_types(coerced[~bad_mask], contract)
    contract_schema(contract, with_dtypes=True).validate(clean)  # the clean rows obey the contract

    expectations = run_expectations(clean, ctx.spec.expectations)
    counts = reason_counts(reasons)
    problems = verdict(len(df), int(bad_mask.sum()), contract, expectations, counts)
    report = {
        **base,
        "passed": not problems,
        "bad_rows": int(bad_mask.sum()),
        "bad_fraction": float(bad_mask.mean()),
        "reasons": counts,
        "expectations": expectations,
        "problems": problems,
        "quarantine": ctx.storage.uri(ctx.key("quarantine.parquet")),
    }
    validated_key = ctx.key("validated.parquet")
    if problems:
        _write_report(ctx, report)
        raise DataQualityError(
            f"{ctx.pipeline}/{ctx.run_id}: the data is rejected:\n  - "
            + "\n  - ".join(problems)
            + f"\nreport: {ctx.storage.uri(ctx.key('report.html'))}"
        )
    report["validated"] = write_parquet(ctx.storage, validated_key, clean)
    report["validated_rows"] = len(clean)
    _write_report(ctx, report)
    return report


def _write_report(ctx: StepContext, report: dict[str, Any]) -> None:
    report["report_html"] = ctx.storage.write_bytes(ctx.key("report.html"), render_html(report).encode())
    write_json(ctx.storage, ctx.key("report.json"), report)
    write_json(ctx.storage, ctx.key("manifest.json"), report)
