"""`evaluate`: the challenger (this run's best model) against the champion on the same test set.

Both models are scored through ONNX Runtime on raw columns, exactly as they would be served.
Overall and per-slice metrics, the kind's trivial model on the same rows (`metrics.baseline`: the
class prior, the majority class, the training mean; with `evaluation.beat_baseline` the challenger
must beat it), a paired bootstrap confidence interval of the primary metric's
difference, the ONNX latency per row, the challenger's global importances (`importance`: the
primary metric's drop when a feature is shuffled), and the spec's gates give a verdict with reasons. The report
(JSON, and HTML with a ROC curve and a calibration plot for a binary label, the confusion matrix
and each class's F1 for a multiclass one, predicted against actual and the residuals for a
regression one) is logged to the training run in MLflow,
which also gets the verdict as the tag `mlcycle.verdict`.
"""

from __future__ import annotations

import base64
import html
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.io.artifacts import read_artifact
from pipelines.io.registry import CHAMPION, alias_version, load_onnx_model, model_name
from pipelines.io.storage import read_parquet, write_json
from pipelines.io.tracking import setup_mlflow
from pipelines.ml.imbalance import fixed_threshold, session_threshold
from pipelines.ml.importance import permutation_importances
from pipelines.ml.metrics import (
    HIGHER_IS_BETTER,
    baseline,
    bootstrap_difference,
    class_f1,
    comparison,
    confusion,
    encode_label,
    gate,
    metric_functions,
    overall,
    slices,
    worse_slices,
)
from pipelines.ml.model import onnx_session, predict_onnx, session_feed
from pipelines.ml.plots import png_bytes, two_panels
from pipelines.steps.context import StepContext

if TYPE_CHECKING:
    import pandas as pd

STEP = "evaluate"


def onnx_latency_ms(session: Any, df: pd.DataFrame, repeats: int = 200) -> float:
    """Median wall time of the model scoring one row (inputs prepared beforehand), in ms."""
    feeds = [session_feed(session, df.iloc[[i % len(df)]]) for i in range(repeats)]
    times = []
    for feed in feeds:
        t = time.perf_counter()
        session.run(["score"], feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def plots_png(
    y: np.ndarray, scores: dict[str, np.ndarray], kind: str = "binary", classes: list[str] | None = None
) -> str:
    """A ROC curve and a calibration plot of each model (a regression model: predicted against
    actual, and the residuals' distribution; a multiclass one: `multiclass_png`), as a base64 PNG."""
    if kind == "regression":
        return regression_png(y, scores)
    if kind == "multiclass":
        return multiclass_png(y, scores, classes or [])
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    fig, (roc, cal) = two_panels(10, 4.2)
    for label, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        roc.plot(fpr, tpr, label=label)
        frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
        cal.plot(mean, frac, marker="o", label=label)
    roc.plot([0, 1], [0, 1], "k:", lw=1)
    roc.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    cal.plot([0, 1], [0, 1], "k:", lw=1)
    cal.set(title="Calibration", xlabel="mean predicted probability", ylabel="observed frequency")
    return base64.b64encode(png_bytes(fig, dpi=90)).decode()


def regression_png(y: np.ndarray, scores: dict[str, np.ndarray]) -> str:
    fig, (fit, resid) = two_panels(10, 4.2)
    lo, hi = float(np.min(y)), float(np.max(y))
    for label, p in scores.items():
        fit.scatter(y, p, s=8, alpha=0.6, label=label)
        resid.hist(np.asarray(y, float) - p, bins=30, histtype="step", label=label)
    fit.plot([lo, hi], [lo, hi], "k:", lw=1)
    fit.set(title="Predicted against actual", xlabel="actual", ylabel="predicted")
    resid.set(title="Residuals", xlabel="actual - predicted", ylabel="rows")
    return base64.b64encode(png_bytes(fig, dpi=90)).decode()


def multiclass_png(y: np.ndarray, scores: dict[str, np.ndarray], classes: list[str]) -> str:
    """The challenger's confusion matrix (each true class's row as shares, counts written in) and
    every model's F1 per class."""
    fig, (matrix, bars) = two_panels(11, 4.6)
    k = len(classes)
    counts = confusion(y, scores["challenger"])
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    matrix.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            matrix.text(
                j, i, str(counts[i, j]), ha="center", va="center", color="black" if shares[i, j] < 0.6 else "white"
            )
    matrix.set(
        title="Challenger: confusion matrix", xlabel="predicted", ylabel="actual", xticks=range(k), yticks=range(k)
    )
    matrix.set_xticklabels(classes, rotation=30, ha="right")
    matrix.set_yticklabels(classes)
    width = 0.8 / len(scores)
    for n, (label, p) in enumerate(scores.items()):
        f1, _ = class_f1(confusion(y, p))
        bars.bar(np.arange(k) + n * width, f1, width, label=label)
    bars.set(title="F1 by class", ylabel="F1", ylim=(0, 1), xticks=np.arange(k) + 0.4 - width / 2)
    bars.set_xticklabels(classes, rotation=30, ha="right")
    return base64.b64encode(png_bytes(fig, dpi=90)).decode()


def render_html(report: dict[str, Any], png: str) -> str:
    esc = html.escape
    v = report["verdict"]
    color = "#1a7f37" if v["passed"] else "#cf222e"
    models = [m for m in ("challenger", "champion", "baseline") if report.get(m)]
    names = list(report["challenger"]["metrics"])
    titles = {"baseline": report["baseline"]["name"] if report.get("baseline") else "baseline"}
    head = "".join(f"<th>{esc(titles.get(m, m))}</th>" for m in models)
    rows = "".join(
        f"<tr><td>{esc(n)}</td>" + "".join(f"<td>{report[m]['metrics'][n]:.4f}</td>" for m in models) + "</tr>"
        for n in names
    )
    if report["challenger"].get("threshold") is not None:  # a binary label: where each model decides
        cells = (report[m].get("threshold") for m in models)
        rows += "<tr><td>decision threshold</td>" + "".join(
            f"<td>{'' if t is None else f'{t:.4f}'}</td>" for t in cells
        )
        rows += "</tr>"
    shown = names[:2]  # per slice: the kind's first two metrics (roc_auc, pr_auc / macro_f1, accuracy / rmse, mae)
    slice_rows = "".join(
        f"<tr><td>{esc(col)}={esc(val)}</td><td>{int(m['rows'])}</td>"
        + "".join(f"<td>{m[n]:.4f}</td>" for n in shown)
        + "</tr>"
        for col, vals in report["challenger"]["slices"].items()
        for val, m in vals.items()
    )
    slice_head = "".join(f"<th>{esc(n)}</th>" for n in shown)
    reasons = "".join(f"<li>{esc(r)}</li>" for r in v["reasons"])
    importances = importance_html(report["challenger"].get("importances"), v["primary_metric"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(report["pipeline"])} evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px}}</style></head><body>
