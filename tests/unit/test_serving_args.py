"""A change of weights is published and applied in place by the replicas; only a change of
layout goes through Serve. The pure parts: the layout, the acks, when a deploy has heard enough."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.core.acks import Ack, AckTally, DeployFailed
from pipelines.core.spec import PipelineSpec
from serving.config import ServingArgs, VersionConfig
from serving.deploy import serving_args
from serving.deployments import layout
from tests.specs import churn_spec_dict


def _args(versions: dict[int, float], shadow: int | None = None, **over: Any) -> ServingArgs:
    spec = PipelineSpec.model_validate(churn_spec_dict())
    chosen = [VersionConfig(version=v, weight=w) for v, w in versions.items()]
    chosen += [VersionConfig(version=shadow, shadow=True)] if shadow else []
    return serving_args(spec, chosen, "mlcycle-churn", **over)


def test_weights_shadow_canary_and_batching_keep_the_layout_and_what_serve_holds_changes_it() -> None:
    base = layout(_args({1: 100}))
    assert layout(_args({1: 95, 2: 5})) == base
    assert layout(_args({2: 100}, shadow=1, canary={"state": "canary"}, max_batch_size=8)) == base
    assert layout(_args({1: 100}, replicas=2)) != base
    assert layout(_args({1: 100}, replica_cpus=1.0)) != base
    assert layout(_args({1: 100}, max_concurrent_requests=500)) != base
    # a deployment per version: the versions (and their batch bound) are Serve's, not the ingress's
    apart = layout(_args({1: 100}, version_deployments=True))
    assert apart != base
    assert layout(_args({1: 50, 2: 50}, version_deployments=True)) != apart
    assert layout(_args({1: 100}, version_deployments=True, max_batch_size=8)) != apart


def test_an_ack_is_read_back_from_its_payload_and_anything_else_is_none() -> None:
    ack = Ack("churn", 7, "r1", "applied")
    assert Ack.parse(ack.payload()) == ack
    for payload in ("churn", "{}", '{"pipeline": "churn"}', Ack("churn", 7, "r1", "maybe").payload(), "[1]"):
        assert Ack.parse(payload) is None


def test_a_deploy_is_done_when_every_running_replica_applied_its_generation_or_a_later_one() -> None:
    tally = AckTally("churn", 7)
    for noise in (Ack("wine", 7, "r1", "applied"), Ack("churn", 6, "r1", "applied"), None):
        tally.add(noise)
    assert not tally.followed(2) and not tally.done(2)
    tally.add(Ack("churn", 7, "r1", "seen"))
    tally.add(Ack("churn", 7, "r2", "seen"))
    assert tally.followed(2) and not tally.done(2)
    tally.add(Ack("churn", 7, "r1", "applied"))
    tally.add(Ack("churn", 8, "r2", "applied"))  # a later publish replaced it there
    assert tally.done(2) and not tally.done(3)
    assert not AckTally("churn", 7).done(0)  # a deploy waits for one replica at least


def test_a_replica_that_cannot_apply_the_generation_fails_the_deploy_with_its_reason() -> None:
    tally = AckTally("churn", 7)
    tally.add(Ack("churn", 6, "r1", "failed", "an older one"))  # not this deploy's
    with pytest.raises(DeployFailed, match="replica r1 did not apply it: version 3 does not load"):
        tally.add(Ack("churn", 7, "r1", "failed", "version 3 does not load"))
