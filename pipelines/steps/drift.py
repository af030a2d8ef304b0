"""`drift`: the serving champion's recent requests against its training reference.

The window is the last `drift.window_hours` of the request log (served, not shadow, answered by
the champion). It is compared with the training set of the champion's own lifecycle run (its
registry tag `mlcycle.run_id`), and the champion's scores on that set with its scores in the
window:

* Evidently's data drift (`DataDriftPreset`: a test per feature, the method chosen by column
  type and sample size) and the share of drifted features;
* our PSI per feature and for the prediction (the score; a multiclass model's predicted class),
  with KS (numeric) or chi-squared (categorical) beside it: PSI is an effect size that does not
  flag trivial shifts on large windows, which is where p-value tests do;
* where labels arrived, the champion's live primary metric against its evaluation figure (on its
  served answers and its published batch predictions of the window, `as_of` in it);
* the newest published batch run of the window (its `as_of` in it): its scores (a sample) against
  the champion's on the reference, PSI and a test, reported and recorded, not part of the verdict;
* with `embeddings`, drift in the champion's embedding space: how well a logistic regression tells
  its vectors of the served window from those of the reference (cross-validated ROC AUC), counted
  as drift above `embeddings.drift_roc_auc`.

A window with fewer than `drift.min_requests` requests is "insufficient data", never an alarm.
A drift or performance finding asks for retraining unless an earlier check asked less than
`drift.cooldown_hours` ago. The verdict and reasons go to `drift_checks`, the figures to
`model_performance_metrics`, the Evidently report to `report.html`; the drift DAG emits the
retraining Asset event from the result.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.alerts import drift_alert
from pipelines.core.errors import MlcycleError, StepSkipped
from pipelines.io import alerts, vectors
from pipelines.io.batch_history import newest_answers
from pipelines.io.db import connect
from pipelines.io.registry import CHAMPION, alias_version, load_onnx_model, model_name
from pipelines.io.requestlog import labelled
from pipelines.io.storage import read_parquet, write_json
from pipelines.io.tracking import setup_mlflow
from pipelines.ml.imbalance import session_threshold
from pipelines.ml.metrics import HIGHER_IS_BETTER, class_shares, live_metric, tagged_figure
from pipelines.ml.model import CLASS, embed_onnx, embedding_dimension, onnx_session, session_feed
from pipelines.steps.context import StepContext

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.core.settings import Settings
    from pipelines.core.spec import Drift, Evaluation

STEP = "drift"
REFERENCE_ROWS = 20_000
MIN_LABELLED = 30
EPS = 1e-4
PREDICTED = "predicted_class"
UNSEEN = "(unseen)"
"""What the Evidently report shows for every served category its training reference never held:
a value counted as unseen (`serving.unknown_categories: score`, or a column without `allowed`
values) never reaches the report's HTML, where it could carry markup."""


