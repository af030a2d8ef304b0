"""Training benchmarks on the bundled dataset.

1. The same Optuna search (same sampler seed, same trials budget) with the median pruner and with
   none: wall time and best validation ROC AUC, and their ratios.
2. Scoring latency of the best model: ONNX Runtime against torch eager, at batch 1 and batch 64
   (median of many calls, inputs prepared beforehand), and the ratio. The ONNX graph starts from raw
   columns, so its time includes the string-to-code lookups that torch is handed precomputed.
3. Parallel trial workers (`training.parallelism`): the same budget by one worker (the train step
   alone) and by 2 workers (two `mlcycle step trials --worker K` processes, as two pods run them,
   then train exporting the best), each with one CPU's threads: wall time and the speed-up.

    .venv/bin/python bench/training.py [--trials 12] [--worker-trials 32] [--only workers]

It runs the lifecycle steps in a throw-away state directory and stops its database afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time

from common import bench_state, write_spec

from pipelines.steps.runner import run_step


def median_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def workers(settings, trials: int) -> None:  # type: ignore[no-untyped-def]
    """One worker against two at the same trial budget, one CPU's threads each."""
    env = {
        **os.environ,
        "MLCYCLE_STATE_DIR": str(settings.state_path),
        "MLCYCLE_PIPELINES_DIR": str(settings.pipelines_dir),
    }
    exe = os.path.join(os.path.dirname(sys.executable), "mlcycle")
    one_cpu = {"cpu": "1", "memory": "2Gi"}
    walls = {}
    for n in (1, 2):
        name = f"bench_workers_{n}"
        training = {"pruner": "none", "n_trials": trials, "timeout_s": None, "parallelism": n}
        write_spec(settings, name, training=training, resources={"steps": {"train": one_cpu, "trials": one_cpu}})
        for step in ("ingest", "validate", "features"):
            run_step(step, name, "bench", settings)
        started = time.perf_counter()
        if n > 1:
            procs = [
                subprocess.Popen(
                    [exe, "step", "trials", "--pipeline", name, "--run-id", "bench", "--worker", str(k)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for k in range(n)
            ]
            assert [p.wait() for p in procs] == [0] * n, "a trial worker failed"
        out = run_step("train", name, "bench", settings)
        walls[n] = (time.perf_counter() - started, out["best_value"], out["trials"])
    (t1, b1, c1), (t2, b2, c2) = walls[1], walls[2]
    print(f"trial workers, {trials} trials, one CPU's threads each ({os.cpu_count()} cores here):")
    print(f"  1 worker (baseline): {t1:6.1f}s  best val ROC AUC {b1:.4f}  {c1}")
    print(f"  2 workers:           {t2:6.1f}s  best val ROC AUC {b2:.4f}  {c2}")
    print(f"  speed-up 2 vs 1: {t1 / t2:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--only", choices=["workers"], help="run one part")
    parser.add_argument("--worker-trials", type=int, default=32, help="the budget of the workers' comparison")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.only == "workers":
        with bench_state() as settings:
            workers(settings, args.worker_trials)
        return
    with bench_state() as settings:
        # Import what the train step needs before timing, so neither search pays for it.
        import mlflow  # noqa: F401
        import onnx  # noqa: F401
        import optuna  # noqa: F401
        import torch

        results = {}
        for pruner in ("median", "none"):
            name = f"bench_{pruner}"
            write_spec(settings, name, training={"pruner": pruner, "n_trials": args.trials, "timeout_s": None})
            for step in ("ingest", "validate", "features"):
                run_step(step, name, "bench", settings)
            started = time.perf_counter()
            out = run_step("train", name, "bench", settings)
            results[pruner] = (time.perf_counter() - started, out["best_value"], out["trials"])
        (tp, bp, cp), (tn, bn, cn) = results["median"], results["none"]
        print(f"Optuna search, {args.trials} trials, churn spec (2 cores, CPU):")
        print(f"  no pruning (baseline): {tn:6.1f}s  best val ROC AUC {bn:.4f}  {cn}")
        print(f"  median pruner:         {tp:6.1f}s  best val ROC AUC {bp:.4f}  {cp}")
        print(f"  ratio pruned / unpruned: wall time {tp / tn:.2f}x, best metric {bp / bn:.4f}x")

        from pipelines.io.storage import open_storage, read_parquet
        from pipelines.ml.model import encode, load_module, onnx_session, session_feed

        storage = open_storage(settings)
        module, enc, _ = load_module(storage.read_bytes("bench_none/bench/train/model.pt"))
        session = onnx_session(storage.read_bytes("bench_none/bench/train/model.onnx"))
        test = read_parquet(storage, "bench_none/bench/features/test.parquet")
        torch.set_num_threads(1)
        print("scoring latency, median per call (inputs prepared beforehand):")
        for batch in (1, 64):
            rows = test.head(batch)
            num, codes = encode(rows, enc)
            x_num, x_cat = torch.from_numpy(num), torch.from_numpy(codes)
            feed = session_feed(session, rows)

            def eager(x_num: torch.Tensor = x_num, x_cat: torch.Tensor = x_cat) -> None:
                with torch.no_grad():
                    torch.sigmoid(module(x_num, x_cat))

            t_torch = median_ms(eager, 500)
            t_onnx = median_ms(lambda: session.run(["score"], feed), 500)  # noqa: B023
            print(
                f"  batch {batch:>2}: torch eager (baseline) {t_torch:.4f} ms, ONNX Runtime {t_onnx:.4f} ms, "
                f"ratio ONNX / torch {t_onnx / t_torch:.2f}x"
            )
        workers(settings, args.worker_trials)


if __name__ == "__main__":
    main()
