"""The platform API's resources (`/api/ml/models`, `deployments`, `experiments`, `features`,
`health`) shaped from the records that hold them: the registry's versions, Serve's answer and the
canary's report, Optuna's trial rows, Feast's registry objects, each service's probe. Pure: the
reads live in `pipelines.io.resources` (and `serving.steer` for what Serve runs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pipelines.core.errors import redact

SERVED_FIELDS = ("versions", "weights", "shadow", "canary")
"""What `/deployments` passes on of the Serve application's own `GET /` (its request-log counters,
batching figures and A/B result stay behind the serving key)."""


def page_of(items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    """One page of a list of `total` items (`items`: the page's own), with the next offset (None on
    the last page): the shape of every list of the platform API."""
    following = offset + limit if offset + limit < total else None
    return {"items": items, "total": total, "limit": limit, "offset": offset, "next_offset": following}


def model_summary(pipeline: str, model: str, versions: list[dict[str, Any]]) -> dict[str, Any]:
    """A registered model in `/models`: how many versions, the newest, and where each alias points
    (`versions`: the API's version records, newest first)."""
    aliases = {a: v["version"] for v in versions for a in v["aliases"]}
    return {
        "pipeline": pipeline,
        "model": model,
        "versions": len(versions),
        "latest": versions[0]["version"] if versions else None,
        "aliases": dict(sorted(aliases.items())),
    }


def file_digests(raw: str | None) -> dict[str, str]:
    """The sha256 of each file of a version from its digest tag (JSON), {} where none was recorded
    or the tag does not read as a mapping of path to digest."""
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def version_lineage(
    record: dict[str, Any],
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    steps: Iterable[tuple[str, str]],
    events: list[dict[str, Any]],
    digests: dict[str, str],
) -> dict[str, Any]:
    """One version's lineage: its record (version, aliases, metric, lineage of run and data), the
    training run's metrics, the lifecycle run's steps (step, latest status), the audit events that
    name the version and the sha256 of its files as sealed at registration."""
    lineage = dict(record.get("lineage") or {})
    lineage.update(
        {
            "feature_service": tags.get("mlcycle.feature_service"),
            "code_version": tags.get("mlcycle.code_version"),
            "training_run": tags.get("mlcycle.training_run"),
            "steps": dict(steps),
        }
    )
    return {
        **record,
        "lineage": lineage,
        "verdict": tags.get("mlcycle.verdict"),
        "verdict_reasons": tags.get("mlcycle.verdict_reasons"),
        "metrics": dict(sorted(metrics.items())),
        "artifacts": {"sealed": bool(digests), "sha256": dict(sorted(digests.items()))},
        "audit": [{**e, "at": iso(e.get("at"))} for e in events],
    }


def iso(value: Any) -> Any:
    """A time as ISO 8601, anything else as it is."""
    return value.isoformat() if isinstance(value, datetime) else value


def deployment_record(
    pipeline: str, served: dict[str, Any] | None, why: str | None, canary: dict[str, Any] | None
) -> dict[str, Any]:
    """What Serve runs for a pipeline now (`served`: the application's own answer, None with `why`
    where it gave none) beside its latest canary (outcome, weights it left, its walk of steps)."""
    now = {k: served.get(k) for k in SERVED_FIELDS} if served is not None else None
    return {"pipeline": pipeline, "serving": now, "unavailable": None if served is not None else why, "canary": canary}


def trial_value(value: float | None, value_type: str | None) -> float | None:
    """A trial's objective as Optuna stores it (`FINITE`, `INF_POS`, `INF_NEG`); JSON has no
    infinity, so an infinite value reads as None."""
    return value if value_type == "FINITE" else None


def study_record(name: str, direction: str, trials: list[dict[str, Any]], training_run: str | None) -> dict[str, Any]:
    """An Optuna study in `/experiments`: its pipeline and lifecycle run (from its name,
    `<pipeline>:<run id>`), direction, trials by number, how many in each state, the best complete
    trial (by the direction) and the training step's MLflow run (each trial's own is its
    `mlflow_run_id`)."""
    pipeline, _, run_id = name.partition(":")
    ordered = sorted(trials, key=lambda t: t["number"])
    states: dict[str, int] = {}
    for t in ordered:
        states[t["state"]] = states.get(t["state"], 0) + 1
    scored = [t for t in ordered if t["state"] == "COMPLETE" and t["value"] is not None]
    sign = -1.0 if direction == "MAXIMIZE" else 1.0
    best = min(scored, key=lambda t: (sign * t["value"], t["number"])) if scored else None
    return {
        "study": name,
        "pipeline": pipeline,
        "run_id": run_id,
        "direction": direction.lower(),
        "states": dict(sorted(states.items())),
        "best": best,
        "mlflow_run_id": training_run,
        "trials": ordered,
    }


def freshness(intervals: list[tuple[datetime, datetime]], ttl_s: float | None, now: datetime) -> dict[str, Any]:
    """A feature view's last materialization (the end of its latest interval), its age at `now` and
    whether it is within the view's TTL (None: never materialized, or a view without TTL)."""
    if not intervals:
        return {"last_materialized": None, "age_s": None, "fresh": None}
    last = max(end for _, end in intervals)
    age = (now - last).total_seconds()
    return {"last_materialized": last.isoformat(), "age_s": round(age, 1), "fresh": age <= ttl_s if ttl_s else None}


def feature_view_record(
    name: str,
    entities: list[str],
    fields: list[tuple[str, str]],
    ttl_s: float | None,
    online: bool,
    intervals: list[tuple[datetime, datetime]],
    now: datetime,
) -> dict[str, Any]:
    """A Feast feature view in `/features`: its entities, features (name, type), TTL, whether it is
    served online, and its freshness."""
    return {
        "name": name,
        "entities": entities,
        "features": [{"name": n, "dtype": t} for n, t in fields],
        "ttl_s": ttl_s,
        "online": online,
        **freshness(intervals, ttl_s, now),
    }


def services_per_version(versions: list[dict[str, Any]], tags: Mapping[int, Mapping[str, str]]) -> dict[str, Any]:
    """The feature service each registered version reads (its `mlcycle.feature_service` tag)."""
    return {str(v["version"]): tags.get(v["version"], {}).get("mlcycle.feature_service") for v in versions}


def scheduler_health(airflow: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether Airflow's scheduler is up, from Airflow's own health record (its heartbeat), and why."""
    found = airflow.get("scheduler") or {}
    beat = found.get("latest_scheduler_heartbeat")
    if found.get("status") == "healthy":
        return True, f"heartbeat at {beat}"
    return False, f"scheduler {found.get('status') or 'unknown'} (last heartbeat {beat or 'never'})"


def service_health(name: str, outcome: tuple[bool, str] | None, seconds: float, bound_s: float) -> dict[str, Any]:
    """One service's row in `/health`: up or down and why (`outcome` None: no answer within
    `bound_s`), with the seconds its probe took."""
    if outcome is None:
        return {"service": name, "up": False, "why": f"no answer within {bound_s:g} s", "seconds": round(seconds, 3)}
    return {"service": name, "up": outcome[0], "why": outcome[1], "seconds": round(seconds, 3)}


def first_line(text: str, limit: int = 200) -> str:
    """The first line of an error's message, credentials redacted, at most `limit` characters."""
    line = redact(text.strip().splitlines()[0] if text.strip() else "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def health_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The platform's health: `up` when every service is, else `degraded` naming the ones down."""
    down = [r["service"] for r in rows if not r["up"]]
    return {"status": "degraded" if down else "up", "down": down, "services": rows}
