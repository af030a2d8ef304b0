"""Drift step time against the size of the request log window; and, with `--loop`, the closed loop
end to end: from the first drifted request to the new champion serving, split by stage.

    .venv/bin/python bench/drift.py [--sizes 10000 100000 1000000]
    .venv/bin/python bench/drift.py --loop     # `mlcycle demo` + `mlcycle drift-demo` in a fresh state dir

The loop needs 127.0.0.1:8000 (Serve), :8080 (Airflow) and Ray's port free, so nothing else of
mlcycle may run beside it. It prints each stage's seconds and share of the whole (the baseline
measured in the same run), and both champions' metric on the same labelled customers of today.

Trains a small churn champion in a throw-away state directory, then for each size fills the
request log with that many served predictions (the pipeline's 10 features each, covariate drift
in half of them, written with COPY as the ingress's batches would be), runs the `drift` step and
reports its wall time, the part spent reading the window from PostgreSQL, and the ratios against
the smallest size (the baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid

import numpy as np
from common import bench_state, train_champion

from pipelines.core.settings import PROJECT_DIR, Settings, spec_for
from pipelines.io import db
from pipelines.ml.datagen import ChurnConfig, generate_churn
from pipelines.steps.runner import run_step

PIPELINE = "bench_drift"


def fill(settings: Settings, n: int) -> None:
    """`n` logged predictions, half of them from a drifted history."""
    spec = spec_for(settings, PIPELINE)
    features = spec.model.numeric_features + spec.model.categorical_features
    calm = generate_churn(ChurnConfig(customers=4000, months=6, seed=1))
    drifted = generate_churn(ChurnConfig(customers=4000, months=6, seed=2, covariate_drift=1.0))
    pool = [
        json.dumps({f: (v.item() if hasattr(v, "item") else v) for f, v in zip(features, row, strict=True)})
        for frame in (calm, drifted)
        for row in frame[features].itertuples(index=False)
    ]
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(pool), n)
    scores = rng.random(n)
    with db.connect(settings) as conn:
        conn.execute("DELETE FROM inference_requests WHERE pipeline = %s", (PIPELINE,))
        with conn.cursor().copy(
            "COPY inference_requests (request_id, pipeline, model_version, entity_id, features, score, latency_ms,"
            " status) FROM STDIN"
        ) as cp:
            for i in range(n):
                cp.write_row((uuid.uuid4(), PIPELINE, 1, str(i), pool[picks[i]], float(scores[i]), 2.0, "ok"))
        conn.execute("ANALYZE inference_requests")


def loop() -> None:
    """`mlcycle demo` then `mlcycle drift-demo` in a throw-away state directory; the stage table."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    state = Path(tempfile.mkdtemp(prefix="mlcycle-bench-loop-"))
    env = {**os.environ, "MLCYCLE_STATE_DIR": str(state)}
    exe = str(Path(sys.executable).parent / "mlcycle")
    try:
        for command in (["demo"], ["drift-demo"]):
            # from the project's root: Ray's workers import `serving` from their working directory,
            # and bench/ has a serving.py of its own
            done = subprocess.run(
                [exe, *command], env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=3600
            )
            if done.returncode != 0:
                raise SystemExit(f"mlcycle {command[0]} failed ({done.returncode}):\n{done.stdout[-3000:]}")
        record = json.loads((state / "drift-demo.json").read_text())
    finally:
        subprocess.run([exe, "down"], env=env, cwd=PROJECT_DIR, capture_output=True, timeout=300)
        shutil.rmtree(state, ignore_errors=True)
    stages = record["stages_s"]
    total = stages.pop("first drifted request to the new champion (wall)")
    print(f"the closed loop, first drifted request -> new champion serving: {total:.1f} s (= 1.00)")
    for stage, seconds in stages.items():
        print(f"  {stage:<40} {seconds:7.1f} s  {seconds / total:5.2f}")
    for who in ("old_champion", "new_champion"):
        if who in record:
            got = record[who]
            figures = {k: v for k, v in got.items() if k not in ("version", "customers")}
            print(f"  {who.replace('_', ' ')} v{got['version']}: {figures} on {got['customers']} customers")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--loop", action="store_true", help="the closed loop end to end, by stage")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.loop:
        loop()
        return
    with bench_state() as settings:
        train_champion(
            settings,
            PIPELINE,
            source={"kind": "synthetic", "customers": 1500, "months": 6, "seed": 3},
            drift={"min_requests": 100, "cooldown_hours": 0},
        )
        from datetime import UTC, datetime, timedelta

        from pipelines.steps.drift import served_window

        spec = spec_for(settings, PIPELINE)
        features = spec.model.numeric_features + spec.model.categorical_features
        fill(settings, args.sizes[0])  # a first check pays the imports (Evidently, scipy): not timed
        run_step("drift", PIPELINE, "bench-warmup", settings)
        rows = []
        for n in args.sizes:
            t = time.perf_counter()
            fill(settings, n)
            filled = time.perf_counter() - t
            t = time.perf_counter()
            out = run_step("drift", PIPELINE, f"bench-{n}", settings)
            took = time.perf_counter() - t
            t = time.perf_counter()  # the window read alone, again
            now = datetime.now(UTC)
            served_window(settings, PIPELINE, 1, features, now - timedelta(hours=1), now)
            read = time.perf_counter() - t
            rows.append((n, took, read, filled, out["status"], len(out.get("drifted", []))))
        base = rows[0][1]
        print(f"drift step on the request log window ({len(features)} features):")
        print(f"{'requests':>10} {'step s':>8} {'read s':>8} {'ratio':>7}   (log filled in; verdict)")
        for n, took, read, filled, status, drifted in rows:
            print(
                f"{n:>10,} {took:8.1f} {read:8.1f} {took / base:6.1f}x   ({filled:.0f}s; {status}, {drifted} drifted)"
            )


if __name__ == "__main__":
    main()
