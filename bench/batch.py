"""Batch predictions against a plain script: rows per second of the `batch` step with one
partition and with two, and the peak RSS of a partition, against a script that reads the same
Parquet with pandas, runs the same ONNX model with ONNX Runtime and writes Parquet.

    .venv/bin/python bench/batch.py [--rows 1000000] [--big 0] [--repeat 5] [--json FILE]

It trains a small churn champion in a throw-away state directory, writes `--rows` entities (the
generator's rows, each its own customer id, every feature carried: no feature-store lookup) to a
Parquet file, and measures, in the same run, `--repeat` times interleaved (the median kept): the
script (a process of its own), the `batch` step with `parallelism: 1` (`mlcycle step batch
--worker 0`, as the DAG's task runs it, writing Parquet only) and with `parallelism: 2` (both
partitions at once), each partition with the spec's default one CPU. Each figure is the wall time
of the processes, interpreter start included for both sides (and the pin, which stages the
entities, for the step); peak RSS is the process's (`wait4`, in a small Python of its own).
`--big N` also scores N rows with one partition for its peak RSS alone. Keys of `--json`: `rows`,
`script_rows_per_s`, `rows_per_s` by partitions (`{"1": ..., "2": ...}`), `peak_rss_mib` by rows,
`repeats`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import SMALL, bench_state, train_champion, write_spec

from pipelines.core.settings import Settings
from tests.measure import MEASURED, parse_measured

PIPELINE = "bench_batch"
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys, numpy as np, onnxruntime as ort, pandas as pd
src, model, dst = sys.argv[1:4]
df = pd.read_parquet(src)
session = ort.InferenceSession(model)
feed = {}
for i in session.get_inputs():
    col = df[i.name]
    if i.type == "tensor(string)":
        feed[i.name] = col.fillna("").astype(str).to_numpy(dtype=object).reshape(-1, 1)
    else:
        feed[i.name] = col.to_numpy(dtype=np.float32, na_value=np.nan).reshape(-1, 1)
(score,) = session.run(["score"], feed)
pd.DataFrame({"customer_id": df["customer_id"].astype(str), "score": score.reshape(-1)}).to_parquet(dst, index=False)
"""


def entities(path: Path, rows: int) -> str:
    """`rows` generated churn rows, each its own customer, written to `path`; returns the newest
    timestamp (the batch's as_of)."""
    import numpy as np

    from pipelines.ml.datagen import ChurnConfig, generate_churn

    base = generate_churn(ChurnConfig(customers=4000, months=6, seed=3)).drop(columns=["churned"])
    df = base.iloc[np.arange(rows) % len(base)].reset_index(drop=True)
    df["customer_id"] = np.arange(1, rows + 1)
    df.to_parquet(path, index=False)
    return str(df["event_timestamp"].max().isoformat())


def launch(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`cmd` as a grandchild of this process, through `tests.measure.MEASURED` (a small Python of
    its own: a child forked from this process, which holds the generated frame, would count this
    process's memory as its own peak)."""
    return subprocess.Popen(
        [sys.executable, "-c", MEASURED, *cmd], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )  # cwd: not bench/, whose serving.py would shadow the package


def finished(proc: subprocess.Popen[str], what: str) -> float:
    """The peak RSS (MiB) of a launched command, once it ended with 0."""
    out, _ = proc.communicate()
    code, _, peak = parse_measured(out)
    if code != 0:
        raise SystemExit(f"{what} failed (exit {code})")
    return peak


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process."""
    started = time.perf_counter()
    peak = finished(launch(cmd, env), cmd[0])
    return time.perf_counter() - started, peak


def partitions(settings: Settings, env: dict[str, str], run_id: str, n: int) -> tuple[float, float]:
    """Pin (in this process: no interpreter start), then `n` partitions at once: (wall seconds of
    the pin and the partitions, the partitions' largest peak RSS MiB)."""
    from pipelines.steps.runner import run_step

    started = time.perf_counter()
    run_step("batch_pin", PIPELINE, run_id, settings)
    step = [sys.executable, "-m", "pipelines.cli", "step", "batch", "--pipeline", PIPELINE, "--run-id", run_id]
    procs = [launch([*step, "--worker", str(k)], env) for k in range(n)]
    peaks = [finished(proc, f"partition {k} of {run_id}") for k, proc in enumerate(procs)]
    return time.perf_counter() - started, max(peaks)


def batch_spec(settings: Settings, path: Path, as_of: str, n: int) -> None:
    """The batch of `path` in `n` partitions, each with the spec's default resources (one CPU: ONNX
    Runtime on one thread), so two partitions are twice the tasks of one, as pods would be."""
    batch = {
        "entities": {"kind": "file", "path": str(path)},
        "as_of": as_of,
        "outputs": {"table": False, "parquet": True},
        "parallelism": n,
        "chunk_rows": 50_000,
    }
    write_spec(settings, PIPELINE, **SMALL, batch=batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=0, help="also score this many rows in one partition (peak RSS)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side, interleaved; the median is kept")
    args = parser.parse_args()
    out: dict[str, Any] = {"rows": args.rows, "rows_per_s": {}, "peak_rss_mib": {}}
    with bench_state() as settings:
        state = settings.state_path
        path = state / "entities.parquet"
        as_of = entities(path, args.rows)
        train_champion(settings, PIPELINE, batch={"entities": {"kind": "file", "path": str(path)}, "as_of": as_of})
        from pipelines.io.registry import load_onnx_model, model_name

        (state / "model.onnx").write_bytes(load_onnx_model(settings, PIPELINE, model_name(PIPELINE), 1))
        env = {
            **os.environ,
            "MLCYCLE_STATE_DIR": str(state),
            "MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir),
            "PYTHONPATH": str(ROOT),
        }
        script = [sys.executable, "-c", SCRIPT, str(path), str(state / "model.onnx"), str(state / "script.parquet")]
        walls: dict[str, list[float]] = {"script": [], "1": [], "2": []}
        for k in range(args.repeat):  # interleaved: a noisy minute weighs on every side alike
            script_s, script_rss = measured(script, env)
            walls["script"].append(script_s)
            for n in (1, 2):
                batch_spec(settings, path, as_of, n)
                wall, peak = partitions(settings, env, f"bench-{n}-{k}", n)
                walls[str(n)].append(wall)
                if n == 1:
                    out["peak_rss_mib"][str(args.rows)] = round(peak)
        out["script_rows_per_s"] = round(args.rows / statistics.median(walls["script"]))
        out["script_peak_rss_mib"] = round(script_rss)
        out["rows_per_s"] = {n: round(args.rows / statistics.median(walls[n])) for n in ("1", "2")}
        out["repeats"] = args.repeat
        if args.big:
            big = state / "big.parquet"
            batch_spec(settings, big, entities(big, args.big), 1)
            out["peak_rss_mib"][str(args.big)] = round(partitions(settings, env, "bench-big", 1)[1])
    one = out["rows_per_s"]["1"]
    print(f"rows: {args.rows:,}")
    print(f"script (pandas + ONNX Runtime + Parquet): {out['script_rows_per_s']:,} rows/s")
    print(f"batch step, 1 partition: {one:,} rows/s = {one / out['script_rows_per_s']:.2f}x the script")
    print(f"batch step, 2 partitions: {out['rows_per_s']['2']:,} rows/s = {out['rows_per_s']['2'] / one:.2f}x one")
    print("peak RSS of a partition (MiB) by rows:", out["peak_rss_mib"], f"(script: {out['script_peak_rss_mib']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
