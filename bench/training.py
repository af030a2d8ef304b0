"""Training benchmarks: model families under a time budget, pruning, ONNX latency per family.

1. `auto` against the MLP alone at the same time budget (`training.time_budget_s`, same seed): the
   test ROC AUC of each search's exported model (its `model.onnx` on the features step's test
   split), on the bundled churn data and on a large generated set (`--customers`, default 200,000).
2. Pruning, on the large set: the MLP search with the median pruner and with none, the same trial
   budget (`--trials`) and seed: wall time and best validation ROC AUC, as a ratio and a delta.
3. The ONNX latency of each family's best model of the large set's `auto` search: one row per
   call, and per row of a batch of 1,024 (inputs prepared beforehand; the graph starts from raw
   columns, so its time includes the string-to-code lookups).
4. `--only workers`: parallel trial workers (`training.parallelism`): the same budget by one
   worker and by two, each with one CPU's threads.

    .venv/bin/python bench/training.py [--customers 200000] [--budget 150] [--churn-budget 45]
                                       [--trials 10] [--json FILE] [--only workers]

Each dataset is ingested, validated and split once (run `data`); every search reads that split
(its features are copied to the search's run), so the searches differ only in what they search.
It runs in a throw-away state directory and stops its database afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from common import bench_state, step_env, write_spec

from pipelines.io.runs import ensemble_line
from pipelines.ml.metrics import bootstrap_difference, roc_auc
from pipelines.steps.runner import run_step

MLP_ONLY = {"kind": "tabular_mlp"}
PRUNERS = ("none", "median", "successive_halving", "hyperband")


def auto_model() -> dict[str, Any]:
    """`auto` with the bundled MLP search space for its MLP (what the MLP-only search searches),
    the other families in their default spaces."""
    from tests.specs import churn_spec_dict

    return {
        "kind": "auto",
        "search_space": {},
        "search_spaces": {"tabular_mlp": churn_spec_dict()["model"]["search_space"]},
    }


def median_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def prepare(settings, name: str, source: dict[str, Any] | None, training: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """The dataset's one ingest -> validate -> features run (`data`)."""
    sections: dict[str, Any] = {"training": training, "embeddings": None}
    if source is not None:
        sections["source"] = source
        sections["contract"] = {"min_rows": 100}
    write_spec(settings, name, **sections)
    for step in ("ingest", "validate", "features"):
        run_step(step, name, "data", settings)


