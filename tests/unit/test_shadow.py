"""A shadow run's comparison and decision (pure): agreement, score shift, latency, the shadow's
errors and refusals, the primary metric on labelled requests, and the canary's gates."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pipelines.core.spec import Canary, Evaluation
from pipelines.ml.shadow import LogRow, agreement, compare, decide, ks, labelled_metric, pairs, psi, render_html

CHAMP, SHADOW = 1, 2
CFG = Canary(mode="shadow", min_requests=20, max_error_rate=0.05, max_p99_latency_ms=100.0, max_score_shift=0.2)


def window(
    n: int = 100,
    shift: float = 0.0,
    flip: float = 0.0,
    refused: int = 0,
    shadow_ms: float = 10.0,
    seed: int = 0,
) -> list[LogRow]:
    """`n` requests of one instance each, answered by the champion and copied to the shadow:
    the shadow's score moved by `shift`, the first `flip` share on the other side of 0.5, the
    first `refused` shadow answers refused."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        score = float(rng.uniform(0.05, 0.95))
        other = min(max(score + shift, 0.0), 1.0)
        if i < flip * n:
            other = 1.0 - score if abs(score - 0.5) > 0.01 else 0.9
        rid = f"req-{i}"
        rows.append(LogRow(rid, str(i), CHAMP, False, "ok", score, 5.0 + i % 7))
        if i < refused:
            rows.append(LogRow(rid, str(i), SHADOW, True, "error", None, shadow_ms))
        else:
            rows.append(LogRow(rid, str(i), SHADOW, True, "ok", other, shadow_ms + i % 3))
    return rows


def test_psi_and_ks_are_zero_for_the_same_scores_and_grow_with_a_shift() -> None:
    a = list(np.random.default_rng(1).uniform(0, 1, 500))
    assert psi(a, a) == pytest.approx(0.0, abs=1e-9) and ks(a, a) == 0.0
    moved = [x + 0.3 for x in a]
    assert psi(a, moved) > 0.25  # PSI's usual "large shift"
    assert ks(a, moved) == pytest.approx(0.3, abs=0.05)
    assert ks([0.0, 0.1], [0.8, 0.9]) == 1.0
    assert psi([], a) is None and ks(a, []) is None
    assert psi([0.5] * 10, [0.5] * 10) == pytest.approx(0.0, abs=1e-9)  # one value: no division by zero


def test_agreement_by_label_kind() -> None:
    def pair(c: float | None, s: float | None, cc: str | None = None, sc: str | None = None) -> tuple[LogRow, LogRow]:
        return LogRow("r", "e", CHAMP, False, "ok", c, 1.0, cc), LogRow("r", "e", SHADOW, True, "ok", s, 1.0, sc)

    binary = [pair(0.2, 0.4), pair(0.6, 0.9), pair(0.45, 0.55), pair(0.7, 0.3)]
    assert agreement(binary, "binary", 0.5, 0.1) == 0.5
    assert agreement(binary, "binary", 0.5 - 1e-9 + 0.1, 0.1) == 0.75  # the threshold decides the class
    # versions that decide at thresholds of their own: their decisions, not one threshold's sides
    decided = [pair(0.03, 0.45, "0", "0"), pair(0.2, 0.6, "1", "1"), pair(0.02, 0.7, "0", "1")]
    assert agreement(decided, "binary", 0.5, 0.1) == pytest.approx(2 / 3)
    older = [pair(0.7, 0.45, None, "1"), pair(0.2, 0.3, None, "0")]  # a champion that logged no decision
    assert agreement(older, "binary", 0.5, 0.1) == 1.0  # its score's side of the spec's threshold
    multi = [pair(None, None, "a", "a"), pair(None, None, "b", "c")]
    assert agreement(multi, "multiclass", 0.5, 0.1) == 0.5
    # regression: within 0.5 champion standard deviations (the champion's scores 0 and 10: std 5)
    regression = [pair(0.0, 2.0), pair(10.0, 13.0)]
    assert agreement(regression, "regression", 0.5, 0.5) == 0.5
    assert agreement([], "binary", 0.5, 0.1) is None


def test_pairs_match_the_same_instance_of_the_same_request_only_when_both_scored() -> None:
    rows = [
        LogRow("a", "1", CHAMP, False, "ok", 0.1, 1.0),
        LogRow("a", "1", SHADOW, True, "ok", 0.2, 1.0),
        LogRow("a", "2", CHAMP, False, "error", None, 1.0),
        LogRow("a", "2", SHADOW, True, "ok", 0.3, 1.0),
        LogRow("b", "1", SHADOW, True, "ok", 0.4, 1.0),  # no champion answer for it in the window
        LogRow("c", "1", SHADOW, False, "ok", 0.5, 1.0),  # version 2 served (not shadow): not a copy
    ]
    assert [(c.request_id, c.entity_id, s.score) for c, s in pairs(rows, CHAMP, SHADOW)] == [("a", "1", 0.2)]