<h1>{esc(report["pipeline"])} / {esc(report["run_id"])}:
<span style="color:{color}">{"PASSED" if v["passed"] else "FAILED"}</span></h1><ul>{reasons}</ul>
<h2>Test set ({report["test_rows"]} rows)</h2><table><tr><th>metric</th>{head}</tr>{rows}</table>
<img src="data:image/png;base64,{png}" alt="model plots">
{importances}<h2>Challenger by slice</h2><table><tr><th>slice</th><th>rows</th>{slice_head}</tr>
{slice_rows}</table></body></html>"""


def importance_html(importances: dict[str, Any] | None, metric: str) -> str:
    """The challenger's global importances as a table with a bar per feature. Pure."""
    if not importances or not importances["features"]:
        return ""
    esc = html.escape
    top = max((f["drop"] for f in importances["features"] if f["drop"] == f["drop"]), default=0.0)
    rows = "".join(
        f"<tr><td>{esc(f['feature'])}</td><td>{f['drop']:.4f}</td><td>{f['sd']:.4f}</td>"
        f'<td><div style="background:#0969da;height:10px;width:{_bar(f["drop"], top)}px"></div></td></tr>'
        for f in importances["features"]
    )
    return (
        f"<h2>Challenger's global importances</h2><p>What {esc(metric)} loses when the feature's values are "
        f"shuffled across {importances['rows']} test rows (mean and sd of {importances['repeats']} shuffles; "
        f"0: the model does not use it)</p><table><tr><th>feature</th><th>{esc(metric)} drop</th><th>sd</th>"
        f"<th></th></tr>{rows}</table>"
    )


def _bar(drop: float, top: float) -> int:
    """The bar's width in pixels: 200 for the largest drop, none for a drop at or under 0. Pure."""
    return int(200 * drop / top) if top > 0 and drop == drop and drop > 0 else 0


def approval_facts(name: str, report: dict[str, Any]) -> dict[str, Any]:
    """What the approval gate reads (`pipelines.core.approval`): the primary metric champion against
    challenger with its interval, and the slices where the challenger is worse. Pure."""
    champion = report["champion"]
    if champion is None or report["difference"] is None:
        return {"comparison": None, "worse_slices": []}
    new = report["challenger"]
    return {
        "comparison": comparison(name, new["metrics"], champion["metrics"], report["difference"]),
        "worse_slices": worse_slices(name, new["slices"], champion["slices"]),
    }


