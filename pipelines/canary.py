"""`canary`: the challenger beside the champion on Ray Serve, traffic shifted step by step.

The application first serves both versions with the challenger at 0 %; then, for each percentage
of `canary.steps`, the weights change through Serve's config (`reconfigure`, no restart), traffic
dwells `canary.dwell_s`, and the live figures of both versions since the step began (error rate,
p99 latency, mean score, from the request log) are judged against the spec's SLOs. A breach rolls
back at once: weights return to the champion, the challenger's deployment is removed, its alias
stays, the step fails with the reason (exit 3, no retry). Passing the last step (100 %) makes the
challenger `champion` (audited) and retires the old champion's deployment. The first model of a
pipeline has nothing to compare against: it is deployed as the champion.

The decisions and the figures of every step are the report (`report.json`, `report.png`), with the
A/B result on the labels that arrived during the canary.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.context import StepContext, dry_run
from pipelines.errors import MlcycleError, StepSkipped
from pipelines.storage import write_json

if TYPE_CHECKING:
    from pipelines.settings import Settings
    from pipelines.spec import Canary

STEP = "canary"
POLL_S = 1.0


class CanaryRolledBack(MlcycleError):
    """The challenger breached an SLO: traffic is back on the champion."""

    exit_code = 3


# ----------------------------------------------------------------------------------- pure core
def figures(rows: list[tuple[int, str, float | None, float]]) -> dict[int, dict[str, float]]:
    """Per version: requests, errors, error rate, p99 latency (ms), mean score.
    `rows` are (version, status, score, latency_ms) of served (not shadow) predictions."""
    out: dict[int, dict[str, float]] = {}
    for version in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == version]
        errors = sum(1 for r in mine if r[1] == "error")
        scores = [r[2] for r in mine if r[2] is not None]
        out[version] = {
            "requests": float(len(mine)),
            "errors": float(errors),
            "error_rate": errors / len(mine),
            "p99_ms": float(np.percentile([r[3] for r in mine], 99)),
            "mean_score": float(np.mean(scores)) if scores else float("nan"),
        }
    return out


def judge(
    cfg: Canary, champion: dict[str, float] | None, challenger: dict[str, float] | None, final: bool
) -> tuple[str, list[str]]:
    """`advance`, `wait` (not enough traffic yet) or `rollback`, with reasons. Errors and latency
    roll back as soon as they are seen; the other checks need `min_requests` first, and a step
    that ends (`final`) without them rolls back: an unverified canary is not promoted."""
    if challenger is None or challenger["requests"] == 0:
        return ("rollback", ["the challenger received no traffic in this step"]) if final else ("wait", [])
    reasons = []
    if challenger["error_rate"] > cfg.max_error_rate:
        reasons.append(f"challenger error rate {challenger['error_rate']:.2%} over {cfg.max_error_rate:.2%}")
    if challenger["p99_ms"] > cfg.max_p99_latency_ms:
        reasons.append(f"challenger p99 {challenger['p99_ms']:.1f} ms over {cfg.max_p99_latency_ms:.1f} ms")
    enough = challenger["requests"] >= cfg.min_requests
    if reasons and (enough or challenger["errors"] >= 5 or final):
        return "rollback", reasons
    if not enough:
        if final:
            return "rollback", [
                f"only {int(challenger['requests'])} challenger requests, canary.min_requests is {cfg.min_requests}"
            ]
        return "wait", []
    if champion is not None and champion["requests"] > 0:
        shift = abs(challenger["mean_score"] - champion["mean_score"])
        if shift > cfg.max_score_shift:
            return "rollback", [
                f"mean score moved by {shift:.3f} (champion {champion['mean_score']:.3f}), "
                f"over canary.max_score_shift {cfg.max_score_shift:.3f}"
            ]
    checks = (
        f"{int(challenger['requests'])} requests, error rate {challenger['error_rate']:.2%}, "
        f"p99 {challenger['p99_ms']:.1f} ms"
    )
    return ("advance" if final else "wait"), [checks]


def plan_weights(champion: int, challenger: int, percent: float) -> dict[int, float]:
    return {champion: 100.0 - percent, challenger: float(percent)}


# ------------------------------------------------------------------------------------- I/O
def read_figures(settings: Settings, pipeline: str, since: float) -> dict[int, dict[str, float]]:
    from pipelines.db import connect

    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT model_version, status, score, latency_ms FROM inference_requests"
            " WHERE pipeline = %s AND NOT shadow AND created_at >= to_timestamp(%s)",
            (pipeline, since),
        ).fetchall()
    return figures([(int(v), s, sc, lat) for v, s, sc, lat in rows])


def plot(report: dict[str, Any]) -> bytes:
    """Error rate and p99 latency of both versions at each canary step, as PNG."""
    from pipelines.plots import png_bytes, two_panels

    steps = report["steps"]
    x = [s["percent"] for s in steps]
    fig, (a, b) = two_panels(10, 4)
    for role in ("champion", "challenger"):
        a.plot(x, [s["figures"].get(role, {}).get("error_rate", np.nan) for s in steps], marker="o", label=role)
        b.plot(x, [s["figures"].get(role, {}).get("p99_ms", np.nan) for s in steps], marker="o", label=role)
    a.set(title="error rate by canary step", xlabel="challenger traffic (%)")
    b.set(title="p99 latency (ms) by canary step", xlabel="challenger traffic (%)")
    return png_bytes(fig, dpi=80)


def run(ctx: StepContext) -> dict[str, Any]:
    import mlflow

    from pipelines.abtest import ab_results
    from pipelines.registry import CHALLENGER, CHAMPION, alias_version, model_name, move_alias
    from pipelines.tracking import setup_mlflow
    from serving.config import VersionConfig
    from serving.deploy import connect, deploy, serving_args

    spec, cfg = ctx.spec, ctx.spec.canary
    if dry_run(ctx):
        raise StepSkipped("dry run: nothing is deployed")
    ctx.manifest("promote")  # the canary follows a promotion of this run
    setup_mlflow(ctx.settings, ctx.pipeline)
    client = mlflow.MlflowClient()
    name = model_name(ctx.pipeline)
    champ, chall = alias_version(client, name, CHAMPION), alias_version(client, name, CHALLENGER)
    if champ is None or chall is None:
        raise MlcycleError(f"{name}: needs aliases champion and challenger; run promote first")
    champion, challenger = int(champ.version), int(chall.version)
    connect(ctx.settings)

    def serve_weights(weights: dict[int, float], state: dict[str, Any]) -> None:
        versions = [VersionConfig(version=v, weight=w) for v, w in sorted(weights.items())]
        deploy(serving_args(spec, versions, name, canary=state))

    report: dict[str, Any] = {
        "step": STEP,
        "pipeline": ctx.pipeline,
        "run_id": ctx.run_id,
        "champion": champion,
        "challenger": challenger,
        "steps": [],
    }
    if champion == challenger:
        serve_weights({champion: 100.0}, {"state": "serving", "champion": champion})
        report.update(outcome="deployed", reason="first model of the pipeline: served as champion")
        return _finish(ctx, report)

    actor = f"{ctx.pipeline}/{ctx.run_id}/{STEP}"
    began_canary = datetime.now(UTC)
    for percent in cfg.steps:
        state = {"state": "canary", "champion": champion, "challenger": challenger, "percent": percent}
        serve_weights(plan_weights(champion, challenger, percent), state)
        began, deadline = time.time(), time.monotonic() + cfg.dwell_s
        while True:
            final = time.monotonic() >= deadline
            seen = read_figures(ctx.settings, ctx.pipeline, began)
            decision, reasons = judge(cfg, seen.get(champion), seen.get(challenger), final)
            if decision != "wait" or final:
                break
            time.sleep(POLL_S)
        report["steps"].append(
            {
                "percent": percent,
                "decision": decision,
                "reasons": reasons,
                "seconds": round(time.time() - began, 1),
                "figures": {"champion": seen.get(champion, {}), "challenger": seen.get(challenger, {})},
            }
        )
        if decision == "rollback":
            serve_weights({champion: 100.0, challenger: 0.0}, {"state": "rolling back", "champion": champion})
            serve_weights(
                {champion: 100.0},
                {"state": "rolled back", "champion": champion, "rolled_back": challenger, "reasons": reasons},
            )
            report.update(outcome="rolled_back", reason="; ".join(reasons))
            report["ab"] = ab_results(ctx.settings, ctx.pipeline, champion, challenger, since=began_canary)
            _finish(ctx, report)
            raise CanaryRolledBack(
                f"{name} v{challenger} rolled back at {percent}%: {'; '.join(reasons)}; "
                f"v{champion} serves all traffic and stays champion"
            )

    def point(alias: str, version: int | None, reason: str) -> None:
        move_alias(
            ctx.settings,
            client,
            pipeline=ctx.pipeline,
            alias=alias,
            version=version,
            actor=actor,
            run_id=ctx.run_id,
            reason=reason,
        )

    point(CHAMPION, challenger, f"canary passed {cfg.steps}")
    point(CHALLENGER, None, "promoted to champion")
    serve_weights({challenger: 100.0}, {"state": "serving", "champion": challenger, "retired": champion})
    report.update(outcome="promoted", reason=f"v{challenger} passed every step; v{champion} retired")
    # Labels often arrive after the canary: GET /v1/pipelines/<name> shows the A/B as they do.
    report["ab"] = ab_results(ctx.settings, ctx.pipeline, champion, challenger, since=began_canary)
    return _finish(ctx, report)


def _finish(ctx: StepContext, report: dict[str, Any]) -> dict[str, Any]:
    from serving.deploy import endpoint

    report["endpoint"] = endpoint(ctx.settings, ctx.pipeline)
    if report["steps"]:
        report["plot"] = ctx.storage.write_bytes(ctx.key("report.png"), plot(report))
    report["report"] = write_json(ctx.storage, ctx.key("report.json"), report)
    write_json(ctx.storage, ctx.key("manifest.json"), report)
    return report
