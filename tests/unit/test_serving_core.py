from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pipelines.core.spec import Canary
from pipelines.steps.canary import figures, judge, plan_weights
from serving.config import ServingArgs, VersionConfig
from serving.http import PredictRequest, validation_detail
from serving.router import bucket, version_for


def _args(*versions: VersionConfig) -> ServingArgs:
    return ServingArgs(
        pipeline="churn", model_name="mlcycle-churn", entity_key="customer_id", features=["a"], versions=list(versions)
    )


def test_routing_is_sticky_weighted_and_monotone() -> None:
    ids = [str(i) for i in range(20_000)]
    assert all(0 <= bucket(i) < 1 for i in ids[:100])
    five = {i for i in ids if version_for(i, {1: 95, 2: 5}) == 2}
    quarter = {i for i in ids if version_for(i, {1: 75, 2: 25}) == 2}
    assert abs(len(five) / len(ids) - 0.05) < 0.01
    assert abs(len(quarter) / len(ids) - 0.25) < 0.015
    assert five <= quarter  # entities on the canary stay on it as it grows
    assert {version_for("42", {1: 50, 2: 50}) for _ in range(10)} == {version_for("42", {1: 50, 2: 50})}
    assert version_for("x", {1: 0, 2: 100}) == 2
    with pytest.raises(ValueError, match="no version has traffic"):
        version_for("x", {1: 0})


def test_serving_args_validate_weights() -> None:
    args = _args(
        VersionConfig(version=1, weight=80), VersionConfig(version=2, weight=20), VersionConfig(version=3, shadow=True)
    )
    assert args.weights() == {1: 80, 2: 20}
    assert args.shadow() == 3
    assert args.fallback(2) == 1
    assert args.route_prefix == "/v1/pipelines/churn"
    with pytest.raises(ValidationError, match="add up to 100"):
        _args(VersionConfig(version=1, weight=80))
    with pytest.raises(ValidationError, match="takes no weight"):
        _args(VersionConfig(version=1, weight=100), VersionConfig(version=2, weight=5, shadow=True))
    with pytest.raises(ValidationError, match="each version appears once"):
        _args(VersionConfig(version=1, weight=50), VersionConfig(version=1, weight=50))


def test_validation_detail_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        PredictRequest.model_validate({"instances": [{"entity_id": 1}, {"entity_id": [1], "extra": 2}]})
    fields = {d["field"] for d in validation_detail(err.value)}
    assert "instances[1].extra" in fields
    assert any(f.startswith("instances[1].entity_id") for f in fields)


def test_figures_and_judgement() -> None:
    rows = [(1, "ok", 0.1, 10.0)] * 100 + [(2, "ok", 0.12, 12.0)] * 40 + [(2, "error", None, 30.0)] * 10
    f = figures(rows)
    assert f[1]["requests"] == 100 and f[1]["error_rate"] == 0
    assert f[2]["errors"] == 10 and f[2]["error_rate"] == pytest.approx(0.2)
    cfg = Canary(
        steps=[10, 100], dwell_s=5, min_requests=30, max_error_rate=0.05, max_p99_latency_ms=100, max_score_shift=0.1
    )
    decision, reasons = judge(cfg, f[1], f[2], final=False)
    assert decision == "rollback" and "error rate 20.00%" in reasons[0]
    healthy = figures([(2, "ok", 0.12, 12.0)] * 40)[2]
    assert judge(cfg, f[1], healthy, final=False)[0] == "wait"
    assert judge(cfg, f[1], healthy, final=True)[0] == "advance"
    few = figures([(2, "ok", 0.12, 12.0)] * 5)[2]
    assert judge(cfg, f[1], few, final=False)[0] == "wait"
    assert judge(cfg, f[1], few, final=True)[0] == "rollback"
    assert judge(cfg, f[1], None, final=True) == ("rollback", ["the challenger received no traffic in this step"])
    shifted = figures([(2, "ok", 0.5, 12.0)] * 40)[2]
    decision, reasons = judge(cfg, f[1], shifted, final=True)
    assert decision == "rollback" and "mean score moved" in reasons[0]
    slow = figures([(2, "ok", 0.12, 500.0)] * 40)[2]
    assert "p99" in judge(cfg, f[1], slow, final=False)[1][0]
    # a step that ends with few requests but errors among them rolls back for the errors
    two_errors = figures([(2, "ok", 0.12, 12.0)] * 3 + [(2, "error", None, 1000.0)] * 2)[2]
    assert judge(cfg, f[1], two_errors, final=False)[0] == "wait"
    decision, reasons = judge(cfg, f[1], two_errors, final=True)
    assert decision == "rollback" and "error rate 40.00%" in reasons[0]
    assert plan_weights(1, 2, 25) == {1: 75.0, 2: 25.0}