def own_threshold(session: Any, configured: float | str) -> float:
    """The decision threshold a version's graph records, else the spec's fixed one (a version
    from before thresholds: `imbalance.DEFAULT_THRESHOLD` where the spec says `tuned`)."""
    recorded = session_threshold(session)
    return recorded if recorded is not None else fixed_threshold(configured)


def run(ctx: StepContext) -> dict[str, Any]:
    import mlflow

    spec = ctx.spec
    cfg = spec.evaluation
    trained = ctx.manifest("train")
    test = read_parquet(ctx.storage, ctx.require("features", "test.parquet"))
    y = encode_label(test[spec.label.column], spec.classes)
    kind = spec.label.kind
    challenger = onnx_session(read_artifact(ctx.settings, ctx.storage, ctx.require("train", "model.onnx")))
    p_new = predict_onnx(challenger, test)
    t_new = own_threshold(challenger, cfg.threshold)  # each version decides at its own
    train = read_parquet(ctx.storage, ctx.require("features", "train.parquet"))  # its labels fit the baseline
    y_train = encode_label(train[spec.label.column], spec.classes)
    report: dict[str, Any] = {
        "step": STEP,
        "pipeline": ctx.pipeline,
        "run_id": ctx.run_id,
        "test_rows": len(test),
        "challenger": {
            "metrics": overall(y, p_new, t_new, kind),
            "slices": slices(test, y, p_new, cfg.slices, t_new, kind=kind),
            "threshold": t_new if kind == "binary" else None,
        },
        "champion": None,
        "difference": None,
        "baseline": baseline(y_train, y, cfg.threshold, kind, len(spec.classes)),
    }
    setup_mlflow(ctx.settings, ctx.pipeline)
    client = mlflow.MlflowClient()
    champion = alias_version(client, model_name(ctx.pipeline), CHAMPION)
    scores = {"challenger": p_new}
    if champion is not None:
        name = model_name(ctx.pipeline)
        session = onnx_session(load_onnx_model(ctx.settings, ctx.pipeline, name, int(champion.version)))
        p_old = predict_onnx(session, test)
        t_old = own_threshold(session, cfg.threshold)
        scores[f"champion v{champion.version}"] = p_old
        report["champion"] = {
            "version": int(champion.version),
            "metrics": overall(y, p_old, t_old, kind),
            "slices": slices(test, y, p_old, cfg.slices, t_old, kind=kind),
            "threshold": t_old if kind == "binary" else None,
        }
        new_metric, old_metric = (metric_functions(t, kind)[cfg.primary_metric] for t in (t_new, t_old))
        report["difference"] = bootstrap_difference(
            y, p_new, p_old, new_metric, cfg.bootstrap_samples, cfg.confidence, spec.training.seed, old_metric
        )
    report["challenger"]["importances"] = permutation_importances(
        lambda frame: predict_onnx(challenger, frame),
        test,
        y,
        spec.model.numeric_features + spec.model.categorical_features,
        metric_functions(t_new, kind)[cfg.primary_metric],
        HIGHER_IS_BETTER[cfg.primary_metric],
        seed=spec.training.seed,
    )
    report["onnx_latency_ms_per_row"] = onnx_latency_ms(challenger, test)
    report["verdict"] = gate(
        cfg,
        report["challenger"]["metrics"],
        report["champion"]["metrics"] if report["champion"] else None,
        report["difference"],
        report["onnx_latency_ms_per_row"],
        report["baseline"],
    )
    page = render_html(report, plots_png(y, scores, kind, spec.classes))
    report["report_html"] = ctx.storage.write_bytes(ctx.key("report.html"), page.encode())
    write_json(ctx.storage, ctx.key("report.json"), report)
    with mlflow.start_run(run_id=trained["mlflow_run_id"]):
        mlflow.log_dict(report, "evaluation/report.json")
        mlflow.log_text(page, "evaluation/report.html")
        mlflow.log_metrics({f"test_{k}": v for k, v in report["challenger"]["metrics"].items() if v == v})
        mlflow.set_tag("mlcycle.verdict", "passed" if report["verdict"]["passed"] else "failed")
        mlflow.set_tag("mlcycle.verdict_reasons", "; ".join(report["verdict"]["reasons"])[:5000])
    manifest = {
        "step": STEP,
        "verdict": report["verdict"],
        "report": report["report_html"],
        "primary": report["challenger"]["metrics"][cfg.primary_metric],
        "baseline": report["verdict"]["baseline"],
        "champion_version": report["champion"]["version"] if report["champion"] else None,
        "difference": report["difference"],
        **approval_facts(cfg.primary_metric, report),
        "mlflow_run_id": trained["mlflow_run_id"],
        "mlflow_experiment_id": trained.get("mlflow_experiment_id"),
    }
    write_json(ctx.storage, ctx.key("manifest.json"), manifest)
    return manifest
