"""Property-based fuzzing of an HTTP API from its OpenAPI description, with Schemathesis.

Every operation of the description gets requests generated from its schema (valid ones) and
against it (invalid bodies, parameters of the wrong type, values out of range), a bounded number
of each. What must hold for every answer: no 5xx, and every 4xx is JSON that says why (a non-empty
`reason`, `detail`, `message` or string `error`). Used by the serving and the platform API tests.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FuzzResult:
    tried: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def says_why(body: bytes) -> bool:
    """Whether a 4xx body is JSON naming the problem. Pure."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    reason = (
        data.get("reason")
        or data.get("detail")
        or data.get("message")  # MLflow's scoring protocol (`/invocations`): `error_code` and `message`
        or (data["error"] if isinstance(data.get("error"), str) else "")
    )
    return bool(reason)


def fuzz(
    schema: dict[str, Any],
    base_url: str,
    headers_for: dict[str, dict[str, str]] | None = None,
    examples: int = 25,
    skip: tuple[str, ...] = (),
) -> FuzzResult:
    """Fuzz every operation of `schema` (an OpenAPI document) at `base_url`. `headers_for` maps a
    method (`GET`, `POST`) to the headers its requests carry (the credentials); operations whose
    `METHOD /path` label is in `skip` are left out. Bounded: `examples` per operation and mode."""
    import schemathesis

    loaded = schemathesis.openapi.from_dict(schema)
    result = FuzzResult()
    for found in loaded.get_all_operations():
        operation = found.ok()
        if operation.label in skip:
            continue
        headers = (headers_for or {}).get(operation.method.upper(), {})
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _probe(operation, mode, base_url, headers, examples, result)
    return result


def _probe(
    operation: Any, mode: Any, base_url: str, headers: dict[str, str], examples: int, result: FuzzResult
) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def probe(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=60)
        result.tried += 1
        result.statuses[response.status_code] += 1
        label = f"{operation.label} ({mode.value}) -> {response.status_code}"
        if response.status_code >= 500:
            result.problems.append(f"{label}: {response.content[:300]!r} for {case.as_curl_command()}")
        elif response.status_code >= 400 and not says_why(response.content):
            result.problems.append(f"{label} without a reason: {response.content[:300]!r}")

    try:
        probe()
    except Unsatisfiable:  # nothing to negate: an operation without parameters or body
        if mode.value == "positive":
            raise
