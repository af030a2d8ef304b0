"""Drift step time against the size of the request log window.

    .venv/bin/python bench/drift.py [--sizes 10000 100000 1000000]

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

from pipelines.core.settings import Settings
from pipelines.core.spec import spec_for
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
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
