"""The serving application's typed arguments: a canary is configuration, not code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.core.spec import Autoscaling, Serving

RETRY_AFTER_S = 1
"""What an overloaded endpoint tells a client to wait (`Retry-After`), from the replica or HAProxy."""


def autoscaling_config(autoscaling: Autoscaling) -> dict[str, Any]:
    """The spec's `serving.autoscaling` as Ray Serve's `autoscaling_config`. No `initial_replicas`:
    Serve starts at `min_replicas`, and a redeploy (a canary's weight change, which only
    reconfigures the replicas) keeps the count the autoscaler reached instead of resetting it. Pure."""
    return {
        "min_replicas": autoscaling.min_replicas,
        "max_replicas": autoscaling.max_replicas,
        "target_ongoing_requests": autoscaling.target_ongoing_requests,
        "upscale_delay_s": autoscaling.upscale_delay_s,
        "downscale_delay_s": autoscaling.downscale_delay_s,
    }


def replica_options(replicas: int, autoscaling: Autoscaling | None) -> dict[str, Any]:
    """How many replicas a deployment runs: Serve's autoscaling where the spec asks for it, else
    `replicas`, fixed. Pure."""
    if autoscaling is None:
        return {"num_replicas": replicas}
    return {"autoscaling_config": autoscaling_config(autoscaling)}


class VersionConfig(BaseModel):
    """One model version in the application: its traffic weight (percent) or shadow role."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    weight: float = Field(default=0.0, ge=0.0, le=100.0)
    shadow: bool = False


class FeatureRuleArgs(BaseModel):
    """What one request-time feature may be (`serving.contract.FeatureRule`), from the data contract."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["number", "integer", "category"]
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None


class ServingArgs(Serving):
    """Everything `build_app` needs: the spec's `serving` section (its fields, bounds and
    descriptions, inherited) and what the application adds. Weights and batching can change at
    run time (user_config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline: str
    model_name: str
    entity_key: str
    features: list[str] = Field(min_length=1)
    # Empty: the registry decides at build time (the `champion` alias takes all traffic); this is
    # what the checked-in Serve config says, so `serve deploy` and KubeRay serve the champion.
    versions: list[VersionConfig] = Field(default_factory=list)
    api_keys_env: str = "MLCYCLE_SERVING_API_KEYS"
    max_instances: int = Field(default=1000, ge=1)
    online_features: bool = True
    log_requests: bool = True
    replica_cpus: float = Field(default=0.25, gt=0.0)
    canary: dict[str, object] = Field(default_factory=dict)
    # The request-time features' contract (empty: read from the pipeline's spec when the ingress starts)
    contract: dict[str, FeatureRuleArgs] = Field(default_factory=dict)
    # Which published generation these are, and the layout they need (`serving.deploy`): 0 and ""
    # for arguments never published (a hand-written Serve config), which follow nothing.
    generation: int = Field(default=0, ge=0)
    layout: str = ""

    @model_validator(mode="after")
    def _weights(self) -> ServingArgs:
        if self.request_deadline_s < self.request_timeout_s:
            raise ValueError("request_deadline_s must be at least request_timeout_s")
        if not self.versions:
            return self
        served = [v for v in self.versions if not v.shadow]
        if not served:
            raise ValueError("at least one version must serve traffic (not shadow)")
        if abs(sum(v.weight for v in served) - 100.0) > 1e-6:
            raise ValueError(f"weights of the served versions must add up to 100, got {sum(v.weight for v in served)}")
        if any(v.shadow and v.weight for v in self.versions):
            raise ValueError("a shadow version takes no weight")
        if len({v.version for v in self.versions}) != len(self.versions):
            raise ValueError("each version appears once")
        return self

    @property
    def route_prefix(self) -> str:
        return f"/v1/pipelines/{self.pipeline}"

    def weights(self) -> dict[int, float]:
        return {v.version: v.weight for v in self.versions if not v.shadow}

    def fallback(self, failed: int) -> int | None:
        """The version that answers when `failed` raises or times out: the heaviest other one."""
        others = [(w, v) for v, w in self.weights().items() if v != failed and w > 0]
        if not others:
            others = [(0.0, v.version) for v in self.versions if v.version != failed and not v.shadow]
        return max(others)[1] if others else None

    def shadow(self) -> int | None:
        return next((v.version for v in self.versions if v.shadow), None)

    def ab_pair(self) -> tuple[int, int] | None:
        """(champion, challenger) to compare on labels: the canary's pair while it runs or after
        it ended (rolled back, or promoted with the old champion retired), else the two heaviest
        served versions. None with one version and no canary history."""
        c = self.canary
        champion = c.get("champion")
        other = c.get("challenger") or c.get("rolled_back")
        if isinstance(champion, int) and isinstance(other, int):
            return champion, other
        if isinstance(champion, int) and isinstance(c.get("retired"), int):
            return int(c["retired"]), champion  # type: ignore[call-overload]
        served = sorted(self.weights().items(), key=lambda vw: (-vw[1], vw[0]))
        return (served[0][0], served[1][0]) if len(served) > 1 else None

    def ab_roles(self) -> tuple[str, str]:
        """What the A/B result calls the two versions of `ab_pair`, as the canary block does: after a
        promotion the old champion is `retired` and the new one `champion`; after a rollback the
        challenger is `rolled_back`."""
        c = self.canary
        if isinstance(c.get("champion"), int) and not c.get("challenger"):
            if isinstance(c.get("rolled_back"), int):
                return ("champion", "rolled_back")
            if isinstance(c.get("retired"), int):
                return ("retired", "champion")
        return ("champion", "challenger")
