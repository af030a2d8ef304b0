"""The canary step's shadow mode (`canary.mode: shadow`): the challenger beside the champion as the
application's shadow version, which gets a copy of every request and never answers (the champion
keeps 100 % of the answers); the window ends after `canary.shadow_requests` shadow answers or
`canary.shadow_hours`, whichever comes first. Then the request log of the window is compared
(`pipelines.ml.shadow`: agreement, score shift, latency, the shadow's errors and refusals, the
primary metric on the requests whose labels arrived) and decided by the weighted canary's gates:

* promote: the champion alias moves to the challenger (`registry.point`, audited), Serve serves it;
  held instead where a pin was set, or the champion moved, during the window (the step is skipped
  with the reason, as the weighted canary's);
* reject: the shadow is removed, the champion untouched, the challenger's vector space dropped;
* approval (the spec asks a person to sign off, `promotion.approval: manual`): the shadow is
  removed, the champion untouched and the `challenger` alias kept, for the reviewer.

The decision is an audit event (`shadow_decision`, the lifecycle as actor) and a tag on the
challenger's model version (`mlcycle.shadow`); the report is `report.json`, `report.html` and
`report.png` (the step's Report link).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.audit import AuditEvent
from pipelines.core.steering import blocked_promotion
from pipelines.io import audit, vectors
from pipelines.io.registry import CHALLENGER, CHAMPION, Registry
from pipelines.io.requestlog import decided_at, labels_of_served, shadow_count, shadow_rows
from pipelines.io.steering import current_pin
from pipelines.ml.imbalance import fixed_threshold
from pipelines.ml.plots import png_bytes, two_panels
from pipelines.ml.shadow import LogRow, compare, decide, labelled_metric, pairs, render_html

if TYPE_CHECKING:
    from pipelines.steps.canary import Walk

POLL_S = 2.0
TAG = "mlcycle.shadow"


def manual_approval(spec: Any) -> bool:
    """Whether the spec asks a person to sign off before the champion moves
    (`promotion.approval: manual`; a spec without a `promotion` section never does)."""
    return getattr(getattr(spec, "promotion", None), "approval", "auto") == "manual"


def wait_window(walk: Walk, began: float) -> dict[str, Any]:
    """Poll the request log until the shadow has answered `shadow_requests` times or
    `shadow_hours` have passed; how the window ended."""
    cfg = walk.ctx.spec.canary
    deadline = time.monotonic() + cfg.shadow_hours * 3600
    while True:
        seen = shadow_count(walk.ctx.settings, walk.ctx.pipeline, walk.challenger, began)
        if seen >= cfg.shadow_requests:
            return {"ended_by": "shadow_requests", "shadow_answers": seen}
        if time.monotonic() >= deadline:
            return {"ended_by": "shadow_hours", "shadow_answers": seen}
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def comparison(walk: Walk, began: float) -> tuple[dict[str, Any], list[LogRow]]:
    """The window's comparison from the request log, with the A/B on the labels that arrived."""
    ctx, spec = walk.ctx, walk.ctx.spec
    rows = shadow_rows(ctx.settings, ctx.pipeline, walk.champion, walk.challenger, began)
    kind = spec.label.kind
    out = compare(
        rows,
        walk.champion,
        walk.challenger,
        kind,
        fixed_threshold(spec.evaluation.threshold),
        spec.canary.agreement_tolerance,
    )
    labels = labels_of_served(ctx.settings, ctx.pipeline, walk.champion, datetime.fromtimestamp(began, UTC))
    thresholds = decided_at(ctx.settings, spec, [walk.champion, walk.challenger])
    out["labelled"] = labelled_metric(
        spec.evaluation,
        pairs(rows, walk.champion, walk.challenger),
        labels,
        walk.champion,
        walk.challenger,
        kind,
        thresholds,
    )
    return out, rows


