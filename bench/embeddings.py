"""Vector spaces in PostgreSQL + pgvector, as the `embed` step and the similarity endpoint use them.

1. Backfill: 100,000 entities (the bundled churn generator, one row each) through the model's ONNX
   `embedding` output into the version's space, in batches of `embeddings.batch_rows` (binary COPY
   through a temporary table): vectors/s, and the share of the time spent embedding.
2. Index build time (HNSW, m=16, ef_construction=64) and recall@10 against exact search on 200
   entities (as the step's gate measures it).
3. Similarity query latency at k=10 over 500 entities, one query at a time on one connection (the
   query the endpoint runs): with the index, and exact (index scans off) on the same entities;
   p50/p99 and the ratio.

    .venv/bin/python bench/embeddings.py [--entities 100000] [--dim 64] [--json FILE]

The model is the churn MLP untrained (its weights drawn with a seed): the rates and latencies do
not depend on what it learned; recall does a little (a trained model's vectors cluster more).
It runs on a throw-away embedded database and removes it afterwards.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import bench_state, percentiles

from pipelines.io import db, vectors
from pipelines.ml.datagen import ChurnConfig, generate_churn
from pipelines.ml.model import build_module, embed_onnx, fit_encoding, onnx_session, to_onnx
from pipelines.steps.embed import batch_bounds, latest_per_entity
from tests.specs import churn_spec_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    spec = churn_spec_dict()
    numeric, categorical = spec["model"]["numeric_features"], spec["model"]["categorical_features"]
    world = generate_churn(ChurnConfig(customers=args.entities, months=1, seed=1))
    entities = latest_per_entity(world, "customer_id", "event_timestamp")
    enc = fit_encoding(entities, numeric, categorical)
    session = onnx_session(to_onnx(build_module(enc, hidden_units=args.dim), enc, embedding=True).SerializeToString())
    batch_rows = spec.get("embeddings", {}).get("batch_rows", 10_000)
    figures: dict[str, object] = {"entities": len(entities), "dimension": args.dim}

    with bench_state() as settings:
        space = vectors.open_space(settings, "bench", 1, args.dim, "cosine", "hnsw", "bench", "bench-model")
        embed_s = 0.0
        started = time.perf_counter()
        for lo, hi in batch_bounds(len(entities), batch_rows):
            batch = entities.iloc[lo:hi]
            t = time.perf_counter()
            matrix = embed_onnx(session, batch)
            embed_s += time.perf_counter() - t
            vectors.copy_vectors(settings, space, batch["customer_id"].tolist(), matrix)
        fill_s = time.perf_counter() - started
        build_s = vectors.build_index(settings, space)
        space = vectors.Space("bench", 1, args.dim, "cosine", "hnsw", rows=len(entities))
        recall = vectors.measure_recall(settings, space, 200)
        figures.update(
            backfill_s=round(fill_s, 2),
            vectors_per_s=round(len(entities) / fill_s),
            embed_share=round(embed_s / fill_s, 3),
            index_build_s=round(build_s, 2),
            recall_at_10=round(recall, 4),
        )

        ids = entities["customer_id"].sample(args.queries, random_state=0).tolist()
        latencies: dict[str, tuple[float, float]] = {}
        with db.connect(settings) as conn:
            query = vectors.neighbours_sql(space)
            plan = "\n".join(
                r[0] for r in conn.execute("EXPLAIN " + query.as_string(conn), _params(conn, space, ids[0]))
            )
            figures["index_used"] = "bench_v1_hnsw" in plan
            for mode in ("index", "exact"):
                if mode == "exact":
                    conn.execute("SET LOCAL enable_indexscan = off")
                samples = []
                for entity in ids:
                    params = _params(conn, space, entity)
                    t = time.perf_counter()
                    conn.execute(query, params).fetchall()
                    samples.append(time.perf_counter() - t)
                latencies[mode] = percentiles(samples)
        figures["query_ms"] = {m: {"p50": round(p50, 3), "p99": round(p99, 3)} for m, (p50, p99) in latencies.items()}
        figures["exact_over_index_p50"] = round(latencies["exact"][0] / latencies["index"][0], 1)
        figures["exact_over_index_p99"] = round(latencies["exact"][1] / latencies["index"][1], 1)

    print(
        f"backfill   {figures['entities']:,} entities x {args.dim} dims: {figures['backfill_s']} s, "
        f"{figures['vectors_per_s']:,} vectors/s ({figures['embed_share']:.0%} of it embedding)"
    )
    print(
        f"index      HNSW built in {figures['index_build_s']} s; recall@10 {figures['recall_at_10']} "
        f"against exact search (200 entities)"
    )
    q = figures["query_ms"]
    print(
        f"query k=10 with the index p50 {q['index']['p50']} ms, p99 {q['index']['p99']} ms; "  # type: ignore[index]
        f"exact p50 {q['exact']['p50']} ms, p99 {q['exact']['p99']} ms: "  # type: ignore[index]
        f"x{figures['exact_over_index_p50']} (p50), x{figures['exact_over_index_p99']} (p99) slower without it"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


def _params(conn: Any, space: vectors.Space, entity: Any) -> dict[str, Any]:
    return {"q": vectors.query_vector(conn, space, str(entity)), "id": str(entity), "k": 10}


if __name__ == "__main__":
    main()
