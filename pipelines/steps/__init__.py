"""The lifecycle steps: one module per step, each with `run(ctx)` and its pure core, the step
context and the runner (`mlcycle step`). Their table is `pipelines.core.steps.STEPS` (in `core`,
because the spec validates step names against it); it is re-exported here."""

from pipelines.core.steps import STEPS, Step

__all__ = ["STEPS", "Step"]
