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

With `canary.mode: shadow` the challenger instead gets a copy of every request and never answers
(`pipelines.steps.shadow_run`): at the end of the window a comparison with the champion on the
same requests decides by the same gates.

The decisions and the figures of every step are the report (`report.json`, `report.png`), with the
A/B result on the labels that arrived during the canary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import numpy as np

from pipelines.core.alerts import rollback_alert
from pipelines.core.errors import MlcycleError, StepSkipped
from pipelines.core.steering import blocked_promotion, pinned_outcome
from pipelines.io import alerts, vectors
from pipelines.io.registry import CHALLENGER, CHAMPION, open_registry
from pipelines.io.requestlog import ab_results, served_since
from pipelines.io.steering import current_pin
from pipelines.io.storage import write_json
from pipelines.ml.gates import class_shift, figures, judge
from pipelines.ml.imbalance import fixed_threshold
from pipelines.ml.plots import png_bytes, two_panels
from pipelines.steps.context import StepContext
from pipelines.steps.shadow_run import shadow_run
from serving.config import VersionConfig
from serving.deploy import connect, deploy, endpoint, serving_args
from serving.steer import wait_loaded

STEP = "canary"
POLL_S = 1.0
__all__ = ["CanaryRolledBack", "class_shift", "figures", "judge", "plan_weights", "run"]


class CanaryRolledBack(MlcycleError):
    """The challenger breached an SLO: traffic is back on the champion."""

    exit_code = 3


# ----------------------------------------------------------------------------------- pure core
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

    @property
    def decide_at(self) -> float | None:
        """Where a binary answer logged without a decision (a version from before thresholds) decided."""
        spec = self.ctx.spec
        return fixed_threshold(spec.evaluation.threshold) if spec.label.kind == "binary" else None

    def serve(self, weights: dict[int, float], state: dict[str, Any], shadow: int | None = None) -> None:
        """Deploy the application with these weights (and a shadow version that gets a copy of each
        request); `state` is what `GET /v1/pipelines/<p>` shows."""
        versions = [VersionConfig(version=v, weight=w) for v, w in sorted(weights.items())]
        if shadow is not None:
            versions.append(VersionConfig(version=shadow, shadow=True))
        deploy(serving_args(self.ctx.spec, versions, self.model, canary=state), self.ctx.settings)

    def dwell(self, percent: float) -> dict[str, Any]:
        """One step: the weights set, traffic watched until the judgement is made or the dwell ends."""
        cfg = self.ctx.spec.canary
        state = {"state": "canary", "champion": self.champion, "challenger": self.challenger, "percent": percent}
        self.serve(plan_weights(self.champion, self.challenger, percent), state)
        # the dwell counts from the challenger loaded: `serve.run` returns before the replicas
        # have reconfigured, which on a busy host took longer than a short dwell
        loaded_s = wait_loaded(self.ctx.settings, self.ctx.pipeline, self.challenger)
        began, deadline = time.time(), time.monotonic() + cfg.dwell_s
        while True:
            final = time.monotonic() >= deadline
            seen = figures(served_since(self.ctx.settings, self.ctx.pipeline, began), self.decide_at)
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
            "loaded_s": None if loaded_s is None else round(loaded_s, 1),
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
    refuse_pinned(ctx, champion, challenger)
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

    if ctx.spec.canary.mode == "shadow":
        _finish(ctx, shadow_run(walk, registry, report))
        if report["outcome"] == "held":
            raise StepSkipped(f"{report['reason']}; v{registry.version(CHAMPION)} stays champion")
        if report["outcome"] == "rejected":
            raise CanaryRolledBack(
                f"{registry.name} v{challenger} rejected after its shadow run: {report['reason']}; "
                f"v{champion} serves all traffic and stays champion"
            )
        return report
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
            report["ab"] = _ab(ctx, champion, challenger, began_canary)
            _finish(ctx, report)
            raise CanaryRolledBack(
                f"{registry.name} v{challenger} rolled back at {percent}%: {'; '.join(step['reasons'])}; "
                f"v{champion} serves all traffic and stays champion"
            )

    hold_if_blocked(ctx, walk, report, registry.version(CHAMPION))
    registry.point(CHAMPION, challenger, f"canary passed {ctx.spec.canary.steps}")
    registry.point(CHALLENGER, None, "promoted to champion")
    walk.serve({challenger: 100.0}, {"state": "serving", "champion": challenger, "retired": champion})
    report["vector_space_retired"] = vectors.retire_space(ctx.settings, ctx.pipeline, champion)
    report.update(outcome="promoted", reason=f"v{challenger} passed every step; v{champion} retired")
    # Labels often arrive after the canary: GET /v1/pipelines/<name> shows the A/B as they do.
    report["ab"] = _ab(ctx, champion, challenger, began_canary)
    return _finish(ctx, report)


def _ab(ctx: StepContext, champion: int, challenger: int, since: datetime) -> dict[str, Any]:
    """The A/B of the two versions' labelled answers since the canary began, on the run's metric."""
    return ab_results(ctx.settings, ctx.pipeline, champion, challenger, since=since, spec=ctx.spec)


def refuse_pinned(ctx: StepContext, champion: int, challenger: int) -> None:
    """A pinned pipeline's canary ends skipped before it starts, saying who pinned it, when and why."""
    pin = current_pin(ctx.settings, ctx.pipeline)
    if pin is not None:
        raise StepSkipped(pinned_outcome(pin, champion, challenger))


def hold_if_blocked(ctx: StepContext, walk: Walk, report: dict[str, Any], champion_now: int | None) -> None:
    """Before the passed canary moves the champion: hold it where a pin was set, or the champion
    moved, while it walked (`hold`)."""
    blocked = blocked_promotion(current_pin(ctx.settings, ctx.pipeline), walk.champion, champion_now)
    if blocked is not None:
        hold(ctx, walk, report, champion_now or walk.champion, blocked)


def hold(ctx: StepContext, walk: Walk, report: dict[str, Any], champion: int, reason: str) -> NoReturn:
    """A challenger that passed every step but may not become champion (a pin set, or the champion
    moved by a person while it walked): the champion serves alone again, the challenger keeps its
    alias and its space, the step ends skipped with the reason."""
    walk.serve({champion: 100.0}, {"state": "held", "champion": champion, "held": walk.challenger, "reason": reason})
    report.update(outcome="held", reason=f"{reason}: v{walk.challenger} passed the canary and stays challenger")
    _finish(ctx, report)
    raise StepSkipped(f"{report['reason']}; v{champion} stays champion")


def alert_rollback(ctx: StepContext, report: dict[str, Any]) -> None:
    """A challenger rolled back (or rejected after its shadow run): tell Alertmanager, where the
    settings name one (never fails the step)."""
    if report.get("outcome") in ("rolled_back", "rejected"):
        alert = rollback_alert(
            ctx.pipeline, report["challenger"], report["champion"], report["reason"], datetime.now(UTC)
        )
        alerts.send(ctx.settings, [alert])


def _finish(ctx: StepContext, report: dict[str, Any]) -> dict[str, Any]:
    alert_rollback(ctx, report)
    report["endpoint"] = endpoint(ctx.settings, ctx.pipeline)
    if report["steps"]:
        report["plot"] = ctx.storage.write_bytes(ctx.key("report.png"), plot(report))
    report["report"] = write_json(ctx.storage, ctx.key("report.json"), report)
    write_json(ctx.storage, ctx.key("manifest.json"), report)
    return report
