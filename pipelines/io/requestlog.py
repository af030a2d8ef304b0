"""The request log (`inference_requests`) joined with the delayed labels (`labels`).

A label belongs to a prediction by its request id, or, when it has none, to the latest prediction
served to its entity at or before the time the outcome was observed. Shadow answers and failed
requests never count: the A/B compares what clients were given, and served traffic becomes
training data (`feedback`) with the features exactly as they were served, at the instant served,
except the answers scored outside the data contract (`off_contract`: an unknown category under
`serving.unknown_categories: score`), which never train a model. The live metric (the page's and
the drift check's) also counts the labels of published batch predictions (`labelled(batch=True)`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipelines.core.settings import Settings, spec_for
from pipelines.io.db import connect
from pipelines.io.registry import version_thresholds
from pipelines.ml.abtest import compare
from pipelines.ml.shadow import LogRow

if TYPE_CHECKING:
    from pipelines.core.spec import PipelineSpec

LABELLED_SQL = """
SELECT r.model_version, r.score, l.label, r.created_at, l.entity_id, r.features, r.probabilities, r.off_contract,
    r.request_id
FROM labels l
JOIN LATERAL (
    (SELECT model_version, score, created_at, features, probabilities, off_contract, request_id
    FROM inference_requests r
    WHERE r.pipeline = l.pipeline AND r.entity_id = l.entity_id AND NOT r.shadow AND r.status = 'ok'
      AND (l.request_id IS NULL OR r.request_id = l.request_id)
      AND (l.request_id IS NOT NULL OR r.created_at <= l.observed_at)
      AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s)
      AND (%(until)s::timestamptz IS NULL OR r.created_at < %(until)s)
    ORDER BY r.created_at DESC LIMIT 1)
    UNION ALL
    (SELECT b.version, b.score, b.as_of, NULL::jsonb,
        CASE WHEN b.probabilities IS NOT NULL THEN ARRAY(
            SELECT (b.probabilities ->> c.name)::real FROM unnest(%(classes)s::text[]) WITH ORDINALITY c(name, n)
            ORDER BY c.n) END,
        NULL::text, NULL::uuid
    FROM batch_runs br
    JOIN batch_predictions b ON b.pipeline = br.pipeline AND b.run_id = br.run_id AND b.entity_id = l.entity_id
    WHERE %(batch)s AND l.request_id IS NULL AND br.pipeline = l.pipeline AND br.published_at IS NOT NULL
      AND b.as_of <= l.observed_at AND br.published_at <= l.observed_at
      AND (%(since)s::timestamptz IS NULL OR b.as_of >= %(since)s)
      AND (%(until)s::timestamptz IS NULL OR b.as_of < %(until)s)
    ORDER BY b.as_of DESC, br.published_at DESC LIMIT 1)
    ORDER BY created_at DESC LIMIT 1
) r ON true
WHERE l.pipeline = %(pipeline)s AND (%(versions)s::int[] IS NULL OR r.model_version = ANY(%(versions)s))
"""
"""Each label with the prediction it scores: the latest served answer to its entity at or before
the outcome was observed (or the one its request id names) and, where `batch` is true, the latest
batch prediction of that entity published before then, whichever is newer (a batch row's instant
is its `as_of`; a run published after the outcome, a backfill, never takes its label; a
multiclass batch row's probabilities in the order of `classes`). A batch row has no
features and no request id: it is never training data and never matches a label that names a
request."""


def _query(pipeline: str, versions: list[int] | None, since: datetime | None, until: datetime | None) -> dict[str, Any]:
    """LABELLED_SQL's parameters for the served predictions alone."""
    return {"pipeline": pipeline, "versions": versions, "since": since, "until": until, "batch": False, "classes": []}


def labelled(
    settings: Settings,
    pipeline: str,
    versions: list[int] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: bool = False,
) -> list[tuple[int, Any, float]]:
    """(version, score, label) of the served predictions that have a label (with `batch`, and of
    the published batch predictions); a multiclass model's score is every class's probability (a
    list, in the classes' order) and its label the class's index."""
    query = _query(pipeline, versions, since, until)
    if batch:
        query.update(batch=True, classes=list(spec_for(settings, pipeline).classes or []))
    with connect(settings) as conn:
        rows = conn.execute(LABELLED_SQL, query).fetchall()
    return [(int(v), list(p) if p is not None else float(s), float(y)) for v, s, y, _, _, _, p, _, _ in rows]


def feedback(settings: Settings, pipeline: str, since: datetime | None, until: datetime) -> list[dict[str, Any]]:
    """The labelled served predictions in `(since, until]`: entity, the instant served, the
    features as served and the label; one row per entity and instant."""
    with connect(settings) as conn:
        rows = conn.execute(LABELLED_SQL, _query(pipeline, None, since, until)).fetchall()
    out: dict[tuple[str, datetime], dict[str, Any]] = {}
    for _, _, label, served_at, entity, features, _, off_contract, _ in rows:
        if since is not None and served_at <= since:
            continue  # the window is (since, until]; the shared query's lower bound is inclusive
        if off_contract is not None:
            continue  # scored outside the contract: never training data
        out[(entity, served_at)] = {"entity_id": entity, "served_at": served_at, "label": label, "features": features}
    return list(out.values())


def ab_results(
    settings: Settings,
    pipeline: str,
    champion: int,
    challenger: int,
    since: datetime | None = None,
    roles: tuple[str, str] = ("champion", "challenger"),
    spec: PipelineSpec | None = None,
) -> dict[str, Any]:
    """The A/B comparison of two served versions from the labels that arrived for them (`roles`:
    what the result calls them), on the primary metric of `spec` (a run's, where the run chose
    pr_auc for a rare positive class) or of the pipeline's spec as written."""
    spec = spec or spec_for(settings, pipeline)
    rows = labelled(settings, pipeline, [champion, challenger], since)
    thresholds = decided_at(settings, spec, [champion, challenger])
    return compare(
        spec.evaluation, rows, champion, challenger, kind=spec.label.kind, roles=roles, thresholds=thresholds
    )


def decided_at(settings: Settings, spec: PipelineSpec, versions: list[int]) -> dict[int, float]:
    """The thresholds these versions decided at, read from the registry only where the primary
    metric depends on them (a binary label judged by F1)."""
    if spec.label.kind != "binary" or spec.evaluation.primary_metric != "f1":
        return {}
    return version_thresholds(settings, spec.name, versions)


def served_since(
    settings: Settings, pipeline: str, since: float
) -> list[tuple[int, str, float | None, float, str | None]]:
    """(version, status, score, latency_ms, predicted class) of the predictions served (not
    shadow) since a Unix time (the class: a multiclass model's, else None)."""
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT model_version, status, score, latency_ms, predicted_class FROM inference_requests"
            " WHERE pipeline = %s AND NOT shadow AND created_at >= to_timestamp(%s)",
            (pipeline, since),
        ).fetchall()
    return [(int(v), s, sc, lat, c) for v, s, sc, lat, c in rows]


