"""The bad-input catalogue, counted: every malformed file and spec a user can hand the platform,
run through the CLI exactly as a pod runs it (`mlcycle step ingest`, then `validate`, then
`features` and `train` only if those passed; `mlcycle spec validate` for specs).

Each bad input must end in the exit code docs/platform.md defines (2: a bad spec or argument, 3:
rejected data) with an error naming the problem, before anything trains. The inputs the platform
reads correctly (a UTF-8 byte order mark, a few bad rows under the tolerance) must pass. The table
goes to `.test-artifacts/bad-inputs.md` (or `$MLCYCLE_TEST_ARTIFACTS`), the count to docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipelines.cli import main
from pipelines.core.params import ENV
from pipelines.core.settings import PROJECT_DIR, Settings, scoped_environ
from pipelines.io.storage import open_storage, read_parquet
from pipelines.ml.datagen import ChurnConfig, generate_churn
from tests.integration.helpers import small_spec, workspace_env
from tests.measure import measured_run
from tests.specs import churn_spec_dict

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("MLCYCLE_TEST_ARTIFACTS", PROJECT_DIR / ".test-artifacts"))
STEPS = ("ingest", "validate", "features", "train")


@dataclass(frozen=True)
class DataCase:
    """A source file (or directory) made from good rows; `code` 0 means it must be read correctly."""

    name: str
    make: Callable[[pd.DataFrame, Path], Path]
    code: int
    says: str
    source: dict[str, Any] | None = None
    unbounded_label: bool = False  # the contract gives the label column no min or max
    never_says: str = ""  # content of the file that no error may quote


def _csv(df: pd.DataFrame, path: Path, **kw: Any) -> Path:
    df.to_csv(path, index=False, **kw)
    return path


def _rows_changed(df: pd.DataFrame, column: str, value: Any, every: int) -> pd.DataFrame:
    out = df.copy().astype({column: object})
    out.loc[out.index[::every], column] = value
    return out


def _flipped(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy().astype({"tenure_months": object})
    half = len(out) // 2
    out.loc[out.index[half:], "tenure_months"] = [f"{v} months" for v in out["tenure_months"].iloc[half:]]
    return out


def _mixed_zones(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    stamps = pd.to_datetime(out["event_timestamp"], utc=True)
    text = stamps.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    text.iloc[::3] = stamps.iloc[::3].dt.strftime("%Y-%m-%d %H:%M:%S")  # a third without a zone
    out["event_timestamp"] = text
    return out


def _two_files(df: pd.DataFrame, d: Path) -> Path:
    folder = d / "parts"
    folder.mkdir()
    half = len(df) // 2
    _csv(df.iloc[:half], folder / "a.csv")
    _csv(df.iloc[half:].rename(columns={"plan": "tariff"}), folder / "b.csv")
    return folder


def _truncated_parquet(df: pd.DataFrame, d: Path) -> Path:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    path = d / "snapshot.parquet"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


DATA: list[DataCase] = [
    DataCase("an empty file (0 bytes)", lambda df, d: _write(d / "s.csv", b""), 3, "the file is empty"),
    DataCase("a header and no rows", lambda df, d: _csv(df.head(0), d / "s.csv"), 3, "has no rows"),
    DataCase(
        "a semicolon-separated CSV",
        lambda df, d: _csv(df, d / "s.csv", sep=";"),
        3,
        "separated by ';', not ','; set source.delimiter",
    ),
    DataCase(
        "an unclosed quote",
        lambda df, d: _write(d / "s.csv", b'customer_id,plan\n1,"basic\n2,x\n'),
        3,
        "not a readable CSV",
    ),
    DataCase(
        "binary bytes named .csv", lambda df, d: _write(d / "s.csv", bytes(range(256)) * 40), 3, "not a readable CSV"
    ),
    DataCase("a truncated Parquet file", _truncated_parquet, 3, "truncated or corrupt"),
    DataCase(
        "a copy of /etc/passwd named .csv",
        lambda df, d: _write(d / "s.csv", b"root:x:0:0:root:/root:/bin/bash\nbin:x:2:2:bin:/bin:/usr/sbin/nologin\n"),
        3,
        "the file has 1 column and none is event_timestamp",
        never_says="root:x",
    ),
    DataCase("two files with different columns", _two_files, 3, "different columns"),
    DataCase("a required column missing", lambda df, d: _csv(df.drop(columns=["plan"]), d / "s.csv"), 3, "plan"),
    DataCase("a column whose type flips half-way", lambda df, d: _csv(_flipped(df), d / "s.csv"), 3, "tenure_months"),
    DataCase(
        "naive and zoned timestamps mixed",
        lambda df, d: _csv(_mixed_zones(df), d / "s.csv"),
        3,
        "without a time zone",
    ),
    DataCase("a third label class", lambda df, d: _csv(_rows_changed(df, "churned", 2, 7), d / "s.csv"), 3, "churned"),
    DataCase(
        "a third label class, the contract giving no bounds",
        lambda df, d: _csv(_rows_changed(df, "churned", 2, 7), d / "s.csv"),
        3,
        "churned: not 0 or 1",
        unbounded_label=True,
    ),
    DataCase(
        "duplicated keys",
        lambda df, d: _csv(pd.concat([df, df.iloc[::5]], ignore_index=True), d / "s.csv"),
        3,
        "duplicate",
    ),
    DataCase(
        "unicode values outside the allowed set",
        lambda df, d: _csv(_rows_changed(df, "region", "Zürich-北", 9), d / "s.csv"),
        3,
        "region",
    ),
    DataCase(
        "numbers that are not numbers",
        lambda df, d: _csv(_rows_changed(df, "monthly_charges", "twelve", 6), d / "s.csv"),
        3,
        "monthly_charges",
    ),
    # read correctly
    DataCase(
        "a UTF-8 byte order mark",
        lambda df, d: _write(d / "s.csv", b"\xef\xbb\xbf" + df.to_csv(index=False).encode()),
        0,
        "",
    ),
    DataCase(
        "a semicolon CSV with source.delimiter",
        lambda df, d: _csv(df, d / "s.csv", sep=";"),
        0,
        "",
        {"delimiter": ";"},
    ),
    DataCase(
        "a few bad rows under the tolerance",
        lambda df, d: _csv(_rows_changed(df, "region", "atlantis", 200), d / "s.csv"),
        0,
        "",
    ),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@dataclass(frozen=True)
class SpecCase:
    name: str
    text: Callable[[dict[str, Any]], str]
    says: str


def _dump(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], str]:
    def text(spec: dict[str, Any]) -> str:
        change(spec)
        return yaml.safe_dump(spec, sort_keys=False)

    return text


SPECS: list[SpecCase] = [
    SpecCase("not YAML", lambda spec: "name: bad\nsource: [unclosed\n", "not valid YAML"),
    SpecCase("a YAML list, not a mapping", lambda spec: "- a\n- b\n", "a YAML mapping"),
    SpecCase("an unknown key", _dump(lambda s: s.update(colour="blue")), "colour: Extra inputs are not permitted"),
    SpecCase("a wrongly typed value", _dump(lambda s: s["training"].update(n_trials="ten")), "training.n_trials"),
    SpecCase(
        "a model feature the feature service lacks",
        _dump(lambda s: s["model"]["numeric_features"].append("customer_id")),
        "model.numeric_features[6]: 'customer_id' is not a feature of any view",
    ),
    SpecCase(
        "a feature service naming a missing feature",
        _dump(lambda s: s["features"]["views"][0]["features"].append("spend")),
        "features.views[0].features[6]: 'spend'",
    ),
    SpecCase("a label the contract lacks", _dump(lambda s: s["label"].update(column="left")), "label.column: 'left'"),
    SpecCase("an unknown source kind", _dump(lambda s: s["source"].update(kind="ftp")), "source"),
    SpecCase(
        "a two-character delimiter",
        _dump(lambda s: s.update(source={"kind": "file", "path": "s.csv", "delimiter": ";;"})),
        "source.delimiter: String should have at most 1 character",
    ),
]

ROWS: list[tuple[str, str, int, int, str]] = []  # kind, input, expected, got, first error line


@pytest.fixture(scope="module")
def good_rows() -> pd.DataFrame:
    return generate_churn(ChurnConfig(customers=250, months=6, seed=21))


def _cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("case", DATA, ids=[c.name for c in DATA])
def test_bad_data_is_refused_before_anything_trains(
    case: DataCase, good_rows: pd.DataFrame, workspace: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = case.make(good_rows, tmp_path)
    source = {"kind": "file", "path": str(path), **(case.source or {})}
    contract = churn_spec_dict()["contract"]
    contract["min_rows"] = 100
    if case.unbounded_label:
        contract["columns"]["churned"] = {"dtype": "int"}
    small_spec(workspace, source, name="bad", contract=contract)
    reached, code, err = [], 0, ""
    with scoped_environ(workspace_env(workspace)):
        for step in STEPS[:2] if case.code == 0 else STEPS:
            code, err = _cli("step", step, "--pipeline", "bad", "--run-id", "bad-1", capsys=capsys)
            reached.append(step)
            if code != 0:
                break
    said = err.split("mlcycle: error: ", 1)[1] if "mlcycle: error: " in err else ""
    said = " ".join(said.replace(str(tmp_path) + "/", "").split()).split(" report: ")[0].split("; report: ")[0]
    said = re.sub(r"the data is rejected: - | the spec tolerates [0-9.]+% \(contract.max_bad_fraction\);", "", said)
    ROWS.append(("data", case.name, case.code, code, said[:170]))
    assert code == case.code, err[-3000:]
    if case.code:
        assert "train" not in reached and case.says in err, err[-3000:]
    if case.never_says:
        assert case.never_says not in err + capsys.readouterr().out, err[-3000:]


@pytest.mark.parametrize("case", SPECS, ids=[c.name for c in SPECS])
def test_bad_specs_are_refused_with_the_field(
    case: SpecCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(case.text(churn_spec_dict(name="bad")))
    code, err = _cli("spec", "validate", str(path), capsys=capsys)
    first = next((ln for ln in err.splitlines() if "bad.yaml" in ln), err.strip().splitlines()[0] if err else "")
    ROWS.append(("spec", case.name, 2, code, first.replace(str(tmp_path) + "/", "")[:160]))
    assert code == 2 and case.says in err, err


def _measured_step(settings: Settings, env: dict[str, str], *args: str) -> tuple[int, float, str]:
    """`mlcycle step <args>` as its own process: its exit code, its peak resident memory (MiB), its
    stderr."""
    exe = os.path.join(os.path.dirname(sys.executable), "mlcycle")
    done = measured_run([exe, "step", *args], {**workspace_env(settings), **env}, timeout=300)
    return done.code, done.peak_rss_mib, done.stderr


def test_a_file_larger_than_the_steps_memory_is_read_by_its_window(
    good_rows: pd.DataFrame, workspace: Settings, tmp_path: Path
) -> None:
    """A CSV of 320 MB, of which the run's window holds a small file's rows: `mlcycle step ingest`,
    as its own process, snapshots exactly the small file's rows, and needs less than a quarter of
    the file's size in memory beyond what the small file needs (a whole read needs several times
    the file: its bytes, then a frame of Python strings)."""
    stamps = good_rows["event_timestamp"]
    params = {ENV: json.dumps({"as_of": stamps.max().isoformat()})}
    small = _csv(good_rows, tmp_path / "small.csv")
    old = good_rows.assign(event_timestamp=stamps - pd.Timedelta(days=3 * 365))  # years before the window
    block = old.to_csv(index=False, header=False).encode()
    big = tmp_path / "big.csv"
    with big.open("wb") as out:
        out.write(small.read_bytes().split(b"\n", 1)[0] + b"\n")
        for _ in range((320 << 20) // len(block)):
            out.write(block)
        out.write(small.read_bytes().split(b"\n", 1)[1])
    size_mib = big.stat().st_size / (1 << 20)
    peaks, rows = {}, {}
    for name, path in (("small", small), ("big", big)):
        small_spec(workspace, {"kind": "file", "path": str(path), "lookback_days": 400}, name=name)
        code, peaks[name], err = _measured_step(
            workspace, params, "ingest", "--pipeline", name, "--run-id", f"{name}-1"
        )
        assert code == 0, err[-3000:]
        rows[name] = len(read_parquet(open_storage(workspace), f"{name}/{name}-1/ingest/snapshot.parquet"))
    extra = peaks["big"] - peaks["small"]
    ROWS.append(
        (
            "data",
            f"a {size_mib:.0f} MB CSV whose window holds {rows['big']} rows",
            0,
            0 if rows["big"] == rows["small"] and extra < size_mib / 4 else 1,
            f"read in chunks: peak memory {peaks['big']:.0f} MiB, {extra:.0f} MiB more than a "
            f"{small.stat().st_size >> 10} KB file's {peaks['small']:.0f} MiB",
        )
    )
    assert rows["big"] == rows["small"] == len(good_rows)
    assert extra < size_mib / 4, (peaks, size_mib)


def test_the_catalogue_is_counted() -> None:
    """Runs last in this module: the table of every input tried, and the count docs/reliability.md gives."""
    bad = [r for r in ROWS if r[2] != 0]
    refused = [r for r in bad if r[3] == r[2]]
    read = [r for r in ROWS if r[2] == 0 and r[3] == 0]
    assert len(ROWS) == len(DATA) + len(SPECS) + 1, "run the whole module"
    lines = [
        f"{len(bad)} bad inputs tried, {len(refused)} refused with a clear error and the CLI's exit code, "
        f"0 trained; {len(read)} awkward but valid inputs read correctly.",
        "",
        "| kind | input | expected exit | exit | error |",
        "|---|---|---|---|---|",
        *(f"| {k} | {name} | {want} | {got} | {msg.replace('|', '/')} |" for k, name, want, got, msg in ROWS),
    ]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "bad-inputs.md").write_text("\n".join(lines) + "\n")
    assert len(refused) == len(bad) and len(read) == len(ROWS) - len(bad)
