"""`promote`: register the challenger in MLflow, with lineage, only on a passing verdict.

A failing verdict skips the step (exit code 100; Airflow shows the task as skipped with the
reasons, and the rest of the run is skipped): the champion is untouched. Otherwise: check ONNX
against torch on the test set (max absolute difference within `evaluation.onnx_parity_tolerance`),
log the ONNX model to the training run (an MLflow model with an `onnx` flavor and a pyfunc that
takes a DataFrame of raw features, with its signature and an input example), register it as a new
version of `mlcycle-<pipeline>` with lineage tags, seal it (the sha256 of each of its files, the
tag `mlcycle.files_sha256`, checked wherever a step or serving loads it), and point the alias
`challenger` at it. The first model of a pipeline also becomes `champion` (not while pinned:
`mlcycle model pin`; a pinned pipeline's version is registered as challenger, and the result says
the pin). Every alias move is audited. A retry of the same run reuses the version it registered.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipelines.core.errors import GateError, StepSkipped
from pipelines.core.integrity import sha256_hex
from pipelines.core.steering import pinned_outcome
from pipelines.io.artifacts import read_artifact
from pipelines.io.registry import (
    CHALLENGER,
    CHAMPION,
    FILES_TAG,
    Registry,
    log_onnx_model,
    open_registry,
    seal_version,
)
from pipelines.io.steering import current_pin
from pipelines.io.storage import read_parquet, write_json
from pipelines.io.tracking import airflow_tags, code_version
from pipelines.ml.families import load_trained
from pipelines.ml.imbalance import THRESHOLD_KEY
from pipelines.ml.model import embed_onnx, embedding_dimension, onnx_session, predict_onnx
from pipelines.steps.context import StepContext

STEP = "promote"
log = logging.getLogger(__name__)


def parity(
    native_scores: np.ndarray, onnx_scores: np.ndarray, tolerance: float, relative: bool = False
) -> dict[str, Any]:
    """How far ONNX is from the model's own predictions on the same rows. `relative` (a regression
    score, in the label's units, computed in float32 by ONNX Runtime): the tolerance scales with
    the largest score's magnitude (at least 1). Pure."""
    diff = float(np.max(np.abs(native_scores - onnx_scores))) if len(native_scores) else 0.0
    if relative and len(native_scores):
        tolerance = tolerance * max(1.0, float(np.max(np.abs(native_scores))))
    return {"max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance, "rows": len(native_scores)}


def lineage_tags(
    ctx: StepContext,
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    check: dict[str, Any],
    code: str,
    ingested: dict[str, Any],
) -> dict[str, str]:
    """The tags a registered version carries: where its data, features, code and verdict came from. Pure."""
    verdict = evaluation["verdict"]
    return {
        "mlcycle.pipeline": ctx.pipeline,
        "mlcycle.run_id": ctx.run_id,
        "mlcycle.data_hash": trained["content_hash"],
        "mlcycle.feature_service": trained["feature_service"],
        "mlcycle.code_version": code,
        "mlcycle.training_run": trained["mlflow_run_id"],
        "mlcycle.verdict": "passed",
        "mlcycle.verdict_reasons": "; ".join(verdict["reasons"])[:5000],
        "mlcycle.primary_metric": f"{ctx.spec.evaluation.primary_metric}={evaluation['primary']:.6f}",
        "mlcycle.onnx_parity_max_abs_diff": f"{check['max_abs_diff']:.3e}",
        # a binary model's decision threshold (also in its graph): live F1 is measured at it
        **({THRESHOLD_KEY: repr(trained["threshold"])} if trained.get("threshold") is not None else {}),
        **window_tags(ingested),
    }


def window_tags(ingested: dict[str, Any]) -> dict[str, str]:
    """The data window a version was trained on, and the drift check that asked for it. Pure."""
    tags = {}
    window = ingested.get("window")
    if window:
        tags["mlcycle.data_window"] = f"{window['start'] or '-'} .. {window['end']}"
    if ingested.get("feedback_rows"):
        tags["mlcycle.feedback_rows"] = str(ingested["feedback_rows"])
    if ingested.get("trigger"):
        tags["mlcycle.trigger"] = ingested["trigger"]
    cause = ingested.get("cause") or {}
    if cause.get("drift_run_id"):
        tags["mlcycle.drift_check"] = str(cause["drift_run_id"])
        tags["mlcycle.retraining_reasons"] = "; ".join(cause.get("reasons") or [])[:5000]
    return tags


def run(ctx: StepContext) -> dict[str, Any]:
    evaluation = ctx.manifest("evaluate")
    if ctx.dry_run:
        raise StepSkipped("dry run: the challenger was trained and evaluated, nothing is registered or served")
    verdict = evaluation["verdict"]
    if not verdict["passed"]:
        raise StepSkipped("the challenger failed its gates, the champion stays: " + "; ".join(verdict["reasons"]))
    trained = ctx.manifest("train")
    onnx_bytes = read_artifact(ctx.settings, ctx.storage, ctx.require("train", "model.onnx"))
    check = check_parity(ctx, onnx_bytes)
    registry = open_registry(ctx.settings, ctx.pipeline, ctx.run_id, STEP)
    lineage = lineage_tags(ctx, trained, evaluation, check, code_version(ctx.settings), ctx.manifest("ingest"))
    tags = {**lineage, **airflow_tags()}
    number = register(ctx, registry, onnx_bytes, trained["mlflow_run_id"], tags, check)
    registry.point(CHALLENGER, number, "; ".join(verdict["reasons"]))
    champion = registry.version(CHAMPION)
    pin = current_pin(ctx.settings, ctx.pipeline)
    if champion is None and pin is None:
        registry.point(CHAMPION, number, "first model of the pipeline")
        champion = number
    manifest = {
        "step": STEP,
        "model": registry.name,
        "version": number,
        "aliases": sorted(registry.client.get_model_version(registry.name, str(number)).aliases),
        "champion_version": champion,
        "parity": check,
        "model_uri": f"models:/{registry.name}/{number}",
        "onnx_sha256": sha256_hex(onnx_bytes),
        "mlflow_run_id": trained["mlflow_run_id"],
    }
    if pin is not None:
        manifest["pinned"] = pinned_outcome(pin, champion, number)
        log.warning("%s", manifest["pinned"])
    write_json(ctx.storage, ctx.key("manifest.json"), manifest)
    return manifest


def check_parity(ctx: StepContext, onnx_bytes: bytes) -> dict[str, Any]:
    """ONNX against the family's own predictions (torch, LightGBM, scikit-learn) on the test set
    (the scores, and the embeddings where the model has them); a difference beyond the tolerance
    registers nothing."""
    test = read_parquet(ctx.storage, ctx.require("features", "test.parquet"))
    key = ctx.require("train", "model.bin")
    trained = load_trained(read_artifact(ctx.settings, ctx.storage, key), ctx.storage.uri(key))
    session = onnx_session(onnx_bytes)
    tolerance = ctx.spec.evaluation.onnx_parity_tolerance
    regression = ctx.spec.label.kind == "regression"
    check = parity(trained.predict(test), predict_onnx(session, test), tolerance, relative=regression)
    native = trained.embeddings(test) if embedding_dimension(session) is not None else None
    if native is not None:
        vectors = parity(native.ravel(), embed_onnx(session, test).ravel(), tolerance)
        check["embedding"] = vectors
        check["passed"] = check["passed"] and vectors["passed"]
        check["max_abs_diff"] = max(check["max_abs_diff"], vectors["max_abs_diff"])
    if not check["passed"]:
        raise GateError(
            f"ONNX differs from the {trained.family} model by {check['max_abs_diff']:.2e} on the test set "
            f"(tolerance {check['tolerance']:.1e}); nothing registered"
        )
    return check


def register(
    ctx: StepContext,
    registry: Registry,
    onnx_bytes: bytes,
    training_run: str,
    tags: dict[str, str],
    check: dict[str, Any],
) -> int:
    """The version this run registered: found by its run id on a retry, else logged to the training
    run and registered now (the registered model created with the pipeline's first version)."""
    import mlflow  # heavy: mlflow

    client, name = registry.client, registry.name
    existing = client.search_model_versions(f"name = '{name}' and tag.`mlcycle.run_id` = '{ctx.run_id}'")
    if existing:  # sealed now where the attempt that registered it died before sealing it
        if FILES_TAG not in existing[0].tags:
            seal_version(client, name, int(existing[0].version), onnx_bytes)
        return int(existing[0].version)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(
            name, description=f"mlcycle pipeline {ctx.pipeline}", tags={"mlcycle.pipeline": ctx.pipeline}
        )
    test = read_parquet(ctx.storage, ctx.require("features", "test.parquet"))
    with mlflow.start_run(run_id=training_run):
        contract = {n: (c.dtype, c.nullable) for n, c in ctx.spec.contract.columns.items()}
        model_uri = log_onnx_model(onnx_bytes, test, contract)  # signed, with an input example of raw features
        mlflow.log_dict(check, "evaluation/onnx_parity.json")
    version = client.create_model_version(
        name, model_uri, run_id=training_run, tags=tags, description=f"run {ctx.run_id}"
    )
    seal_version(client, name, int(version.version), onnx_bytes)  # what serving and steps check on load
    return int(version.version)