# ----------------------------------------------------------------------------------- pure core
def psi(reference: np.ndarray, current: np.ndarray, categorical: bool, bins: int = 10) -> float:
    """Population stability index of `current` against `reference`: decile bins of the
    reference for numbers, the categories for strings (unseen ones share one bin)."""
    if categorical:
        ref, cur = reference.astype(str), current.astype(str)
        cats = np.unique(ref)
        ref_share = np.array([np.mean(ref == c) for c in cats] + [0.0])
        cur_share = np.array([np.mean(cur == c) for c in cats] + [np.mean(~np.isin(cur, cats))])
    else:
        ref, cur = reference.astype(float), current.astype(float)
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
        ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
        cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    r, c = np.clip(ref_share, EPS, None), np.clip(cur_share, EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def unseen_as_one(reference: pd.DataFrame, current: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """`current` with each categorical value that `reference` does not hold replaced by `UNSEEN`
    (one bin, as `psi` counts them; a null stays null). Pure."""
    out = current.copy()
    for column in categorical:
        known = set(reference[column].dropna().astype(str))
        values = out[column]
        out[column] = values.where(values.isna() | values.astype(str).isin(known), UNSEEN)
    return out


def two_sample_test(reference: np.ndarray, current: np.ndarray, categorical: bool) -> dict[str, float | str]:
    """KS for numbers, chi-squared on the category counts for strings: statistic and p-value."""
    from scipy import stats

    if categorical:
        ref, cur = reference.astype(str), current.astype(str)
        cats = np.union1d(np.unique(ref), np.unique(cur))
        table = np.array([[np.sum(ref == c) for c in cats], [np.sum(cur == c) for c in cats]])
        if len(cats) < 2:
            return {"test": "chi2", "statistic": 0.0, "p_value": 1.0}
        chi2, p, _, _ = stats.chi2_contingency(table)
        return {"test": "chi2", "statistic": float(chi2), "p_value": float(p)}
    res = stats.ks_2samp(reference.astype(float), current.astype(float))
    return {"test": "ks", "statistic": float(res.statistic), "p_value": float(res.pvalue)}


def evidently_columns(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per column of an Evidently DataDriftPreset snapshot (`Snapshot.dict()` with tests): its
    method, score, threshold and whether its drift test failed."""
    out = {}
    for test in snapshot.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        out[params["column"]] = {
            "method": params.get("method"),
            "threshold": params.get("threshold"),
            "drifted": test.get("status") == "FAIL",
        }
    for metric in snapshot.get("metrics", []):
        column = metric.get("config", {}).get("column")
        if column in out:
            out[column]["score"] = metric.get("value")
    return out


def live_performance(
    cfg: Evaluation,
    rows: list[tuple[int, float, float]],
    reference: float | None,
    kind: str = "binary",
    threshold: float | None = None,
) -> dict[str, Any] | None:
    """The champion's primary metric on labelled served predictions (a binary F1 at the threshold
    it decided at), and its drop from the evaluation figure (positive: worse). None without
    enough labels (of both classes, for a binary label)."""
    y = np.array([r[2] for r in rows], dtype=float)
    if len(rows) < MIN_LABELLED or (kind == "binary" and len(np.unique(y)) < 2):
        return None
    metric = live_metric(cfg, kind, threshold)
    value = metric(y, np.array([r[1] for r in rows], dtype=float))
    drop = None
    if reference is not None:
        drop = reference - value if HIGHER_IS_BETTER[cfg.primary_metric] else value - reference
    return {"metric": cfg.primary_metric, "value": value, "reference": reference, "drop": drop, "labelled": len(rows)}


def domain_classifier_auc(reference: np.ndarray, current: np.ndarray, rows: int = 2000, seed: int = 0) -> float:
    """How well a logistic regression tells `current` vectors from `reference` ones: its
    cross-validated ROC AUC on a balanced sample (0.5: indistinguishable, 1.0: apart). Pure."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(seed)
    n = min(len(reference), len(current), rows)
    ref = reference[rng.choice(len(reference), n, replace=False)]
    cur = current[rng.choice(len(current), n, replace=False)]
    x = np.vstack([ref, cur]).astype(np.float64)
    y = np.r_[np.zeros(n), np.ones(n)]
    scores = cross_val_score(LogisticRegression(max_iter=500), x, y, cv=3, scoring="roc_auc")
    return float(np.mean(scores))


def verdict(
    cfg: Drift,
    requests: int,
    features: dict[str, dict[str, Any]],
    prediction_psi: float | None,
    performance: dict[str, Any] | None,
    last_trigger: datetime | None,
    now: datetime,
    embedding: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """status (ok | drift | performance | insufficient_data), retrain, reasons. Embedding drift
    counts where it has a threshold (`embeddings.drift_roc_auc`)."""
    if requests < cfg.min_requests:
        reason = f"{requests} requests in the window, drift.min_requests is {cfg.min_requests}: insufficient data"
        return {"status": "insufficient_data", "retrain": False, "reasons": [reason]}
    counted = {f: v for f, v in features.items() if f not in cfg.ignore}  # drift.ignore: expected drift
    drifted = sorted(f for f, v in counted.items() if v["drifted"])
    expected = sorted(f for f, v in features.items() if f in cfg.ignore and v["drifted"])
    share = len(drifted) / len(counted) if counted else 0.0
    reasons = []
    if share >= cfg.max_drift_share and drifted:
        reasons.append(
            f"{len(drifted)} of {len(counted)} features drifted ({share:.0%}, "
            f"limit {cfg.max_drift_share:.0%}): {drifted}"
        )
    if prediction_psi is not None and prediction_psi > cfg.psi_threshold:
        reasons.append(f"prediction PSI {prediction_psi:.3f} over {cfg.psi_threshold:.3f}")
    if embedding is not None and embedding.get("drifted"):
        reasons.append(
            f"embedding drift: a classifier tells served vectors from training ones with ROC AUC "
            f"{embedding['roc_auc']:.3f} (embeddings.drift_roc_auc {embedding['threshold']:.3f})"
        )
    status = "drift" if reasons else "ok"
    if performance is not None and performance["drop"] is not None and performance["drop"] > cfg.max_performance_drop:
        reasons.append(
            f"live {performance['metric']} {performance['value']:.4f} on {performance['labelled']} labels, "
            f"{performance['drop']:.4f} below the evaluation's {performance['reference']:.4f} "
            f"(limit {cfg.max_performance_drop:.4f})"
        )
        status = "drift" if status == "drift" else "performance"
    retrain = status in ("drift", "performance")
    if retrain and last_trigger is not None and now - last_trigger < timedelta(hours=cfg.cooldown_hours):
        retrain = False
        reasons.append(
            f"cooldown: retraining was asked at {last_trigger.isoformat(timespec='seconds')}, "
            f"less than drift.cooldown_hours ({cfg.cooldown_hours:g}) ago"
        )
    if not reasons:
        reasons.append(f"{len(drifted)} of {len(counted)} features drifted ({share:.0%}); prediction stable")
    return {
        "status": status,
        "retrain": retrain,
        "reasons": reasons,
        "drift_share": share,
        "drifted": drifted,
        "expected_drift": expected,
    }


def feature_figures(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    evidently: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Per feature: Evidently's test, our PSI and KS/chi-squared."""
    out = {}
    for f in numeric + categorical:
        cat = f in categorical
        ref, cur = reference[f].dropna().to_numpy(), current[f].dropna().to_numpy()
        out[f] = {
            "psi": psi(ref, cur, cat),
            **two_sample_test(ref, cur, cat),
            "evidently": evidently.get(f, {}),
        }
    return out


# ------------------------------------------------------------------------------------- I/O
def champion_reference(ctx: StepContext) -> tuple[int, str, tuple[str | None, float | None], bytes]:
    """The serving champion: its version, lifecycle run id, evaluation figure (metric, value) and
    ONNX model (its bytes, checked against the digests recorded at registration)."""
    import mlflow

    setup_mlflow(ctx.settings, ctx.pipeline)
    champion = alias_version(mlflow.MlflowClient(), model_name(ctx.pipeline), CHAMPION)
    if champion is None:
        raise StepSkipped(f"{model_name(ctx.pipeline)} has no champion yet: nothing is served to check")
    run_id = champion.tags.get("mlcycle.run_id")
    if not run_id:
        raise MlcycleError(f"{model_name(ctx.pipeline)} v{champion.version} has no mlcycle.run_id tag")
    figure = tagged_figure(champion.tags.get("mlcycle.primary_metric", ""))
    model = load_onnx_model(ctx.settings, ctx.pipeline, model_name(ctx.pipeline), int(champion.version))
    return int(champion.version), run_id, figure, model


def served_window(
    settings: Settings, pipeline: str, version: int, features: list[str], start: datetime, end: datetime
) -> pd.DataFrame:
    """The champion's served requests in the window: one column per feature, the score and the
    predicted class (a multiclass model's; None for the others)."""
    import pandas as pd

    # the feature names are bound as parameters; the frame names its columns (a contract's column
    # may be any string: interpolated as an alias, one with a space broke the query)
    cols = ", ".join("features->>%s" for _ in features)
    with connect(settings) as conn:
        cur = conn.execute(
            f"SELECT {cols}, score, predicted_class FROM inference_requests"  # noqa: S608 (only %s placeholders are joined)
            " WHERE pipeline = %s AND model_version = %s"
            " AND NOT shadow AND status = 'ok' AND created_at >= %s AND created_at < %s",
            (*features, pipeline, version, start, end),
        )
        return pd.DataFrame(cur.fetchall(), columns=[*features, "score", PREDICTED])


def last_trigger(settings: Settings, pipeline: str, run_id: str) -> datetime | None:
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT max(checked_at) FROM drift_checks WHERE pipeline = %s AND retrain AND run_id <> %s",
            (pipeline, run_id),
        ).fetchone()
    return row[0] if row else None


def run(ctx: StepContext) -> dict[str, Any]:
    import pandas as pd

    spec, cfg = ctx.spec, ctx.spec.drift
    numeric, categorical = spec.model.numeric_features, spec.model.categorical_features
    features = numeric + categorical
    end = datetime.now(UTC)
    start = end - timedelta(hours=cfg.window_hours)
    version, champion_run, (judged_by, reference_metric), model = champion_reference(ctx)
    # the metric the champion was promoted on (pr_auc for a rare positive class, by default)
    evaluation = spec.evaluation.judged_by(judged_by) if judged_by else spec.evaluation
    if judged_by and judged_by != evaluation.primary_metric:  # the spec names another metric since
        reference_metric = None
    current = served_window(ctx.settings, ctx.pipeline, version, features, start, end)
    for f in numeric:
        current[f] = pd.to_numeric(current[f], errors="coerce")
    result: dict[str, Any] = {
        "step": STEP,
        "pipeline": ctx.pipeline,
        "champion": version,
        "reference_run": champion_run,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "requests": len(current),
    }
    rows = labelled(ctx.settings, ctx.pipeline, [version], since=start, until=end, batch=True)
    session, multiclass = onnx_session(model), spec.label.kind == "multiclass"
    performance = live_performance(evaluation, rows, reference_metric, spec.label.kind, session_threshold(session))
    figures: dict[str, dict[str, Any]] = {}
    prediction_psi = None
    reference = None
    if len(current) >= cfg.min_requests:
        reference = scored_reference(ctx, champion_run, session, features, multiclass)
        scored = [*features, "score"]
        shown = unseen_as_one(reference, current[scored], categorical)
        report, evidently = evidently_report(reference[scored], shown, numeric, categorical, cfg.max_drift_share)
        result["report"] = ctx.storage.write_bytes(ctx.key("report.html"), report)
        figures = feature_figures(reference, current, numeric, categorical, evidently)
        for fig in figures.values():  # drifted: Evidently's test failed, or the effect is large
            fig["drifted"] = bool(fig["evidently"].get("drifted")) or fig["psi"] > cfg.psi_threshold
        if spec.embeddings is not None and embedding_dimension(session) is not None:
            result["embedding"] = embedding_drift(session, reference, current, spec.embeddings.drift_roc_auc)
        result["prediction"] = prediction_figures(reference, current, multiclass)
        prediction_psi = result["prediction"]["psi"]
    answers = newest_answers(ctx.settings, ctx.pipeline, version, start, end, REFERENCE_ROWS)
    if answers is not None:  # the newest batch run of the window: its scores against the reference's
        if reference is None:
            reference = scored_reference(ctx, champion_run, session, features, multiclass)
        result["batch"] = batch_drift(reference, *answers, multiclass, cfg.psi_threshold)
    decided = verdict(
        cfg,
        len(current),
        figures,
        prediction_psi,
        performance,
        last_trigger(ctx.settings, ctx.pipeline, ctx.run_id),
        end,
        result.get("embedding"),
    )
    result.update(decided, features=figures, performance=performance)
    record(ctx, result, start, end)
    if result["status"] in ("drift", "performance"):  # found, whether or not it asks for retraining now
        found = drift_alert(ctx.pipeline, version, result["status"], result["reasons"], end)
        alerts.send(ctx.settings, [found])
    if spec.embeddings is not None:  # hourly: a retired champion's space goes when its time is up
        result["vector_spaces_dropped"] = vectors.sweep_retired(
            ctx.settings, ctx.pipeline, spec.embeddings.retain_hours, end
        )
    write_json(ctx.storage, ctx.key("manifest.json"), result)
    return result


def scored_reference(
    ctx: StepContext, champion_run: str, session: Any, features: list[str], multiclass: bool
) -> pd.DataFrame:
    """The champion's training reference (its lifecycle run's train set, at most REFERENCE_ROWS
    rows) with the champion's scores on it (and a multiclass model's predicted class)."""
    reference = read_parquet(ctx.storage, f"{ctx.pipeline}/{champion_run}/features/train.parquet")
    if len(reference) > REFERENCE_ROWS:
        reference = reference.sample(REFERENCE_ROWS, random_state=0)
    scores, *named = session.run(["score", CLASS] if multiclass else ["score"], session_feed(session, reference))
    reference = reference[features].assign(score=np.asarray(scores, dtype=float).reshape(-1))
    reference[PREDICTED] = np.asarray(named[0]).astype(str) if multiclass else None
    return reference


def batch_drift(
    reference: pd.DataFrame, run_id: str, answers: pd.DataFrame, multiclass: bool, threshold: float
) -> dict[str, Any]:
    """A batch run's answers (a sample: `score`, `predicted_class`) against the champion's on its
    training reference: the prediction's figures, drifted above the PSI threshold. Reported and
    recorded; the verdict reads the served window. Pure."""
    figures = prediction_figures(reference, answers, multiclass)
    return {"run_id": run_id, "rows": len(answers), **figures, "drifted": bool(figures["psi"] > threshold)}


def prediction_figures(reference: pd.DataFrame, current: pd.DataFrame, multiclass: bool) -> dict[str, Any]:
    """The prediction's drift: PSI and a test on the score, or on a multiclass model's predicted
    class (with each class's share on both sides); the mean score either way. Pure."""
    column = PREDICTED if multiclass else "score"
    ref, cur = reference[column].to_numpy(), current[column].to_numpy()
    out: dict[str, Any] = {
        "on": "predicted class" if multiclass else "score",
        "psi": psi(ref, cur, multiclass),
        **two_sample_test(ref, cur, multiclass),
        "mean_reference": float(reference["score"].mean()),
        "mean_current": float(current["score"].mean()),
    }
    if multiclass:
        out["shares_reference"], out["shares_current"] = class_shares(ref), class_shares(cur)
    return out


def embedding_drift(
    session: Any, reference: pd.DataFrame, current: pd.DataFrame, threshold: float | None
) -> dict[str, Any]:
    """Drift in the champion's embedding space: its vectors of the training reference against
    those of the served window, told apart by a domain classifier."""
    auc = domain_classifier_auc(embed_onnx(session, reference), embed_onnx(session, current))
    return {
        "method": "domain_classifier",
        "roc_auc": auc,
        "threshold": threshold,
        "drifted": threshold is not None and auc > threshold,
    }


def evidently_report(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str], drift_share: float
) -> tuple[bytes, dict[str, Any]]:
    """Evidently's data drift report on the features and the score: HTML, and per column."""
    import tempfile
    from pathlib import Path

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=[*numeric, "score"], categorical_columns=categorical)
    snapshot = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        snapshot.save_html(str(path))
        html = path.read_bytes()
    return html, evidently_columns(snapshot.dict())


def record(ctx: StepContext, result: dict[str, Any], start: datetime, end: datetime) -> None:
    """The check's row in `drift_checks` and its figures in `model_performance_metrics`."""
    import json

    version, n = result["champion"], result["requests"]
    metrics: list[tuple[str, str | None, float | None]] = [("requests", None, float(n))]
    if "drift_share" in result and result["status"] != "insufficient_data":
        metrics.append(("drift_share", None, result["drift_share"]))
    if "prediction" in result:
        metrics += [
            ("prediction_psi", None, result["prediction"]["psi"]),
            ("mean_score", None, result["prediction"]["mean_current"]),
        ]
    if "embedding" in result:
        metrics.append(("embedding_drift_roc_auc", None, result["embedding"]["roc_auc"]))
    for f, fig in result["features"].items():
        metrics += [("psi", f, fig["psi"]), (f"{fig['test']}_p_value", f, fig["p_value"])]
        if "score" in fig["evidently"]:
            metrics.append((f"evidently_{fig['evidently']['method']}", f, fig["evidently"]["score"]))
    rows = dict.fromkeys((m for m, _, _ in metrics), n)  # the rows each figure was computed on
    if "batch" in result:  # on the batch run's sample, not the served window
        metrics.append(("batch_prediction_psi", None, result["batch"]["psi"]))
        rows["batch_prediction_psi"] = result["batch"]["rows"]
    if result["performance"] is not None:
        live = f"live_{result['performance']['metric']}"
        metrics.append((live, None, result["performance"]["value"]))
        rows[live] = result["performance"]["labelled"]  # the labelled requests only
    with connect(ctx.settings) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO model_performance_metrics (pipeline, model_version, run_id, metric, feature, value,"
            " window_start, window_end, rows) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (pipeline, run_id, metric, feature) DO UPDATE SET value = EXCLUDED.value,"
            " window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end, rows = EXCLUDED.rows",
            [(ctx.pipeline, version, ctx.run_id, m, f, v, start, end, rows[m]) for m, f, v in metrics],
        )
        cur.execute(
            "INSERT INTO drift_checks (pipeline, run_id, model_version, window_start, window_end, requests, status,"
            " retrain, reasons, report_uri) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (pipeline, run_id) DO UPDATE SET model_version = EXCLUDED.model_version,"
            " window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end, requests = EXCLUDED.requests,"
            " status = EXCLUDED.status, retrain = EXCLUDED.retrain, reasons = EXCLUDED.reasons,"
            " report_uri = EXCLUDED.report_uri, checked_at = now()",
            (
                ctx.pipeline,
                ctx.run_id,
                version,
                start,
                end,
                n,
                result["status"],
                result["retrain"],
                json.dumps(result["reasons"]),
                result.get("report"),
            ),
        )
