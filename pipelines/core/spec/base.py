"""What every section of the spec shares: the frozen, strict model base and the name patterns."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

_NAME = r"^[a-z][a-z0-9_]{1,40}$"
_K8S_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"


class Model(BaseModel):
    """Base of every spec model: frozen, strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")