def act(walk: Walk, registry: Registry, decision: str, reasons: list[str]) -> dict[str, Any]:
    """Carry the decision out on the registry and Serve; what the report records of it. A promotion
    is held where a pin was set, or the champion moved, while the shadow ran: the champion (as it
    is now) serves alone, the challenger keeps its alias and its space."""
    ctx, champion, challenger = walk.ctx, walk.champion, walk.challenger
    if decision == "promote":
        now = registry.version(CHAMPION)
        blocked = blocked_promotion(current_pin(ctx.settings, ctx.pipeline), champion, now)
        if blocked is not None:
            kept = now or champion
            walk.serve({kept: 100.0}, {"state": "held", "champion": kept, "held": challenger, "reason": blocked})
            why = f"{blocked}: v{challenger} passed its shadow run and stays challenger"
            return {"outcome": "held", "reason": why}
        registry.point(CHAMPION, challenger, "shadow run passed: " + "; ".join(reasons))
        registry.point(CHALLENGER, None, "promoted to champion")
        walk.serve({challenger: 100.0}, {"state": "serving", "champion": challenger, "retired": champion})
        retired = vectors.retire_space(ctx.settings, ctx.pipeline, champion)
        return {"outcome": "promoted", "vector_space_retired": retired}
    state = {"state": "shadow ended", "champion": champion, "shadow": challenger, "decision": decision}
    walk.serve({champion: 100.0}, {**state, "reasons": reasons})
    if decision == "approval":
        return {"outcome": "awaiting_approval"}
    why = "shadow run rejected: " + "; ".join(reasons)
    return {
        "outcome": "rejected",
        "vector_space_dropped": vectors.drop_space(ctx.settings, ctx.pipeline, challenger, why),
    }


def record(walk: Walk, registry: Registry, report: dict[str, Any]) -> None:
    """The decision as an audit event and as a tag on the challenger's model version."""
    ctx, comp = walk.ctx, report["comparison"]
    summary = {
        "decision": report["decision"],
        "outcome": report["outcome"],
        "champion": walk.champion,
        "shadow_requests": comp["shadow_requests"],
        "agreement": comp["agreement"],
        "psi": comp.get("psi"),
        "shadow_error_rate": comp["shadow_error_rate"],
        "report": report.get("report_html"),
    }
    audit.record(
        ctx.settings,
        AuditEvent(
            actor=registry.actor,
            actor_kind="lifecycle",
            action="shadow_decision",
            pipeline=ctx.pipeline,
            version=walk.challenger,
            run_id=ctx.run_id,
            reason=report["reason"][:2000],
            detail=summary,
        ),
    )
    registry.client.set_model_version_tag(registry.name, str(walk.challenger), TAG, json.dumps(summary, default=str))


def plot(rows: list[LogRow], champion: int, shadow: int) -> bytes:
    """The scores of both on the window's requests, and their latencies, as PNG."""
    fig, (a, b) = two_panels(10, 4)
    for label, version, is_shadow in (("champion", champion, False), ("shadow", shadow, True)):
        mine = [r for r in rows if r.version == version and r.shadow == is_shadow]
        scores = [r.score for r in mine if r.score is not None and r.status == "ok"]
        if scores:
            a.hist(scores, bins=20, alpha=0.5, label=f"{label} v{version}")
        latencies = [r.latency_ms for r in mine]
        if latencies:
            b.bar(
                [f"{label} p50", f"{label} p99"],
                [float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))],
            )
    a.set(title="scores on the same requests")
    a.legend()
    b.set(title="latency (ms)")
    return png_bytes(fig, dpi=80)


def shadow_run(walk: Walk, registry: Registry, report: dict[str, Any]) -> dict[str, Any]:
    """The shadow window, its comparison and decision, carried out and recorded; the report."""
    ctx, champion, challenger = walk.ctx, walk.champion, walk.challenger
    cfg = ctx.spec.canary
    began = time.time()
    state = {"state": "shadow", "champion": champion, "shadow": challenger}
    walk.serve({champion: 100.0}, state, shadow=challenger)
    report["mode"] = "shadow"
    report["window"] = {**wait_window(walk, began), "seconds": round(time.time() - began, 1)}
    comp, rows = comparison(walk, began)
    decision, reasons = decide(cfg, comp, ctx.spec.label.kind, manual_approval(ctx.spec))
    report.update(comparison=comp, decision=decision, reasons=reasons, reason="; ".join(reasons))
    report.update(act(walk, registry, decision, reasons))
    report["ab"] = comp["labelled"]  # the primary metric of both on the same labelled requests
    report["plot"] = ctx.storage.write_bytes(ctx.key("report.png"), plot(rows, champion, challenger))
    report["report_html"] = ctx.storage.write_bytes(ctx.key("report.html"), render_html(report).encode())
    record(walk, registry, report)
    return report
