"""The serving bench's printed table: req/s and latency per level as ratios against the baselines
measured in the same run (bare FastAPI, `mlflow models serve`), the protocols against `/v1`, the
overload and autoscaling figures."""

from __future__ import annotations

from typing import Any


def report(results: list[dict[str, Any]], levels: list[int]) -> None:
    results = [r for r in results if r["scenario"] != "request_log"]  # printed when measured

    def find(server: str, scenario: str, c: int) -> dict[str, Any] | None:
        return next(
            (r for r in results if (r["server"], r["scenario"], r["connections"]) == (server, scenario, c)), None
        )

    print("\nreq/s and latency per level; x bare and x mlflow are ratios against those servers in this run")
    print(
        f"{'scenario':16} {'server':36} {'conn':>4} {'req/s':>8} {'p50':>7} {'p99':>8} {'p99.9':>8} {'non2xx':>6}"
        f" {'x bare':>7} {'x mlflow':>8} {'p99 x mlflow':>12}"
    )
    for r in results:
        if r["scenario"] in ("canary_walk", "overload", "autoscaling"):
            continue
        bare, mlf = (
            find("bare", "request_features", r["connections"]),
            find("mlflow", "request_features", r["connections"]),
        )
        xb = f"{r['rps'] / bare['rps']:7.2f}" if bare else "      -"
        xm = f"{r['rps'] / mlf['rps']:8.2f}" if mlf else "       -"
        pm = f"{r['p99_ms'] / mlf['p99_ms']:12.2f}" if mlf else "           -"
        print(
            f"{r['scenario']:16} {r['server']:36} {r['connections']:>4} {r['rps']:8.1f} {r['p50_ms']:7.2f}"
            f" {r['p99_ms']:8.2f} {r['p999_ms']:8.2f} {r['non_2xx']:>6} {xb} {xm} {pm}"
        )
    for c in levels:
        v1 = find("mlcycle", "request_features", c)
        for scenario in ("oip_infer", "mlflow_invocations"):
            other = find("mlcycle", scenario, c)
            if v1 and other:
                print(f"{scenario} / v1 predict at c={c}: req/s x {other['rps'] / v1['rps']:.2f}")
    a, b = find("mlcycle", "request_features", levels[0]), find("mlcycle", "online_features", levels[0])
    if a and b:
        print(f"\nonline features add {b['p50_ms'] - a['p50_ms']:+.2f} ms at p50 with {levels[0]} connection(s)")
    if len(levels) > 1:
        hi, lo = find("mlcycle", "request_features", levels[-1]), find("mlcycle", "request_features", levels[-2])
        if hi and lo:
            print(f"p99 at {levels[-1]} connections / p99 at {levels[-2]}: {hi['p99_ms'] / lo['p99_ms']:.2f}")
    report_overload_and_scaling(results)


def report_overload_and_scaling(results: list[dict[str, Any]]) -> None:
    """The overload figures (ratios against the lowest level) and autoscaling against 1 replica."""
    shed = [r for r in results if r["scenario"] == "overload"]
    if shed:
        base = shed[0]
        print(f"\noverload (bound {base['bound']} per replica), ratios against c={base['connections']} in this run:")
        for r in shed:
            p99 = (
                r["admitted_p99_ms"] / base["admitted_p99_ms"]
                if r["admitted_p99_ms"] and base["admitted_p99_ms"]
                else 0
            )
            kept = r["answered_rps"] / base["answered_rps"]
            print(
                f"  c={r['connections']:<4} answered {r['answered_rps']:8.1f} req/s (x {kept:.2f}),"
                f" shed {r['shed_share']:.1%}, admitted p99 {r['admitted_p99_ms']} ms (x {p99:.2f})"
            )
        print(f"  max sustained (answered) req/s: {max(r['answered_rps'] for r in shed):.1f}")
    scaled = {r["replicas"]: r for r in results if r["scenario"] == "autoscaling"}
    if {"1", "auto"} <= set(scaled):
        one, auto = scaled["1"], scaled["auto"]
        print(
            f"\nautoscaling at {auto['connections']} connections ({auto['running']} replicas running) vs 1 replica:"
            f" req/s x {auto['rps'] / one['rps']:.2f}, p99 x {auto['p99_ms'] / one['p99_ms']:.2f}"
        )