def shadow_count(settings: Settings, pipeline: str, version: int, since: float) -> int:
    """The answers `version` gave as the shadow since a Unix time (one per instance)."""
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT count(*) FROM inference_requests WHERE pipeline = %s AND shadow AND model_version = %s"
            " AND created_at >= to_timestamp(%s)",
            (pipeline, version, since),
        ).fetchone()
    return int(row[0]) if row else 0


def shadow_rows(settings: Settings, pipeline: str, champion: int, shadow: int, since: float) -> list[LogRow]:
    """The champion's served answers and the shadow's copies of them since a Unix time."""
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT request_id, entity_id, model_version, shadow, status, score, latency_ms, predicted_class,"
            " probabilities FROM inference_requests WHERE pipeline = %s AND created_at >= to_timestamp(%s)"
            " AND ((model_version = %s AND NOT shadow) OR (model_version = %s AND shadow))",
            (pipeline, since, champion, shadow),
        ).fetchall()
    return [
        LogRow(str(q), str(e), int(v), bool(sh), st, sc, float(lat), c, list(p) if p is not None else None)
        for q, e, v, sh, st, sc, lat, c, p in rows
    ]


def labels_of_served(settings: Settings, pipeline: str, version: int, since: datetime) -> dict[tuple[str, str], float]:
    """The labels that arrived for the predictions `version` served since `since`, by (request id,
    entity id): a shadow's copy of the same request shares them."""
    with connect(settings) as conn:
        rows = conn.execute(LABELLED_SQL, _query(pipeline, [version], since, None)).fetchall()
    return {(str(row[8]), str(row[4])): float(row[2]) for row in rows}