def search(settings, name: str, run_id: str, model: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One train step on the dataset's split: its manifest, wall time and test ROC AUC."""
    from pipelines.io.storage import open_storage, read_parquet
    from pipelines.ml.model import onnx_session, predict_onnx

    storage = open_storage(settings)
    for key in storage.list(f"{name}/data/features/"):
        storage.write_bytes(key.replace("/data/", f"/{run_id}/", 1), storage.read_bytes(key))
    write_spec(settings, name, model=model, training=training, embeddings=None)
    started = time.perf_counter()
    out = run_step("train", name, run_id, settings)
    wall = time.perf_counter() - started
    test = read_parquet(storage, f"{name}/{run_id}/features/test.parquet")
    session = onnx_session(storage.read_bytes(f"{name}/{run_id}/train/model.onnx"))
    y, scores = test["churned"].to_numpy(), predict_onnx(session, test)
    return {**out, "wall_s": wall, "test_auc": roc_auc(y, scores), "test_y": y, "test_scores": scores}


def family_latency(settings, name: str, run_id: str, families: list[str]) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """ONNX latency of each family's best trial of a study: ms per call at one row, and ms per row
    at 1,024 rows."""
    import optuna

    from pipelines.io.storage import open_storage, read_parquet
    from pipelines.io.tracking import optuna_url
    from pipelines.ml.families import load_trained
    from pipelines.ml.model import onnx_session, session_feed

    storage = open_storage(settings)
    study = optuna.load_study(study_name=f"{name}:{run_id}", storage=optuna_url(settings))
    test = read_parquet(storage, f"{name}/{run_id}/features/test.parquet")
    out = {}
    for family in families:
        done = [t for t in study.trials if t.state.name == "COMPLETE" and t.params.get("family") == family]
        if not done:
            continue
        best = max(done, key=lambda t: float(t.value or 0.0))
        trained = load_trained(storage.read_bytes(f"{name}/{run_id}/train/trials/trial-{best.number}.bin"))
        session = onnx_session(trained.to_onnx().SerializeToString(), threads=1)
        one, batch = session_feed(session, test.head(1)), session_feed(session, test.head(1024))
        run = session.run
        out[family] = {
            "ms_batch_1": median_ms(lambda f=one, r=run: r(["score"], f), 500),
            "ms_per_row_batch_1024": median_ms(lambda f=batch, r=run: r(["score"], f), 50) / 1024,
        }
    return out


def workers(settings, trials: int) -> None:  # type: ignore[no-untyped-def]
    """One worker against two at the same trial budget, one CPU's threads each."""
    env = step_env(settings)
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


def families_line(out: dict[str, Any]) -> str:
    def best(v: dict[str, Any]) -> str:
        return "-" if v["best"] is None else f"{v['best']:.4f}"

    return ", ".join(
        f"{f} {v['trials']} trials ({v['pruned']} pruned) best {best(v)} in {v['seconds']:.0f}s"
        for f, v in out["families"].items()
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=200_000, help="the large generated set")
    parser.add_argument("--budget", type=int, default=150, help="time_budget_s of each search on the large set")
    parser.add_argument("--churn-budget", type=int, default=45, help="time_budget_s of each search on churn")
    parser.add_argument("--trials", type=int, default=20, help="the trial budget of the pruning comparison")
    parser.add_argument("--worker-trials", type=int, default=32, help="the budget of the workers' comparison")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--only", choices=["workers", "pruning", "families"], help="run one part")
    parser.add_argument("--pruners", nargs="+", choices=PRUNERS[1:], default=list(PRUNERS[1:]), help="to compare")
    parser.add_argument(
        "--pruner", choices=PRUNERS[1:], default="successive_halving", help="the JSON's pruning figures"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.only == "workers":
        with bench_state() as settings:
            workers(settings, args.worker_trials)
        return
    large_source: dict[str, Any] = {
        "kind": "synthetic",
        "customers": args.customers,
        "months": 6,
        "seed": 3,
        "start": "auto",
    }
    # larger batches on the large set: an epoch is a pass over its rows either way
    large = {"batch_size": 1024, "max_epochs": 12, "early_stopping_patience": 3, "timeout_s": None, "seed": 42}
    churn = {"timeout_s": None, "seed": 42}
    result: dict[str, Any] = {"auto_vs_mlp": []}
    with bench_state() as settings:
        # Import what the train step needs before timing, so no search pays for it.
        import lightgbm  # noqa: F401
        import mlflow  # noqa: F401
        import onnx  # noqa: F401
        import optuna  # noqa: F401
        import torch  # noqa: F401

        for dataset, name, source, training, budget in (
            ()
            if args.only == "pruning"
            else (
                ("churn (bundled)", "bench_churn", None, churn, args.churn_budget),
                (f"generated, {args.customers:,} customers", "bench_large", large_source, large, args.budget),
            )
        ):
            started = time.perf_counter()
            prepare(settings, name, source, training)
            prepared = time.perf_counter() - started
            budgeted = {**training, "n_trials": None, "time_budget_s": budget, "pruner": "median"}
            mlp = search(settings, name, "mlp", MLP_ONLY, budgeted)
            auto = search(settings, name, "auto", auto_model(), budgeted)
            print(f"{dataset} (split in {prepared:.0f}s), time budget {budget}s each, same seed:")
            print(f"  MLP only (baseline): test ROC AUC {mlp['test_auc']:.4f}  {families_line(mlp)}")
            print(f"  auto:                test ROC AUC {auto['test_auc']:.4f}  {families_line(auto)}")
            # the two models scored the same test rows: a paired bootstrap says what the difference is worth
            paired = bootstrap_difference(
                auto["test_y"], auto["test_scores"], mlp["test_scores"], roc_auc, 1000, 0.95, seed=0
            )
            print(
                f"  auto - MLP: {auto['test_auc'] - mlp['test_auc']:+.4f} ROC AUC (95% CI "
                f"[{paired['lower']:+.4f}, {paired['upper']:+.4f}] on {len(auto['test_y']):,} test rows); "
                "auto's best trial: "
                f"{auto['best_family']}, exported: {auto['model_family']}"
                f"{' (' + ensemble_line(auto) + ')' if auto['ensemble'] else ''};"
                f" spent {auto['budget_spent_s']:.0f}s / {mlp['budget_spent_s']:.0f}s"
            )
            result["auto_vs_mlp"].append(
                {
                    "dataset": dataset,
                    "auto_auc": auto["test_auc"],
                    "mlp_auc": mlp["test_auc"],
                    "auc_delta_ci95": [paired["lower"], paired["upper"]],
                    "test_rows": len(auto["test_y"]),
                    "budget_s": budget,
                    "auto_best_family": auto["best_family"],
                    "auto_exported": auto["model_family"],
                    "auto_ensemble": auto["ensemble"],
                    "auto_families": auto["families"],
                    "mlp_trials": mlp["trials"],
                }
            )

        if args.only != "pruning":
            latency = family_latency(settings, "bench_large", "auto", ["linear", "lightgbm", "tabular_mlp"])
            print("ONNX Runtime latency of each family's best model (large set's auto search), one thread:")
            for family, figures in latency.items():
                print(
                    f"  {family:<12} 1 row: {figures['ms_batch_1']:.4f} ms   "
                    f"batch of 1,024: {figures['ms_per_row_batch_1024'] * 1000:.2f} us per row"
                )
            result["onnx_ms_per_row"] = {f: v["ms_per_row_batch_1024"] for f, v in latency.items()}
            result["onnx_ms_batch_1"] = {f: v["ms_batch_1"] for f, v in latency.items()}
        else:
            prepare(settings, "bench_large", large_source, large)
        if args.only != "families":
            result["pruning"] = pruning(settings, args, large)
    write_json(args.json, result, keep=args.only is not None)


def write_json(path: str | None, result: dict[str, Any], keep: bool = False) -> None:
    """Write the figures; with `keep` (one part run), the other parts' figures already in the file stay."""
    if not path:
        return
    previous: dict[str, Any] = {}
    if keep and os.path.exists(path):
        with open(path) as fh:
            previous = json.load(fh)
    with open(path, "w") as fh:
        json.dump({**previous, **result}, fh, indent=1, default=str)


def pruning(settings, args: argparse.Namespace, large: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The MLP search on the large set with each pruner and with none (the baseline), same trials
    and seed; the figures of `--pruner` first, then every pruner's."""
    runs = {}
    for pruner in ("none", *args.pruners):
        training = {**large, "n_trials": args.trials, "time_budget_s": None, "pruner": pruner}
        runs[pruner] = search(settings, "bench_large", f"prune-{pruner}", MLP_ONLY, training)
    none = runs["none"]
    print(f"pruning, MLP on the large set, {args.trials} trials, same seed:")
    print(
        f"  {'none (baseline)':<20} {none['wall_s']:6.1f}s  best val ROC AUC {none['best_value']:.4f}  {none['trials']}"
    )
    figures = {}
    for pruner, out in runs.items():
        if pruner == "none":
            continue
        figures[pruner] = {
            "wall_ratio": out["wall_s"] / none["wall_s"],
            "auc_delta": out["best_value"] - none["best_value"],
            "wall_s": out["wall_s"],
            "best": out["best_value"],
            "counts": out["trials"],
        }
        print(
            f"  {pruner:<20} {out['wall_s']:6.1f}s  best val ROC AUC {out['best_value']:.4f}  {out['trials']}"
            f"  -> wall {figures[pruner]['wall_ratio']:.2f}x, best {figures[pruner]['auc_delta']:+.4f}"
        )
    return {
        **{k: figures[args.pruner][k] for k in ("wall_ratio", "auc_delta")},
        "pruner": args.pruner,
        "trials": args.trials,
        "unpruned_s": none["wall_s"],
        "unpruned_best": none["best_value"],
        "by_pruner": figures,
    }


if __name__ == "__main__":
    main()
