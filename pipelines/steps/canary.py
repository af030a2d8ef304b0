"""`canary`: the challenger beside the champion on Ray Serve, traffic shifted step by step.

The application first serves both versions with the challenger at 0 %; then, for each percentage
of `canary.steps`, the weights change through Serve's config (`reconfigure`, no restart), traffic
dwells `canary.dwell_s`, and the live figures of both versions since the step began (error rate,
p99 latency, mean score, or a multiclass model's predicted classes' shares, from the request log)
are judged against the spec's SLOs. A breach rolls
back at once: weights return to the champion, the challenger's deployment is removed, its alias
stays, its vector space (`embed`) is dropped, the step fails with the reason (exit 3, no retry).
Passing the last step (100 %) makes the challenger `champion` (audited: similarity reads switch to
its space with the alias) and retires the old champion's deployment and space (kept
`embeddings.retain_hours`). The first model of a pipeline has nothing to compare against: it is
deployed as the champion. A pinned pipeline (`mlcycle model pin`) skips the canary with the pin's
who, when and why; a pin set, or the champion moved by a person, while the canary walks holds the
challenger at the end: the champion serves alone again and the step ends skipped with the reason.

The decisions and the figures of every step are the report (`report.json`, `report.png`), with the
A/B result on the labels that arrived during the canary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from pipelines.core.errors import MlcycleError, StepSkipped
from pipelines.core.steering import blocked_promotion, pinned_outcome
from pipelines.io import vectors
from pipelines.io.registry import CHALLENGER, CHAMPION, open_registry
from pipelines.io.requestlog import ab_results, served_since
from pipelines.io.steering import current_pin
from pipelines.io.storage import write_json
from pipelines.ml.metrics import class_shares
from pipelines.ml.plots import png_bytes, two_panels
from pipelines.steps.context import StepContext
from serving.config import VersionConfig
from serving.deploy import connect, deploy, endpoint, serving_args

if TYPE_CHECKING:
    from pipelines.core.spec import Canary

STEP = "canary"
POLL_S = 1.0


class CanaryRolledBack(MlcycleError):
    """The challenger breached an SLO: traffic is back on the champion."""

    exit_code = 3


# ----------------------------------------------------------------------------------- pure core
def figures(rows: Sequence[tuple[Any, ...]]) -> dict[int, dict[str, Any]]:
    """Per version: requests, errors, error rate, p99 latency (ms), the scores' mean and standard
    deviation, and (a multiclass model) each predicted class's share of the answers.
    `rows` are (version, status, score, latency_ms[, predicted class]) of served (not shadow)
    predictions."""
    out: dict[int, dict[str, Any]] = {}
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
            "std_score": float(np.std(scores)) if scores else float("nan"),
        }
        labels = [r[4] for r in mine if len(r) > 4 and r[4] is not None]
        if labels:
            out[version]["class_shares"] = class_shares(labels)
    return out


def class_shift(champion: dict[str, float], challenger: dict[str, float]) -> float:
    """How far two versions' shares of predicted classes are apart: the total variation distance
    (half the sum of the absolute differences; 0 the same, 1 disjoint). Pure."""
    classes = set(champion) | set(challenger)
    return 0.5 * sum(abs(champion.get(c, 0.0) - challenger.get(c, 0.0)) for c in classes)


def judge(
    cfg: Canary,
    champion: dict[str, Any] | None,
    challenger: dict[str, Any] | None,
    final: bool,
    kind: str = "binary",
) -> tuple[str, list[str]]:
    """`advance`, `wait` (not enough traffic yet) or `rollback`, with reasons. Errors and latency
    roll back as soon as they are seen; the other checks need `min_requests` first, and a step
    that ends (`final`) without them rolls back: an unverified canary is not promoted. The mean
    score's shift is a probability's for a binary label, in the champion's standard deviations
    of its scores for a regression one (a value has the label's units); for a multiclass label the
    shift is in the shares of the classes predicted (`class_shift`)."""
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
    if kind == "multiclass" and champion is not None and champion.get("class_shares"):
        shift = class_shift(champion["class_shares"], challenger.get("class_shares", {}))
        if shift > cfg.max_score_shift:
            return "rollback", [
                f"the predicted classes' shares moved by {shift:.3f} (total variation distance; champion "
                f"{champion['class_shares']}, challenger {challenger.get('class_shares', {})}), "
                f"over canary.max_score_shift {cfg.max_score_shift:.3f}"
            ]
    elif champion is not None and champion["requests"] > 0:
        shift = abs(challenger["mean_score"] - champion["mean_score"])
        unit = ""
        if kind == "regression":
            spread = champion.get("std_score", float("nan"))
            shift, unit = (shift / spread if spread > 0 else shift), " standard deviations"
        if shift > cfg.max_score_shift:
            return "rollback", [
                f"mean score moved by {shift:.3f}{unit} (champion {champion['mean_score']:.3f}), "
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
def plot(report: dict[str, Any]) -> bytes:
    """Error rate and p99 latency of both versions at each canary step, as PNG."""
    steps = report["steps"]
    x = [s["percent"] for s in steps]
    fig, (a, b) = two_panels(10, 4)
    for role in ("champion", "challenger"):
        a.plot(x, [s["figures"].get(role, {}).get("error_rate", np.nan) for s in steps], marker="o", label=role)
        b.plot(x, [s["figures"].get(role, {}).get("p99_ms", np.nan) for s in steps], marker="o", label=role)
    a.set(title="error rate by canary step", xlabel="challenger traffic (%)")
    b.set(title="p99 latency (ms) by canary step", xlabel="challenger traffic (%)")
    return png_bytes(fig, dpi=80)


@dataclass(frozen=True)
class Walk:
    """The canary of one challenger against one champion on the pipeline's application."""

    ctx: StepContext
    model: str
    champion: int
    challenger: int

    def serve(self, weights: dict[int, float], state: dict[str, Any]) -> None:
        """Deploy the application with these weights; `state` is what `GET /v1/pipelines/<p>` shows."""
        versions = [VersionConfig(version=v, weight=w) for v, w in sorted(weights.items())]
        deploy(serving_args(self.ctx.spec, versions, self.model, canary=state))

    def dwell(self, percent: float) -> dict[str, Any]:
        """One step: the weights set, traffic watched until the judgement is made or the dwell ends."""
        cfg = self.ctx.spec.canary
        state = {"state": "canary", "champion": self.champion, "challenger": self.challenger, "percent": percent}
        self.serve(plan_weights(self.champion, self.challenger, percent), state)
        began, deadline = time.time(), time.monotonic() + cfg.dwell_s
        while True:
            final = time.monotonic() >= deadline
            seen = figures(served_since(self.ctx.settings, self.ctx.pipeline, began))
            decision, reasons = judge(
                cfg, seen.get(self.champion), seen.get(self.challenger), final, self.ctx.spec.label.kind
            )
            if decision != "wait" or final:
                break
            time.sleep(POLL_S)
        return {
            "percent": percent,
            "decision": decision,
            "reasons": reasons,
            "seconds": round(time.time() - began, 1),
            "figures": {"champion": seen.get(self.champion, {}), "challenger": seen.get(self.challenger, {})},
        }

    def roll_back(self, reasons: list[str]) -> None:
        self.serve({self.champion: 100.0, self.challenger: 0.0}, {"state": "rolling back", "champion": self.champion})
        self.serve(
            {self.champion: 100.0},
            {"state": "rolled back", "champion": self.champion, "rolled_back": self.challenger, "reasons": reasons},
        )


def run(ctx: StepContext) -> dict[str, Any]:
    if ctx.dry_run:
        raise StepSkipped("dry run: nothing is deployed")
    ctx.manifest("promote")  # the canary follows a promotion of this run
    registry = open_registry(ctx.settings, ctx.pipeline, ctx.run_id, STEP)
    champion, challenger = registry.version(CHAMPION), registry.version(CHALLENGER)
    if champion is None or challenger is None:
        raise MlcycleError(f"{registry.name}: needs aliases champion and challenger; run promote first")
    pin = current_pin(ctx.settings, ctx.pipeline)
    if pin is not None:
        raise StepSkipped(pinned_outcome(pin, champion, challenger))
    connect(ctx.settings)
    walk = Walk(ctx, registry.name, champion, challenger)
    report: dict[str, Any] = {
        "step": STEP,
        "pipeline": ctx.pipeline,
        "run_id": ctx.run_id,
        "champion": champion,
        "challenger": challenger,
        "steps": [],
    }
    if champion == challenger:
        walk.serve({champion: 100.0}, {"state": "serving", "champion": champion})
        report.update(outcome="deployed", reason="first model of the pipeline: served as champion")
        return _finish(ctx, report)

    began_canary = datetime.now(UTC)
    for percent in ctx.spec.canary.steps:
        step = walk.dwell(percent)
        report["steps"].append(step)
        if step["decision"] == "rollback":
            walk.roll_back(step["reasons"])
            report["vector_space_dropped"] = vectors.drop_space(
                ctx.settings, ctx.pipeline, challenger, "rolled back: " + "; ".join(step["reasons"])
            )
            report.update(outcome="rolled_back", reason="; ".join(step["reasons"]))
            report["ab"] = ab_results(ctx.settings, ctx.pipeline, champion, challenger, since=began_canary)
            _finish(ctx, report)
            raise CanaryRolledBack(
                f"{registry.name} v{challenger} rolled back at {percent}%: {'; '.join(step['reasons'])}; "
                f"v{champion} serves all traffic and stays champion"
            )

    blocked = blocked_promotion(current_pin(ctx.settings, ctx.pipeline), champion, registry.version(CHAMPION))
    if blocked is not None:
        hold(ctx, walk, report, registry.version(CHAMPION) or champion, blocked)
    registry.point(CHAMPION, challenger, f"canary passed {ctx.spec.canary.steps}")
    registry.point(CHALLENGER, None, "promoted to champion")
    walk.serve({challenger: 100.0}, {"state": "serving", "champion": challenger, "retired": champion})
    report["vector_space_retired"] = vectors.retire_space(ctx.settings, ctx.pipeline, champion)
    report.update(outcome="promoted", reason=f"v{challenger} passed every step; v{champion} retired")
    # Labels often arrive after the canary: GET /v1/pipelines/<name> shows the A/B as they do.
    report["ab"] = ab_results(ctx.settings, ctx.pipeline, champion, challenger, since=began_canary)
    return _finish(ctx, report)


def hold(ctx: StepContext, walk: Walk, report: dict[str, Any], champion: int, reason: str) -> NoReturn:
    """A challenger that passed every step but may not become champion (a pin set, or the champion
    moved by a person while it walked): the champion serves alone again, the challenger keeps its
    alias and its space, the step ends skipped with the reason."""
    walk.serve({champion: 100.0}, {"state": "held", "champion": champion, "held": walk.challenger, "reason": reason})
    report.update(outcome="held", reason=f"{reason}: v{walk.challenger} passed the canary and stays challenger")
    _finish(ctx, report)
    raise StepSkipped(f"{report['reason']}; v{champion} stays champion")


def _finish(ctx: StepContext, report: dict[str, Any]) -> dict[str, Any]:
    report["endpoint"] = endpoint(ctx.settings, ctx.pipeline)
    if report["steps"]:
        report["plot"] = ctx.storage.write_bytes(ctx.key("report.png"), plot(report))
    report["report"] = write_json(ctx.storage, ctx.key("report.json"), report)
    write_json(ctx.storage, ctx.key("manifest.json"), report)
    return report
