"""`promote`: register the challenger in MLflow, with lineage, only on a passing verdict.

A failing verdict skips the step (exit code 100; Airflow shows the task as skipped with the
reasons, and the rest of the run is skipped): the champion is untouched. Otherwise: check ONNX
against torch on the test set (max absolute difference within `evaluation.onnx_parity_tolerance`),
log the ONNX model to the training run, register it as a new version of `mlcycle-<pipeline>` with
lineage tags, and point the alias `challenger` at it. The first model of a pipeline also becomes
`champion`. Every alias move is audited. A retry of the same run reuses the version it registered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.context import StepContext, dry_run
from pipelines.errors import GateError, StepSkipped
from pipelines.model import load_module, onnx_session, predict, predict_onnx
from pipelines.storage import read_parquet, write_json

STEP = "promote"


def parity(torch_scores: np.ndarray, onnx_scores: np.ndarray, tolerance: float) -> dict[str, Any]:
    """How far ONNX is from torch on the same rows. Pure."""
    diff = float(np.max(np.abs(torch_scores - onnx_scores))) if len(torch_scores) else 0.0
    return {"max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance, "rows": len(torch_scores)}


def run(ctx: StepContext) -> dict[str, Any]:
    import mlflow
    import mlflow.onnx
    import onnx

    from pipelines.registry import CHALLENGER, CHAMPION, alias_version, model_name, move_alias
    from pipelines.tracking import airflow_tags, code_version, setup_mlflow

    evaluation = ctx.manifest("evaluate")
    if dry_run(ctx):
        raise StepSkipped("dry run: the challenger was trained and evaluated, nothing is registered or served")
    verdict = evaluation["verdict"]
    if not verdict["passed"]:
        raise StepSkipped("the challenger failed its gates, the champion stays: " + "; ".join(verdict["reasons"]))
    spec = ctx.spec
    trained = ctx.manifest("train")
    test = read_parquet(ctx.storage, ctx.require("features", "test.parquet"))
    module, enc, _ = load_module(ctx.storage.read_bytes(ctx.require("train", "model.pt")))
    onnx_bytes = ctx.storage.read_bytes(ctx.require("train", "model.onnx"))
    check = parity(
        predict(module, enc, test), predict_onnx(onnx_session(onnx_bytes), test), spec.evaluation.onnx_parity_tolerance
    )
    if not check["passed"]:
        raise GateError(
            f"ONNX differs from torch by {check['max_abs_diff']:.2e} on the test set "
            f"(tolerance {check['tolerance']:.1e}); nothing registered"
        )

    setup_mlflow(ctx.settings, ctx.pipeline)
    client = mlflow.MlflowClient()
    name = model_name(ctx.pipeline)
    existing = client.search_model_versions(f"name = '{name}' and tag.`mlcycle.run_id` = '{ctx.run_id}'")
    lineage = {
        "mlcycle.pipeline": ctx.pipeline,
        "mlcycle.run_id": ctx.run_id,
        "mlcycle.data_hash": trained["content_hash"],
        "mlcycle.feature_service": trained["feature_service"],
        "mlcycle.code_version": code_version(ctx.settings),
        "mlcycle.training_run": trained["mlflow_run_id"],
        "mlcycle.verdict": "passed",
        "mlcycle.verdict_reasons": "; ".join(verdict["reasons"])[:5000],
        "mlcycle.primary_metric": f"{spec.evaluation.primary_metric}={evaluation['primary']:.6f}",
        "mlcycle.onnx_parity_max_abs_diff": f"{check['max_abs_diff']:.3e}",
        **airflow_tags(),
    }
    if existing:
        version = existing[0]
    else:
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(
                name, description=f"mlcycle pipeline {ctx.pipeline}", tags={"mlcycle.pipeline": ctx.pipeline}
            )
        with mlflow.start_run(run_id=trained["mlflow_run_id"]):
            info = mlflow.onnx.log_model(onnx.load_from_string(onnx_bytes), name="model")
            mlflow.log_dict(check, "evaluation/onnx_parity.json")
        version = client.create_model_version(
            name, info.model_uri, run_id=trained["mlflow_run_id"], tags=lineage, description=f"run {ctx.run_id}"
        )
    number = int(version.version)

    def point(alias: str, reason: str) -> None:
        move_alias(
            ctx.settings,
            client,
            pipeline=ctx.pipeline,
            alias=alias,
            version=number,
            actor=f"{ctx.pipeline}/{ctx.run_id}/{STEP}",
            run_id=ctx.run_id,
            reason=reason,
        )

    point(CHALLENGER, "; ".join(verdict["reasons"]))
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        point(CHAMPION, "first model of the pipeline")
        champion = alias_version(client, name, CHAMPION)
    aliases = sorted(client.get_model_version(name, str(number)).aliases)
    manifest = {
        "step": STEP,
        "model": name,
        "version": number,
        "aliases": aliases,
        "champion_version": int(champion.version),
        "parity": check,
        "model_uri": f"models:/{name}/{number}",
        "mlflow_run_id": trained["mlflow_run_id"],
    }
    write_json(ctx.storage, ctx.key("manifest.json"), manifest)
    return manifest
