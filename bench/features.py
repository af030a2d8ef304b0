"""Feast online lookup latency on the embedded online store (PostgreSQL + pgvector).

Builds the churn lifecycle's features in a throw-away state directory (ingest -> validate ->
features on the bundled generator), then times 1,000 online lookups of one entity x the feature
service's features (through Feast's SDK, and through serving's direct async read of Feast's
tables), and, as the baseline measured in the same run, the same rows read by primary
key with raw psycopg from a plain table. Prints p50/p99 and the ratio to the baseline.

    .venv/bin/python bench/features.py [--lookups 1000] [--customers 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections.abc import Callable

from common import bench_state, percentiles, write_spec

from pipelines.core.settings import spec_for
from pipelines.io import db
from pipelines.io.featurestore import feature_store
from pipelines.io.storage import open_storage, read_parquet
from pipelines.steps.runner import run_step
from serving.online import PostgresOnlineTables


def timed(fn: Callable[[int], object], ids: list[int], warmup: int = 50) -> list[float]:
    for i in ids[:warmup]:
        fn(i)
    out = []
    for i in ids:
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lookups", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with bench_state() as settings:
        write_spec(settings, "churn")
        started = time.perf_counter()
        for step in ("ingest", "validate", "features"):
            run_step(step, "churn", "bench", settings)
        print(f"setup (ingest, validate, features of the churn spec): {time.perf_counter() - started:.1f}s")
        spec = spec_for(settings, "churn")
        features = spec.features.feature_names
        snapshot = read_parquet(open_storage(settings), "churn/bench/validate/validated.parquet")
        latest = snapshot.sort_values("event_timestamp").groupby("customer_id").tail(1)
        rng = random.Random(0)
        ids = [int(rng.choice(latest["customer_id"].tolist())) for _ in range(args.lookups)]

        with db.connect(settings, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_features")
            cols = ", ".join(f"{f} {'text' if latest[f].dtype == object else 'double precision'}" for f in features)
            conn.execute(f"CREATE TABLE bench_features (customer_id bigint PRIMARY KEY, {cols})")  # type: ignore[arg-type]
            with conn.cursor().copy(f"COPY bench_features (customer_id, {', '.join(features)}) FROM STDIN") as cp:  # type: ignore[arg-type]
                for row in latest[["customer_id", *features]].itertuples(index=False):
                    cp.write_row(row)
            query = f"SELECT {', '.join(features)} FROM bench_features WHERE customer_id = %s"
            raw = timed(lambda i: conn.execute(query, (i,)).fetchone(), ids)  # type: ignore[arg-type]

        with feature_store(spec, settings) as store:
            service = store.get_feature_service(spec.features.feature_service)

            def lookup(i: int) -> object:
                return store.get_online_features(features=service, entity_rows=[{"customer_id": i}]).to_dict()

            feast = timed(lookup, ids)
            batch_ids = [ids[i : i + 100] for i in range(0, 1000, 100)]
            batch = []
            for chunk in batch_ids:
                t = time.perf_counter()
                store.get_online_features(features=service, entity_rows=[{"customer_id": i} for i in chunk]).to_dict()
                batch.append(time.perf_counter() - t)

            direct_reader = PostgresOnlineTables(spec, settings, features)

            async def direct_lookups() -> list[float]:
                async def one(i: int) -> object:
                    return await direct_reader.lookup([i])

                for i in ids[:50]:
                    await one(i)
                out = []
                for i in ids:
                    t = time.perf_counter()
                    await one(i)
                    out.append(time.perf_counter() - t)
                return out

            direct = asyncio.run(direct_lookups())
            direct_reader.close()

        (r50, r99), (f50, f99), (d50, d99) = percentiles(raw), percentiles(feast), percentiles(direct)
        print(f"online lookup, 1 entity x {len(features)} features, {len(ids)} lookups:")
        print(f"  raw psycopg by primary key (baseline): p50 {r50:.3f} ms  p99 {r99:.3f} ms")
        print(f"  Feast get_online_features:             p50 {f50:.3f} ms  p99 {f99:.3f} ms")
        print(f"  ratio Feast / baseline:                p50 {f50 / r50:.1f}x  p99 {f99 / r99:.1f}x")
        print(f"  serving's direct read (async, Feast's tables): p50 {d50:.3f} ms  p99 {d99:.3f} ms")
        print(f"  ratio direct / baseline:               p50 {d50 / r50:.1f}x  p99 {d99 / r99:.1f}x")
        b50, _ = percentiles(batch)
        print(f"  Feast, 100 entities in one call:       p50 {b50:.2f} ms ({b50 / 100 * 1000:.1f} us per entity)")


if __name__ == "__main__":
    main()
