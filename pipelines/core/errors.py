"""Typed errors for everything a user can cause.

Each carries a message that says what is wrong and where. The CLI turns them into one readable line
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import re
from typing import Any


class MlcycleError(Exception):
    """Base class of every error a user can cause (bad spec, bad data, bad request)."""

    exit_code = 2


class SpecError(MlcycleError):
    """A pipeline spec is missing, unreadable or invalid."""


class SettingsError(MlcycleError):
    """The environment does not describe a usable installation."""


class SourceError(MlcycleError):
    """The data source cannot be read as the spec describes it (a missing file, a bad query)."""


class SourceDataError(SourceError):
    """The source was read and holds nothing usable (empty, truncated, malformed, no rows in the
    window): rejected data, like a contract's."""

    exit_code = 3


class ServiceUnavailable(MlcycleError):
    """A service the step needs did not answer (S3, PostgreSQL down): worth retrying, so not exit 2
    or 3, which the operator never retries."""

    exit_code = 1


class SourceUnavailable(SourceError, ServiceUnavailable):
    """The data source's service did not answer."""

    exit_code = 1


class DataQualityError(MlcycleError):
    """The data breaks its contract beyond what the spec tolerates."""

    exit_code = 3


class StepInputError(MlcycleError):
    """A step's input from an earlier step is missing: run the earlier step first."""


class InvalidArgument(MlcycleError):
    """A command-line argument is malformed (a run id, a step name)."""


class GateError(MlcycleError):
    """A model fails a hard check (e.g. ONNX/torch parity): it is not registered."""

    exit_code = 3


class ArtifactRefused(MlcycleError):
    """An artifact that must not be loaded: its bytes differ from the sha256 recorded when it was
    written (swapped or changed in storage), no digest was recorded for it, or it is in a format
    that could run code on load (a pickle). Retrying cannot help."""

    exit_code = 3


class StepSkipped(MlcycleError):
    """Not an error: the step has nothing to do (a failed promotion gate). Airflow marks the task
    skipped, and the rest of the run with it."""

    exit_code = 100


def field_path(loc: tuple[int | str, ...], root: str = "<root>") -> str:
    """A pydantic error location as a user writes the field: `instances[0].entity_id`. Pure."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or root


NO_RETRY_EXIT_CODES = frozenset({MlcycleError.exit_code, DataQualityError.exit_code})
"""`mlcycle` exits 2 on a bad spec or argument and 3 on rejected data or a failed hard check:
retrying cannot help, so no runtime retries them."""
SKIP_EXIT_CODE = StepSkipped.exit_code
"""`mlcycle` exits 100 when a step has nothing to do: the task is skipped, and so is the rest of the run."""


STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
}


def error_body(code: str, reason: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """The one error shape of every HTTP API of mlcycle (the serving endpoint, the platform API):
    `{"error": <code>, "reason": <text>, "field": <the request's field at fault, or null>}`, plus
    what an error adds (a 422's `detail`: every field at fault; a request id). Pure."""
    return {"error": code, "reason": reason, "field": field, **extra}


def status_code(status: int) -> str:
    """The error code of an HTTP status without a code of its own (`unavailable` for 503). Pure."""
    return STATUS_CODES.get(status, "bad_request" if 400 <= status < 500 else "internal_error")


_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s'\"]*@")
_PASSWORD_KEYWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s,;]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` (a URL, a message, a connection string) with every credential replaced by `***`:
    a URL's `user:password@` (`redis://:s3cret@redis:6379/0` -> `redis://***@redis:6379/0`) and a
    `password=` keyword (libpq's conninfo, Feast's Redis connection string). Every message that
    formats a connection string goes through it. Pure."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)
    return _PASSWORD_KEYWORD.sub(lambda m: f"{m.group('key')}***", text)
