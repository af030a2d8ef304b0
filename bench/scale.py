"""Data at scale: the lifecycle's data and training steps at growing windows, each step's wall time
and peak resident memory, and how each grows per 10x rows.

    .venv/bin/python bench/scale.py [--rows 100000,1000000] [--json FILE] [--code before|after] [--until STEP]

For each size N the generated churn world (`pipelines.ml.datagen`, six months, whole customer
histories in id order, cut at exactly N rows) is written as a Parquet file and read by a `file`
source whose window holds all of it; then ingest, validate, features, train (a fixed small budget:
`TRAINING`), evaluate, promote and embed run one after the other as `mlcycle step ...`, each its
own process, as a pod runs it, on the bench's embedded PostgreSQL (and pgvector) and local
artifact store. Each step's wall time and peak RSS are measured from a parent process: a small
Python forks the step and reads the kernel's `ru_maxrss` from `wait4` (`tests.measure`), the peak
of the largest single process of the step's tree. Rows `{"rows", "step", "seconds",
"peak_rss_mib", "engine", "code"}` go to `--json` (rows of other sizes, engines or code labels
already in the file stay); `--code` only labels them (`before`: today's code). A printed table
gives each step's figures per size and the growth factor per 10x rows between consecutive sizes,
`(b / a) ** (1 / log10(Nb / Na))`. It runs in a throw-away state directory and stops its
database afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

STEPS = ("ingest", "validate", "features", "train", "evaluate", "promote", "embed")
MONTHS = 6
SEED = 11
# A fixed small budget, the same at every size: two trials of three epochs, no pruning.
TRAINING = {
    "n_trials": 2,
    "max_epochs": 3,
    "early_stopping_patience": 3,
    "batch_size": 1024,
    "pruner": "none",
    "timeout_s": None,
    "seed": 42,
}
KEYS = ("rows", "step", "seconds", "peak_rss_mib", "engine", "code")


def result_row(
    rows: int, step: str, seconds: float, peak_rss_mib: float, code: str, engine: str = "local"
) -> dict[str, Any]:
    """One measurement as the JSON holds it. Pure."""
    return {
        "rows": rows,
        "step": step,
        "seconds": round(seconds, 3),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "engine": engine,
        "code": code,
    }


def merge_rows(previous: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`previous` without the rows `new` measures again (same rows, step, engine, code), then `new`. Pure."""

    def ident(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["rows"], r["step"], r["engine"], r["code"])

    again = {ident(r) for r in new}
    return [r for r in previous if ident(r) not in again] + list(new)


def per_10x(a: float, b: float, rows_a: int, rows_b: int) -> float | None:
    """How much a figure grows per 10x rows between two sizes: `(b / a) ** (1 / log10(rows_b /
    rows_a))`; None where a is not positive or the sizes are equal. Pure."""
    if a <= 0 or rows_b == rows_a:
        return None
    return float((b / a) ** (1 / math.log10(rows_b / rows_a)))