def test_a_regression_canary_measures_the_score_shift_in_the_champions_standard_deviations() -> None:
    cfg = Canary(steps=[100], min_requests=10, max_score_shift=0.25)
    values = [100.0, 140.0, 160.0, 200.0] * 100  # mean 150, std 36
    champion = figures([(1, "ok", v, 5.0) for v in values])[1]
    near = figures([(2, "ok", v + 5.0, 5.0) for v in values])[2]  # 5 units: 0.14 standard deviations
    assert judge(cfg, champion, near, final=True, kind="regression")[0] == "advance"
    assert judge(cfg, champion, near, final=True)[0] == "rollback"  # as a probability, 5 is far
    far = figures([(2, "ok", v + 20.0, 5.0) for v in values])[2]
    decision, reasons = judge(cfg, champion, far, final=True, kind="regression")
    assert decision == "rollback" and "0.555 standard deviations" in reasons[0]


def test_canary_plot_is_a_png() -> None:
    from pipelines.steps.canary import plot

    report = {
        "steps": [
            {
                "percent": 5,
                "figures": {
                    "champion": {"error_rate": 0.0, "p99_ms": 10.0},
                    "challenger": {"error_rate": 0.1, "p99_ms": 30.0},
                },
            }
        ]
    }
    assert plot(report).startswith(b"\x89PNG")


