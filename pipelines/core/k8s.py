"""Kubernetes shapes the spec and the settings share. Pure."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Toleration(BaseModel):
    """A pod toleration, with every field Kubernetes accepts (`tolerationSeconds` too)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    key: str | None = Field(default=None, description="the taint's key; default: every key (with `Exists`)")
    operator: Literal["Exists", "Equal"] = Field(
        default="Exists", description="`Exists`: any value of the key; `Equal`: the value given"
    )
    value: str | None = Field(default=None, description="the taint's value (with `Equal` only)")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="the taint effect tolerated; default: every effect"
    )
    toleration_seconds: int | None = Field(
        default=None,
        alias="tolerationSeconds",
        description="seconds the pod stays on a node after a NoExecute taint appears; default: for ever",
    )

    @model_validator(mode="after")
    def _as_kubernetes_validates(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("operator Equal needs a key")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies to effect NoExecute only")
        return self

    def manifest(self) -> dict[str, Any]:
        """As it goes into a pod spec."""
        return self.model_dump(by_alias=True, exclude_none=True)


def cpu_threads(quantity: str, available: int | None) -> int:
    """How many compute threads a step with this CPU request should use: the whole CPUs of the
    request (`500m` -> 1, `4` -> 4), no more than the machine has, at least one. Pure."""
    cpus = float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return max(1, min(int(cpus), available or 1))
