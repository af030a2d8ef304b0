"""The spec's `serving.autoscaling` mapped to Ray Serve's `autoscaling_config` (pure logic: the
application is built, not deployed)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from pipelines.core.spec import PipelineSpec
from serving.app import build_app
from serving.config import VersionConfig, autoscaling_config
from serving.deploy import serve_config, serving_args
from serving.deployments import deployment_version
from tests.specs import churn_spec_dict

AUTO = {
    "min_replicas": 2,
    "max_replicas": 5,
    "target_ongoing_requests": 8,
    "upscale_delay_s": 1,
    "downscale_delay_s": 5,
}


def _spec(**serving: Any) -> PipelineSpec:
    return PipelineSpec.model_validate(churn_spec_dict(serving=serving))


def _app(spec: PipelineSpec, weights: dict[int, float]) -> Any:
    versions = [VersionConfig(version=v, weight=w) for v, w in weights.items()]
    return build_app(serving_args(spec, versions, "mlcycle-churn").model_dump())


def test_min_above_max_is_refused_with_both_numbers() -> None:
    with pytest.raises(ValidationError) as err:
        _spec(autoscaling={**AUTO, "min_replicas": 6})
    assert "min_replicas (6) is above max_replicas (5)" in str(err.value)
    with pytest.raises(ValidationError):  # bounds: at least one replica, a positive target
        _spec(autoscaling={**AUTO, "min_replicas": 0})
    with pytest.raises(ValidationError):
        _spec(autoscaling={**AUTO, "target_ongoing_requests": 0})
    with pytest.raises(ValidationError) as err:  # a replica sheds before it would reach the target
        _spec(autoscaling={**AUTO, "target_ongoing_requests": 64}, max_concurrent_requests=64)
    assert "target_ongoing_requests (64) must be below max_concurrent_requests (64)" in str(err.value)


def test_the_spec_maps_to_serves_own_autoscaling_config() -> None:
    spec = _spec(autoscaling=AUTO)
    assert spec.serving.autoscaling is not None
    config = autoscaling_config(spec.serving.autoscaling)
    assert config == {**AUTO, "target_ongoing_requests": 8.0, "upscale_delay_s": 1.0, "downscale_delay_s": 5.0}
    # Serve's own model takes it field for field (a misspelt name would be refused)
    parsed = AutoscalingConfig(**config)
    assert (parsed.min_replicas, parsed.max_replicas, parsed.target_ongoing_requests) == (2, 5, 8.0)
    assert (parsed.upscale_delay_s, parsed.downscale_delay_s, parsed.initial_replicas) == (1.0, 5.0, None)


def test_the_ingress_autoscales_and_without_the_section_keeps_its_fixed_replicas() -> None:
    ingress = _app(_spec(autoscaling=AUTO), {1: 100})._bound_deployment
    auto = ingress._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (2, 5, 8.0)
    fixed = _app(_spec(replicas=3), {1: 100})._bound_deployment
    assert fixed._deployment_config.autoscaling_config is None and fixed.num_replicas == 3


def test_each_versions_deployment_autoscales_too() -> None:
    ingress = _app(_spec(autoscaling=AUTO, version_deployments=True), {1: 60, 2: 40})._bound_deployment
    versions = {name: app._bound_deployment for name, app in ingress.init_kwargs.items()}
    assert set(versions) == {"v1", "v2"}
    for deployment in versions.values():
        assert deployment._deployment_config.autoscaling_config.max_replicas == 5


def test_a_weight_change_or_a_new_autoscaling_bound_keeps_the_replicas() -> None:
    """Serve restarts replicas only when the deployment's version changes: neither the weights
    (user_config) nor the autoscaling bounds are part of it."""
    before = _app(_spec(autoscaling=AUTO), {1: 100})._bound_deployment
    after = _app(_spec(autoscaling={**AUTO, "max_replicas": 8}), {1: 50, 2: 50})._bound_deployment
    assert before.version == after.version
    static = before.init_args[0]
    assert "autoscaling" not in static and deployment_version(static) == before.version


def test_the_serve_config_names_the_ingress_autoscaling_only_where_the_spec_asks() -> None:
    auto, fixed = _spec(autoscaling=AUTO), _spec().model_copy(update={"name": "fixed"})
    apps = {a["name"]: a for a in serve_config([auto, fixed])["applications"]}
    assert apps["churn"]["deployments"] == [{"name": "ingress", "autoscaling_config": autoscaling_config(
        auto.serving.autoscaling)}]  # type: ignore[arg-type]  # fmt: skip
    assert apps["churn"]["args"]["autoscaling"]["max_replicas"] == 5  # what build_app maps
    assert "deployments" not in apps["fixed"] and apps["fixed"]["args"]["autoscaling"] is None
    # `serve deploy` (the Compose stack's head) and a RayService take it: Serve's own schema reads it
    parsed = ServeDeploySchema.model_validate(serve_config([auto, fixed]))
    (ingress,) = next(a for a in parsed.applications if a.name == "churn").deployments
    assert (ingress.name, ingress.autoscaling_config["max_replicas"]) == ("ingress", 5)
