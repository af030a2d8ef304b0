"""The parse of one request body alone, per protocol, against `/v1`'s: microseconds per body and
the ratio of bodies per second against `/v1` (above 1: faster than `/v1`).

    .venv/bin/python bench/protocol_parse.py [--rows 200] [--repeat 5]

The bodies are `bench/serving.py`'s (one churn instance each, every feature in the request) for
rows of the bundled churn data; each parser turns a body into the `(entity id, features)` rows
the contract judges (`parse`), then `parse + judge` adds that judgement (`serving.http.judge_rows`),
which is all the route does before scoring. The best of `--repeat` runs is printed.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from bodies import invocation_bodies, oip_bodies, ours_bodies

from pipelines.core.spec import load_spec
from pipelines.ml.datagen import ChurnConfig, generate_churn
from serving.contract import RequestContract, request_contract
from serving.http import PredictRequest, judge_rows
from serving.mlflow_formats import invocation_rows
from serving.oip import infer_rows

Parse = Callable[[bytes], list[tuple[Any, dict[str, Any]]]]


def churn_rows(n: int) -> tuple[RequestContract, str, list[Any], list[dict[str, Any]]]:
    spec = load_spec(Path(common.__file__).resolve().parents[1] / "include" / "pipelines" / "churn.yaml")
    cols = spec.model.numeric_features + spec.model.categorical_features
    frame = generate_churn(ChurnConfig(customers=n, months=1, seed=5)).head(n)
    rows = [{c: (v.item() if hasattr(v, "item") else v) for c, v in r.items()} for r in frame[cols].to_dict("records")]
    ids = [int(i) for i in frame[spec.entity.join_key]]
    return request_contract(spec, cols), spec.entity.join_key, ids, rows


def parsers(contract: RequestContract, key: str) -> dict[str, tuple[Parse, Callable[..., list[str]]]]:
    def v1(body: bytes) -> list[tuple[Any, dict[str, Any]]]:
        return [(i.entity_id, i.features) for i in PredictRequest.model_validate_json(body).instances]

    return {
        "/v1 predict (PredictRequest)": (v1, ours_bodies),
        "/v2 infer (Open Inference Protocol)": (lambda b: infer_rows(b, contract.rules, key, 1000)[1], oip_bodies),
        "/invocations (dataframe_records)": (lambda b: invocation_rows(b, key, 1000), invocation_bodies),
    }


def timings(
    table: dict[str, tuple[Parse, list[bytes]]], contract: RequestContract | None, repeat: int
) -> dict[str, float]:
    """Microseconds per body of each parser: the best of `repeat` rounds, the parsers taking
    turns within a round (a shared host's load falls on all of them alike)."""

    def run(parse: Parse, bodies: list[bytes]) -> None:
        for body in bodies:
            rows = parse(body)
            if contract is not None:
                judged = judge_rows(rows, contract)
                if not judged or isinstance(judged[0], dict):
                    raise SystemExit(f"refused: {judged}")

    best = dict.fromkeys(table, float("inf"))
    for _ in range(repeat):
        for name, (parse, bodies) in table.items():
            seconds = timeit.timeit(lambda p=parse, b=bodies: run(p, b), number=10)
            best[name] = min(best[name], seconds / (10 * len(bodies)) * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    contract, key, ids, rows = churn_rows(args.rows)
    table = {
        name: (parse, [b.encode() for b in bodies_of(ids, rows)])
        for name, (parse, bodies_of) in parsers(contract, key).items()
    }
    for judged in (False, True):
        label = "parse + judge" if judged else "parse"
        print(f"\n{label}: us per body (one churn instance), and x /v1 in bodies per second")
        best = timings(table, contract if judged else None, args.repeat)
        base = next(iter(best.values()))
        for name, us in best.items():
            print(f"  {name:38} {us:8.2f} us  x{base / us:.2f}")


if __name__ == "__main__":
    main()