def growth_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each (engine, code, step), in step order: its sizes ascending with seconds and peak RSS, and
    the growth per 10x rows of each from one size to the next (`seconds_x`, `rss_x`, None at the
    smallest). Pure."""
    order = {s: i for i, s in enumerate(STEPS)}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["engine"], r["code"], r["step"]), []).append(r)
    out = []
    for (engine, code, step), found in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99))
    ):
        found = sorted(found, key=lambda r: r["rows"])
        for i, r in enumerate(found):
            prev = found[i - 1] if i else None
            out.append(
                {
                    "engine": engine,
                    "code": code,
                    "step": step,
                    "rows": r["rows"],
                    "seconds": r["seconds"],
                    "peak_rss_mib": r["peak_rss_mib"],
                    "seconds_x": prev and per_10x(prev["seconds"], r["seconds"], prev["rows"], r["rows"]),
                    "rss_x": prev and per_10x(prev["peak_rss_mib"], r["peak_rss_mib"], prev["rows"], r["rows"]),
                }
            )
    return out


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The growth table as a Markdown table. Pure."""

    def x(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    lines = [
        "| step | rows | seconds | growth per 10x | peak RSS MiB | growth per 10x | engine | code |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for t in growth_table(rows):
        lines.append(
            f"| {t['step']} | {t['rows']:,} | {t['seconds']:.1f} | {x(t['seconds_x'])} | {t['peak_rss_mib']:.0f} | "
            f"{x(t['rss_x'])} | {t['engine']} | {t['code']} |"
        )
    return lines


def phase_seconds(stdout: str) -> dict[str, float]:
    """The seconds a step's result reports for its phases (its top-level numeric keys that name
    seconds, as embed's `fill_seconds` and `index_build_seconds`, train's `budget_spent_s`), from
    the result line `mlcycle step` prints. Pure."""
    from pipelines.steps.runner import RESULT_PREFIX

    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        return {}
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    return {
        k: float(v)
        for k, v in result.items()
        if k != "seconds"
        and (k.endswith("seconds") or (k.endswith("_s") and not k.endswith("_per_s")))
        and isinstance(v, (int, float))
    }


def first_rows(df: pd.DataFrame, n: int, key: str, timestamp: str) -> pd.DataFrame:
    """Exactly `n` rows of `df` (fewer if it has fewer): whole histories of the entities in `key`
    order, the last one cut at its oldest rows, ordered by (timestamp, key) as the generator orders
    its frame. Pure."""
    kept = df.sort_values([key, timestamp], kind="stable").head(n)
    return kept.sort_values([timestamp, key], kind="stable").reset_index(drop=True)


def world(n: int) -> pd.DataFrame:
    """The generated churn world, six months to the last full one, cut at exactly `n` rows."""
    from datetime import UTC, datetime

    from pipelines.ml.datagen import ChurnConfig, auto_start, generate_churn

    start = auto_start(MONTHS, datetime.now(UTC).date())
    probe = generate_churn(ChurnConfig(customers=5000, months=MONTHS, seed=SEED, start=start))
    customers = math.ceil(n / (len(probe) / 5000) * 1.02) + 100
    while True:
        df = generate_churn(ChurnConfig(customers=customers, months=MONTHS, seed=SEED, start=start))
        if len(df) >= n:
            return first_rows(df, n, "customer_id", "event_timestamp")
        customers = math.ceil(customers * 1.2)


def measure_size(  # type: ignore[no-untyped-def]
    settings, n: int, code: str, data_dir: Path, timeout: float, steps: tuple[str, ...] = STEPS
) -> list[dict[str, Any]]:
    """The steps of one size (each needs the ones before it), each as its own measured process;
    stops at a step that fails."""
    from common import step_env, write_spec

    from pipelines.io.sources import normalize_frame
    from tests.measure import measured_run

    path = data_dir / f"churn-{n}.parquet"
    df = world(n)
    normalize_frame(df).to_parquet(path, index=False)
    customers = df["customer_id"].nunique()
    del df
    name = f"scale_{n}"
    source = {"kind": "file", "path": str(path), "lookback_days": 400}
    write_spec(settings, name, source=source, training=TRAINING)
    exe = os.path.join(os.path.dirname(sys.executable), "mlcycle")
    print(f"{n:,} rows ({customers:,} customers), {path.stat().st_size / 2**20:.1f} MiB of Parquet", flush=True)
    out = []
    for step in steps:
        done = measured_run([exe, "step", step, "--pipeline", name, "--run-id", "scale"], step_env(settings), timeout)
        phases = ", ".join(f"{k} {v:.1f}" for k, v in phase_seconds(done.stdout).items())
        print(
            f"  {step:<9} {done.seconds:8.1f} s  {done.peak_rss_mib:8.0f} MiB  exit {done.code}  {phases}", flush=True
        )
        if done.code != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            break
        out.append(result_row(n, step, done.seconds, done.peak_rss_mib, code))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,1000000", help="window sizes, comma-separated (10000000: 10M)")
    parser.add_argument("--json", help="write (merge) the rows into this file")
    parser.add_argument("--code", choices=["before", "after"], default="before", help="a label of the rows")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one step may take")
    parser.add_argument(
        "--until", choices=STEPS, default=STEPS[-1], help="the last step to run (features: ingest, validate, features)"
    )
    args = parser.parse_args()
    sizes = sorted(int(s.replace("_", "")) for s in args.rows.split(","))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
    from common import bench_state

    measured: list[dict[str, Any]] = []
    with bench_state() as settings:
        data_dir = settings.state_path / "data"
        data_dir.mkdir()
        for n in sizes:
            steps = STEPS[: STEPS.index(args.until) + 1]
            size = measure_size(settings, n, args.code, data_dir, args.timeout, steps)
            measured += size
            if args.json:  # after each size: a long run stopped later keeps what it measured
                write_rows(Path(args.json), size)
    print("\n".join(table_lines(measured)))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    previous = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(merge_rows(previous, rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