def test_a_faithful_shadow_is_promoted_and_the_figures_say_why() -> None:
    comp = compare(window(), CHAMP, SHADOW, "binary")
    assert comp["shadow_requests"] == 100 and comp["paired"] == 100 and comp["shadow_error_rate"] == 0.0
    assert comp["agreement"] == 1.0 and comp["psi"] == pytest.approx(0.0, abs=1e-9) and comp["ks"] == 0.0
    assert comp["champion"]["p50_ms"] == pytest.approx(8.0) and comp["shadow"]["p99_ms"] == pytest.approx(12.0)
    decision, reasons = decide(CFG, comp, "binary")
    assert decision == "promote", reasons
    assert any("agreement 100.00%" in r for r in reasons)
    assert decide(CFG, comp, "binary", manual_approval=True)[0] == "approval"


def test_a_shadow_that_disagrees_is_rejected_even_with_the_same_mean() -> None:
    comp = compare(window(flip=0.5), CHAMP, SHADOW, "binary")
    assert comp["agreement"] == pytest.approx(0.5, abs=0.02)
    decision, reasons = decide(CFG, comp, "binary")
    assert decision == "reject" and "canary.min_agreement" in reasons[0]


def test_a_shifted_shadow_is_rejected_by_the_canarys_score_shift_gate() -> None:
    comp = compare(window(n=400, shift=0.3), CHAMP, SHADOW, "binary")
    assert comp["psi"] > 0.25 and comp["ks"] > 0.2
    decision, reasons = decide(CFG, comp, "binary")
    assert decision == "reject" and "max_score_shift" in reasons[0]


def test_a_slow_shadow_is_rejected_by_the_canarys_latency_gate() -> None:
    comp = compare(window(shadow_ms=400.0), CHAMP, SHADOW, "binary")
    decision, reasons = decide(CFG, comp, "binary")
    assert decision == "reject" and "shadow p99" in reasons[0]


def test_no_shadow_rows_rejects_and_reports_nothing_paired() -> None:
    rows = [r for r in window() if not r.shadow]
    comp = compare(rows, CHAMP, SHADOW, "binary")
    assert comp["shadow_requests"] == 0 and comp["shadow_error_rate"] is None
    assert comp["agreement"] is None and comp["psi"] is None
    decision, reasons = decide(CFG, comp, "binary")
    assert decision == "reject" and "no traffic" in reasons[0]
    assert "no traffic" in render_html({"pipeline": "p", "champion": 1, "challenger": 2, "comparison": comp,
                                        "decision": decision, "reasons": reasons, "outcome": "rejected"})  # fmt: skip


def test_all_refused_rejects_on_the_error_rate() -> None:
    comp = compare(window(refused=100), CHAMP, SHADOW, "binary")
    assert comp["shadow_error_rate"] == 1.0 and comp["paired"] == 0 and comp["agreement"] is None
    decision, reasons = decide(CFG, comp, "binary")
    assert decision == "reject" and "shadow error rate 100.00%" in reasons[0]


def test_too_few_shadow_answers_reject() -> None:
    comp = compare(window(n=10), CHAMP, SHADOW, "binary")
    decision, reasons = decide(CFG, comp, "binary")
    assert decision == "reject" and "canary.min_requests is 20" in reasons[0]


def test_the_primary_metric_on_labelled_requests() -> None:
    rows = window(n=200, flip=0.3, seed=3)
    matched = pairs(rows, CHAMP, SHADOW)
    labels = {(c.request_id, c.entity_id): float(c.score >= 0.5) for c, _ in matched}  # the champion is right
    cfg = Evaluation(bootstrap_samples=100)
    result = labelled_metric(cfg, matched, labels, CHAMP, SHADOW, "binary")
    assert result["status"] == "ok"
    assert result["champion"]["labelled"] == 200 and result["shadow"]["labelled"] == 200
    assert result["champion"]["value"] == 1.0 and result["shadow"]["value"] < 0.8
    assert result["verdict"] == "shadow worse"
    none = labelled_metric(cfg, matched, {}, CHAMP, SHADOW, "binary")
    assert none["status"] == "insufficient"


def test_the_spec_bounds_a_shadow_window() -> None:
    assert Canary().mode == "weighted"  # today's behaviour by default
    assert Canary(mode="shadow", shadow_requests=50).shadow_requests == 50
    with pytest.raises(ValidationError):
        Canary(mode="shadow", shadow_hours=0)
    with pytest.raises(ValidationError):
        Canary(mode="shadow", shadow_hours=24 * 8)  # a week at most
    with pytest.raises(ValidationError):
        Canary(mode="mirror")  # type: ignore[arg-type]


def test_the_approval_hook_reads_promotion_approval() -> None:
    """`promotion.approval: manual` turns a passing shadow run into `approval`; a spec without a
    `promotion` section (or with `auto`) decides by itself."""
    from types import SimpleNamespace

    from pipelines.core.spec import PipelineSpec
    from pipelines.steps.shadow_run import manual_approval
    from tests.specs import churn_spec_dict

    assert manual_approval(PipelineSpec.model_validate(churn_spec_dict())) is False
    assert manual_approval(SimpleNamespace(promotion=SimpleNamespace(approval="auto"))) is False
    assert manual_approval(SimpleNamespace(promotion=SimpleNamespace(approval="manual"))) is True
