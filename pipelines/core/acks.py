"""What the ingress replicas say of a published generation of serving arguments, and when a
deploy has heard enough of it. Pure: `pipelines.io.servingargs` sends and receives them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Ack:
    """A replica's word on a generation: `seen` (it follows it), `applied`, or `failed` (with why)."""

    pipeline: str
    generation: int
    replica: str
    state: str
    error: str = ""

    def payload(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def parse(cls, payload: str) -> Ack | None:
        """The ack a notification carries, or None for anything else."""
        try:
            found = cls(**json.loads(payload))
        except (ValueError, TypeError):
            return None
        return found if found.state in ("seen", "applied", "failed") else None


class DeployFailed(RuntimeError):
    """A replica could not apply the published arguments (a version that does not load)."""


@dataclass
class AckTally:
    """The acks of one pipeline's generation `generation` (or a later one, which replaces it)."""

    pipeline: str
    generation: int
    seen: set[str] = field(default_factory=set)
    applied: set[str] = field(default_factory=set)

    def add(self, ack: Ack | None) -> None:
        """Count `ack`; `DeployFailed` where a replica failed to apply this generation."""
        if ack is None or ack.pipeline != self.pipeline or ack.generation < self.generation:
            return
        self.seen.add(ack.replica)
        if ack.state == "failed" and ack.generation == self.generation:
            raise DeployFailed(f"{self.pipeline}: replica {ack.replica} did not apply it: {ack.error}")
        if ack.state == "applied":
            self.applied.add(ack.replica)

    def followed(self, replicas: int) -> bool:
        """Whether every running replica said it follows the generation."""
        return len(self.seen) >= replicas

    def done(self, replicas: int) -> bool:
        """Whether every running replica serves it (at least one)."""
        return len(self.applied) >= max(replicas, 1)