def _flaky_ray(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[str]:
    import ray
    from ray import serve

    from serving import deploy

    calls: list[str] = []

    def init(address: str, **_: object) -> None:
        calls.append(address)
        if len(calls) <= failures:
            raise ConnectionError("Starting Ray client server failed")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(serve, "start", lambda **_: None)
    monkeypatch.setattr(deploy.time, "sleep", lambda _: None)
    return calls


def test_a_flaky_ray_client_start_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.core.settings import Settings
    from serving.deploy import CONNECT_ATTEMPTS, connect

    calls = _flaky_ray(monkeypatch, failures=CONNECT_ATTEMPTS - 1)
    connect(Settings(ray_address="ray://ray-head:10001"))
    assert calls == ["ray://ray-head:10001"] * CONNECT_ATTEMPTS


def test_ray_client_failures_stay_retryable_and_a_missing_local_head_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines.core.errors import SettingsError
    from pipelines.core.settings import Settings
    from serving.deploy import CONNECT_ATTEMPTS, connect

    calls = _flaky_ray(monkeypatch, failures=99)
    with pytest.raises(ConnectionError, match=f"failed {CONNECT_ATTEMPTS} times"):  # Airflow retries the task
        connect(Settings(ray_address="ray://ray-head:10001"))
    calls.clear()
    with pytest.raises(SettingsError, match="mlcycle serve start"):  # no retry: nothing will start it
        connect(Settings(ray_address="127.0.0.1:6380"))
    assert calls == ["127.0.0.1:6380"]


def test_gpu_serving_asks_ray_for_a_gpu_and_says_when_it_scores_on_the_cpu() -> None:
    from pipelines.core.spec import parse_spec
    from serving.deploy import serving_args
    from serving.deployments import actor_resources
    from serving.versions import gpu_fallback
    from tests.specs import churn_spec_dict

    spec = parse_spec(churn_spec_dict(merge=True, serving={"gpus": 0.5}))
    args = serving_args(spec, [], "mlcycle-churn")
    assert args.gpus == 0.5
    assert actor_resources(args.replica_cpus, args.gpus) == {"num_cpus": 0.25, "num_gpus": 0.5}
    assert actor_resources(1.0, 0.0) == {"num_cpus": 1.0}  # a CPU replica never asks for a GPU
    assert gpu_fallback(0.5, ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    assert gpu_fallback(0.0, ["CPUExecutionProvider"]) is None
    why = gpu_fallback(1.0, ["CPUExecutionProvider"])
    assert why is not None and "scoring on the CPU" in why and "onnxruntime-gpu" in why


def test_a_multiclass_canary_judges_the_shift_in_the_predicted_classes_shares() -> None:
    from pipelines.steps.canary import class_shift

    cfg = Canary(steps=[100], min_requests=10, max_score_shift=0.2)
    champion = figures([(1, "ok", 0.9, 5.0, c) for c in ["red", "white", "rose", "red"] * 10])[1]
    assert champion["class_shares"] == {"red": 0.5, "rose": 0.25, "white": 0.25}
    same_mix = figures([(2, "ok", 0.6, 5.0, c) for c in ["white", "red", "red", "rose"] * 10])[2]
    # the mean score moved by 0.3, but a multiclass canary judges what was predicted
    assert judge(cfg, champion, same_mix, final=True, kind="multiclass")[0] == "advance"
    all_red = figures([(2, "ok", 0.9, 5.0, "red")] * 40)[2]
    decision, reasons = judge(cfg, champion, all_red, final=True, kind="multiclass")
    assert decision == "rollback" and "shares moved by 0.500 (total variation distance" in reasons[0]
    assert class_shift({"a": 1.0}, {"b": 1.0}) == 1.0 and class_shift({"a": 0.5, "b": 0.5}, {"b": 0.5, "a": 0.5}) == 0


def test_a_binary_canary_with_rare_positives_judges_the_decisions_not_the_scores() -> None:
    """A challenger trained with balanced class weights scores a 3 % class near 0.4 where the
    unweighted champion scores it near 0.03; each decides at its own threshold, and alike."""
    cfg = Canary(steps=[100], min_requests=10, max_score_shift=0.2)
    decisions = ["1"] * 3 + ["0"] * 97
    champion = figures([(1, "ok", 0.03, 5.0, d) for d in decisions])[1]
    weighted = figures([(2, "ok", 0.4, 5.0, d) for d in decisions[::-1]])[2]
    assert champion["class_shares"] == {"1": 0.03, "0": 0.97}
    assert judge(cfg, champion, weighted, final=True, kind="binary")[0] == "advance"
    flags_all = figures([(2, "ok", 0.4, 5.0, "1")] * 100)[2]  # decides 1 for everyone
    decision, reasons = judge(cfg, champion, flags_all, final=True, kind="binary")
    assert decision == "rollback" and "shares moved by 0.970" in reasons[0]
    # a champion from before thresholds logged no decision: it decided at the spec's fixed threshold
    older = figures([(1, "ok", 0.03, 5.0, None)] * 100 + [(2, "ok", 0.4, 5.0, d) for d in decisions], decide_at=0.5)
    assert older[1]["class_shares"] == {"0": 1.0}
    assert judge(cfg, older[1], older[2], final=True, kind="binary")[0] == "advance"
    undecided = figures([(2, "ok", 0.4, 5.0)] * 100)[2]  # nothing to decide with: the mean score
    decision, reasons = judge(cfg, champion, undecided, final=True, kind="binary")
    assert decision == "rollback" and "mean score moved by 0.370" in reasons[0]


def test_a_shift_that_a_small_step_cannot_tell_from_noise_does_not_roll_back() -> None:
    """The champion decides positive for 26 % of a step's answers, the challenger for 4 %: a 0.22
    move. On 70 answers each its 95 % lower bound (about 0.13) is not over a 0.2 limit: that
    much can be sampling noise. On 2000 answers each the bound is over it: it really moved."""
    cfg = Canary(steps=[100], min_requests=50, max_score_shift=0.2)

    def step(n: int, positive_share: float, version: int) -> dict[str, Any]:
        k = round(n * positive_share)
        return figures([(version, "ok", 0.3, 5.0, "1")] * k + [(version, "ok", 0.1, 5.0, "0")] * (n - k))[version]

    decision, reasons = judge(cfg, step(70, 0.26, 1), step(70, 0.04, 2), final=True)
    assert decision == "advance", reasons
    decision, reasons = judge(cfg, step(2000, 0.26, 1), step(2000, 0.04, 2), final=True)
    assert decision == "rollback" and "shares moved by 0.220" in reasons[0] and "95 % confidence" in reasons[0]
    # a model that flags everyone is caught at any step size
    assert judge(cfg, step(70, 0.26, 1), step(70, 1.0, 2), final=True)[0] == "rollback"


def test_both_http_apis_answer_errors_in_one_shape() -> None:
    """The serving endpoint and the platform API: `{"error": <code>, "reason", "field"}`, a 422 with
    every field at fault in `detail`, the field paths written by one formatter."""
    import json

    from plugins.mlcycle_plugin import api_error_body
    from serving.http import invalid

    detail = [
        {"field": "instances[0].features.plan", "message": "plan: not a string (7)"},
        {"field": "instances[1].entity_id", "message": "entity_id: must not be empty"},
    ]
    body = json.loads(invalid(detail).body)
    assert body == {
        "error": "invalid_request",
        "reason": "plan: not a string (7) (and 1 more: see detail)",
        "field": "instances[0].features.plan",
        "detail": detail,
    }
    assert set(api_error_body(404, "no pipeline 'x'", "pipeline")) == {"error", "reason", "field"}
    assert api_error_body(422, "r")["error"] == body["error"]
