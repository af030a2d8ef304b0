"""What retention removes, given dates, partitions and lineage. Pure: the `retention` step reads
the state (pipelines/io/retention.py), asks these functions what to drop and does it.

* The request log is partitioned by UTC day (`inference_requests_pYYYYMMDD`). A day is dropped
  once all of it is older than `request_log_days`, so no row younger than that is ever removed and
  a row lives at most one day longer. Partitions are made `partitions_ahead` days ahead, and for
  any kept day whose rows sit in the DEFAULT partition (they are moved there).
* Labels are kept `labels_days`, and never less than the longest window of the pipeline's spec
  that reads them: the feedback lookback (`source.feedback`; no lookback reads every label, so
  none is dropped), the drift window and the shadow window.
* A run's folder (`<pipeline>/<run_id>/` under the artifact root) expires `runs_days` after its
  last write, except a run that registered a version still in the registry, and a run with a step
  running now.
* A batch run's rows of `batch_predictions` go `batch_predictions_days` after its last step,
  except the newest published run's (the latest view's) and a run with a step running now.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from pipelines.core.spec import PipelineSpec

PARTITION_PREFIX = "inference_requests_p"
DEFAULT_PARTITION = "inference_requests_default"
_PARTITION = re.compile(rf"^{PARTITION_PREFIX}(\d{{8}})$")


def partition_name(day: date) -> str:
    """The request log's partition of one UTC day."""
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The day a partition holds, from its name; None for any other table."""
    m = _PARTITION.match(name)
    return datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC).date() if m else None


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """A UTC day as the half-open range `[start, end)` of its partition."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def first_kept_day(now: datetime, keep_days: int) -> date:
    """The oldest day kept: the day of `now - keep_days` (part of it is younger than that)."""
    return (now.astimezone(UTC) - timedelta(days=keep_days)).date()


@dataclass(frozen=True)
class PartitionPlan:
    """What the request log's retention does: partitions to make (moving their rows out of the
    DEFAULT partition), partitions to drop, and the instant before which DEFAULT rows are deleted."""

    create: tuple[date, ...]
    drop: tuple[date, ...]
    default_before: datetime


def plan_partitions(
    existing: Iterable[date], in_default: Iterable[date], now: datetime, keep_days: int, ahead: int
) -> PartitionPlan:
    """The partitions to make and drop, given the day partitions there are (`existing`) and the days
    of the rows in the DEFAULT partition (`in_default`)."""
    have = set(existing)
    first = first_kept_day(now, keep_days)
    today = now.astimezone(UTC).date()
    wanted = {today + timedelta(days=n) for n in range(ahead + 1)} | {d for d in in_default if d >= first}
    return PartitionPlan(
        create=tuple(sorted(wanted - have)),
        drop=tuple(sorted(d for d in have if d < first)),
        default_before=day_bounds(first)[0],
    )


def label_window_days(spec: PipelineSpec) -> float | None:
    """The longest window of a spec that reads labels, in days; None when one reads them all (the
    feedback without a lookback)."""
    windows = [spec.drift.window_hours / 24, spec.canary.shadow_hours / 24]
    if spec.source.feedback:
        if spec.source.lookback_days is None:
            return None
        windows.append(spec.source.lookback_days)
    return max(windows)


def request_log_shortfall(spec: PipelineSpec, request_log_days: int) -> str | None:
    """Why the request log's retention is shorter than a window of the spec that reads it (labels
    join the requests they answer: a label outlives its request uselessly), or None."""
    window = label_window_days(spec)
    if window is not None and window <= request_log_days:
        return None
    longest = "every day (source.feedback without lookback_days)" if window is None else f"{window:g} days"
    return (
        f"{spec.name} reads served requests over {longest}, the request log keeps {request_log_days} days "
        "(MLCYCLE_RETENTION_REQUEST_LOG_DAYS): older labelled requests are gone for feedback and live metrics"
    )


def labels_cutoff(now: datetime, labels_days: int, window_days: float | None) -> datetime | None:
    """The instant before which a pipeline's labels (by `observed_at`) are deleted; None: keep all."""
    if window_days is None:
        return None
    return now - timedelta(days=max(float(labels_days), window_days))


def run_of(key: str, pipeline: str) -> str | None:
    """The run a storage key belongs to (`<pipeline>/<run_id>/<step>/...`); None for other keys."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != pipeline:
        return None
    return parts[1]


@dataclass(frozen=True)
class RunFolder:
    """One run's folder: its keys, their bytes, and when it was last written."""

    run_id: str
    keys: tuple[str, ...]
    bytes: int
    last_write: datetime


def run_folders(pipeline: str, objects: Iterable[tuple[str, int, datetime]]) -> list[RunFolder]:
    """The run folders of a pipeline from its objects `(key, bytes, modified)`, by run id."""
    keys: dict[str, list[str]] = {}
    size: dict[str, int] = {}
    last: dict[str, datetime] = {}
    for key, n, modified in objects:
        run = run_of(key, pipeline)
        if run is None:
            continue
        keys.setdefault(run, []).append(key)
        size[run] = size.get(run, 0) + n
        last[run] = max(last.get(run, modified), modified)
    return [RunFolder(r, tuple(sorted(keys[r])), size[r], last[r]) for r in sorted(keys)]


def expired_runs(
    folders: Iterable[RunFolder], now: datetime, runs_days: int, lineage: set[str], running: set[str]
) -> list[RunFolder]:
    """The run folders to remove: last written more than `runs_days` ago, not in a registered
    version's lineage, with no step running."""
    cutoff = now - timedelta(days=runs_days)
    return [f for f in folders if f.last_write <= cutoff and f.run_id not in lineage and f.run_id not in running]


@dataclass(frozen=True)
class BatchRun:
    """A batch run of a pipeline as retention sees it: when its last step ended (or began, while
    one runs), whether one runs now, and when it was published (None: never)."""

    run_id: str
    last_write: datetime
    running: bool
    published_at: datetime | None


def expired_batch_runs(runs: Iterable[BatchRun], now: datetime, days: int) -> list[str]:
    """The batch runs whose predictions go: last written more than `days` ago, with no step
    running, other than the newest published run (what the latest view shows); a run never
    published only once a run written after it was published (until then its publish task may
    still run, and would show rows that are gone). Pure."""
    runs = list(runs)
    published = [r for r in runs if r.published_at is not None]
    newest = max(published, key=lambda r: (r.published_at, r.run_id)) if published else None
    cutoff = now - timedelta(days=days)

    def expired(r: BatchRun) -> bool:
        if r.running or r.last_write > cutoff or (newest is not None and r.run_id == newest.run_id):
            return False
        return r.published_at is not None or (newest is not None and newest.last_write > r.last_write)

    return sorted(r.run_id for r in runs if expired(r))
