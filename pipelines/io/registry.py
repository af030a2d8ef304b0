"""The MLflow model registry, by aliases (MLflow 3: stages are gone), with an audit trail.

Every alias change goes through `move_alias`, which records who (run and step), from which
version to which, when and why in the platform table `alias_audit`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.audit import ActorKind, AuditEvent
from pipelines.core.errors import ArtifactRefused, SettingsError
from pipelines.core.integrity import check_files, sha256_hex
from pipelines.core.settings import Settings
from pipelines.io import audit as audit_trail
from pipelines.io.db import connect, fetch_dicts
from pipelines.io.tracking import setup_mlflow

if TYPE_CHECKING:
    import pandas as pd

CHAMPION = "champion"
CHALLENGER = "challenger"


def model_name(pipeline: str) -> str:
    return f"mlcycle-{pipeline}"


def alias_version(client: Any, name: str, alias: str) -> Any:
    """The model version an alias points to, or None (no model, or no such alias)."""
    from mlflow.exceptions import MlflowException  # heavy: mlflow

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def move_alias(
    settings: Settings,
    client: Any,
    *,
    pipeline: str,
    alias: str,
    version: int | None,
    actor: str,
    run_id: str,
    reason: str,
    actor_kind: ActorKind = "lifecycle",
    action: str = "alias",
) -> None:
    """Point `alias` at `version` (None deletes it) and record the change: in `alias_audit`, and as
    one `audit_events` row (`action` names why: `alias` for the lifecycle, `rollback` for a person)."""
    name = model_name(pipeline)
    current = alias_version(client, name, alias)
    before = int(current.version) if current is not None else None
    if before == version:
        return
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))
    with connect(settings) as conn:
        record_move(
            conn,
            pipeline,
            alias,
            before,
            version,
            AuditEvent(actor, actor_kind, action, pipeline, run_id=run_id, reason=reason),
        )


def record_move(conn: Any, pipeline: str, alias: str, before: int | None, version: int | None, who: AuditEvent) -> None:
    """Record one alias move on an open connection: its `alias_audit` row and its `audit_events`
    row (`who`: the actor, kind, action, run and reason; the versions are filled in here)."""
    conn.execute(
        "INSERT INTO alias_audit (pipeline, model_name, alias, from_version, to_version, actor, run_id, reason)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (pipeline, model_name(pipeline), alias, before, version, who.actor, who.run_id, who.reason),
    )
    detail = {"alias": alias, "from_version": before, "to_version": version}
    event = AuditEvent(who.actor, who.actor_kind, who.action, pipeline, version, who.run_id, who.reason, detail)
    audit_trail.write(conn, event)


@dataclass(frozen=True)
class Registry:
    """One pipeline's registered model, as one step of one run sees it: aliases read, and moved
    with that step as the actor of the audit trail."""

    settings: Settings
    client: Any
    pipeline: str
    run_id: str
    actor: str

    @property
    def name(self) -> str:
        return model_name(self.pipeline)

    def version(self, alias: str) -> int | None:
        """The version number an alias points to, or None."""
        found = alias_version(self.client, self.name, alias)
        return int(found.version) if found is not None else None

    def point(self, alias: str, version: int | None, reason: str) -> None:
        """Point `alias` at `version` (None deletes it), recorded with this step as the actor."""
        move_alias(
            self.settings,
            self.client,
            pipeline=self.pipeline,
            alias=alias,
            version=version,
            actor=self.actor,
            run_id=self.run_id,
            reason=reason,
        )


def open_registry(settings: Settings, pipeline: str, run_id: str, step: str) -> Registry:
    """The registry of a pipeline's model, with MLflow set up for it."""
    import mlflow  # heavy: mlflow

    setup_mlflow(settings, pipeline)
    return Registry(settings, mlflow.MlflowClient(), pipeline, run_id, f"{pipeline}/{run_id}/{step}")


def champion_version(settings: Settings, pipeline: str) -> int:
    """The version the `champion` alias points to, or a clear error when there is none yet."""
    version = champion_or_none(settings, pipeline)
    if version is None:
        raise SettingsError(f"{model_name(pipeline)} has no `champion` alias yet: run the lifecycle before serving it")
    return version


def champion_or_none(settings: Settings, pipeline: str) -> int | None:
    """The version the `champion` alias points to; None before the first promotion."""
    import mlflow  # heavy: mlflow

    setup_mlflow(settings, pipeline)
    champion = alias_version(mlflow.MlflowClient(), model_name(pipeline), CHAMPION)
    return None if champion is None else int(champion.version)


def version_thresholds(settings: Settings, pipeline: str, versions: list[int]) -> dict[int, float]:
    """The decision threshold each of these versions of a binary model recorded at registration
    (`mlcycle.threshold`); a version from before thresholds is left out (it decided at the spec's)."""
    import mlflow  # heavy: mlflow

    from pipelines.ml.imbalance import THRESHOLD_KEY  # numpy

    setup_mlflow(settings, pipeline)
    client, name, out = mlflow.MlflowClient(), model_name(pipeline), {}
    for version in versions:
        raw = (client.get_model_version(name, str(version)).tags or {}).get(THRESHOLD_KEY)
        if raw is not None:
            out[version] = float(raw)
    return out


def lineage_runs(settings: Settings, pipeline: str) -> set[str]:
    """The lifecycle runs (`mlcycle.run_id` tags) of every version still in the pipeline's registry:
    their run folders (snapshot, reports, model) are kept whatever their age."""
    import mlflow  # heavy: mlflow

    setup_mlflow(settings, pipeline)
    found = mlflow.MlflowClient().search_model_versions(f"name = '{model_name(pipeline)}'")
    return {str(mv.tags["mlcycle.run_id"]) for mv in found if (mv.tags or {}).get("mlcycle.run_id")}


def load_onnx_model(settings: Settings, pipeline: str, model: str, version: int) -> bytes:
    """The serialized ONNX model of a registered version of a pipeline's model (its `onnx` flavor:
    the versions `log_onnx_model` logs and the older, ONNX-only ones alike), once every file of the
    version matches the sha256 recorded at registration (`seal_version`); `ArtifactRefused` otherwise."""
    import mlflow  # heavy: mlflow
    import onnx

    setup_mlflow(settings, pipeline)
    with tempfile.TemporaryDirectory(prefix="mlcycle-model-") as tmp:
        root = verified_version(mlflow.MlflowClient(), model, version, Path(tmp))
        # with the external data files of a version logged by `mlflow.onnx.log_model`, verified too
        return bytes(onnx.load(str(onnx_file(root))).SerializeToString())


FILES_TAG = "mlcycle.files_sha256"
"""The model-version tag holding the sha256 of every file of the version (JSON: path -> digest)."""
DOWNLOAD_META = "registered_model_meta"
"""The file MLflow adds to a registered model it downloads (not one of the version's files)."""


def file_digests(root: Path) -> dict[str, str]:
    """The sha256 of every file under `root` by its relative path, MLflow's download note aside."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() != DOWNLOAD_META)
    return {p.relative_to(root).as_posix(): sha256_hex(p.read_bytes()) for p in files}


def download_version(name: str, version: int, dst: Path) -> Path:
    import mlflow.artifacts  # heavy: mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))


def onnx_file(root: Path) -> Path:
    """The ONNX file of a downloaded model, as its `MLmodel` names it under the `onnx` flavor."""
    import yaml

    flavors = yaml.safe_load((root / "MLmodel").read_text()).get("flavors", {})
    data = flavors.get("onnx", {}).get("data")
    path = (root / str(data)).resolve()
    if not data or not path.is_relative_to(root.resolve()) or not path.is_file():
        raise ArtifactRefused(f"{root.name}: no ONNX file named by its MLmodel ({data!r})")
    return path


def seal_version(client: Any, name: str, version: int, onnx_bytes: bytes | None = None) -> dict[str, str]:
    """Record the sha256 of every file of a registered version as its tag `FILES_TAG` (the ONNX
    model and the pyfunc's files), read back as stored; `onnx_bytes` (the model the step meant to
    register): its ONNX file must be those bytes. Returns the digests."""
    with tempfile.TemporaryDirectory(prefix="mlcycle-seal-") as tmp:
        root = download_version(name, version, Path(tmp))
        digests = file_digests(root)
        stored = onnx_file(root).relative_to(root.resolve()).as_posix()
    if onnx_bytes is not None and digests.get(stored) != sha256_hex(onnx_bytes):
        raise ArtifactRefused(f"{name} v{version}: its stored {stored} is not the model promote logged: not sealed")
    client.set_model_version_tag(name, str(version), FILES_TAG, json.dumps(digests, sort_keys=True))
    return digests


def verified_version(client: Any, name: str, version: int, dst: Path) -> Path:
    """A registered version's files downloaded under `dst`, each checked against the digests
    recorded at registration; `ArtifactRefused` naming the version and its files otherwise."""
    label = f"{name} v{version}"
    raw = client.get_model_version(name, str(version)).tags.get(FILES_TAG)
    if not raw:
        raise ArtifactRefused(
            f"{label}: no file digests recorded at registration (tag {FILES_TAG}; a version registered "
            "before digests were recorded, or outside `promote`): refused; promote a retrained model"
        )
    root = download_version(name, version, dst)
    check_files(file_digests(root), json.loads(raw), label)
    return root


def verify_versions(settings: Settings, pipeline: str, model: str, versions: list[int]) -> None:
    """Every version's files match their recorded digests, before any is deployed."""
    import mlflow  # heavy: mlflow

    setup_mlflow(settings, pipeline)
    client = mlflow.MlflowClient()
    for version in versions:
        with tempfile.TemporaryDirectory(prefix="mlcycle-verify-") as tmp:
            onnx_file(verified_version(client, model, version, Path(tmp)))


PYFUNC_CODE = Path(__file__).with_name("onnx_pyfunc.py")
"""The pyfunc MLflow copies into every logged model (see that module)."""
PYFUNC_ARTIFACT = "model"
PYFUNC_PACKAGES = ("mlflow", "onnx", "onnxruntime", "numpy", "pandas")


MLFLOW_TYPES = {"int": "long", "float": "double", "bool": "boolean", "string": "string", "datetime": "datetime"}


def pyfunc_inputs(inputs: list[tuple[str, str]], contract: Mapping[str, tuple[str, bool]]) -> list[tuple[str, str]]:
    """The MLflow column type of each model input, as the contract declares it (`contract`: name ->
    (dtype, nullable)): `long` for an int (`double` where it may be null: pandas holds such a column
    as floats), `double`, `string`, `boolean`; an input the contract does not name, from its ONNX
    type (`string` or `double`). Pure."""
    out = []
    for name, kind in inputs:
        dtype, nullable = contract.get(name, ("string" if kind == "tensor(string)" else "float", True))
        out.append((name, "double" if dtype == "int" and nullable else MLFLOW_TYPES[dtype]))
    return out


PANDAS_TYPES = {"long": "int64", "double": "float64", "boolean": "bool", "datetime": "datetime64[ns, UTC]"}


def example_frame(df: pd.DataFrame, columns: list[tuple[str, str]], rows: int = 5) -> pd.DataFrame:
    """A few rows of raw features, the model's input columns only, typed as the signature says
    (`columns`: name -> MLflow type). Pure."""
    out = df[[name for name, _ in columns]].head(rows).reset_index(drop=True)
    for name, kind in columns:
        out[name] = out[name].astype(str) if kind == "string" else out[name].astype(PANDAS_TYPES[kind])
    return out


class _OnnxPyfuncFlavor:
    """What `mlflow.models.Model.log` calls to save a model: the pyfunc of `onnx_pyfunc.py` on the
    ONNX file, with the `onnx` flavor added on the same file, so `mlflow.onnx.load_model` (serving,
    evaluate, drift) and `mlflow.pyfunc.load_model(...).predict(dataframe)` both load it."""

    __name__ = "mlcycle_onnx"

    def save_model(self, path: str, mlflow_model: Any, *, onnx_file: str, signature: Any, example: Any) -> None:
        import importlib.metadata

        import mlflow.pyfunc  # heavy: mlflow
        import onnx

        requirements = [f"{p}=={importlib.metadata.version(p)}" for p in PYFUNC_PACKAGES]
        mlflow.pyfunc.save_model(
            path=path,
            mlflow_model=mlflow_model,
            python_model=str(PYFUNC_CODE),
            artifacts={PYFUNC_ARTIFACT: onnx_file},
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
        )
        data = f"artifacts/{Path(onnx_file).name}"
        if not (Path(path) / data).is_file():
            raise AssertionError(f"MLflow saved the pyfunc's artifact elsewhere than {data}")
        mlflow_model.add_flavor("onnx", onnx_version=onnx.__version__, data=data, providers=["CPUExecutionProvider"])
        mlflow_model.save(str(Path(path) / "MLmodel"))


def log_onnx_model(
    onnx_bytes: bytes, features: pd.DataFrame, contract: Mapping[str, tuple[str, bool]], name: str = "model"
) -> str:
    """Log the ONNX model to the active MLflow run with a signature (the contract's types of its
    inputs, `pyfunc_inputs`) and an input example (a few rows of `features`, raw columns as the
    endpoint takes them); returns the logged model's URI."""
    import mlflow  # heavy: mlflow, onnxruntime
    import numpy as np
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    from pipelines.ml.model import onnx_session, predict_onnx

    session = onnx_session(onnx_bytes)
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    columns = pyfunc_inputs(inputs, contract)
    example = example_frame(features, columns)
    scores = predict_onnx(session, example)
    scores = scores.reshape(-1) if scores.ndim == 2 and scores.shape[1] == 1 else scores
    signature = ModelSignature(
        inputs=Schema([ColSpec(kind, column) for column, kind in columns]),
        outputs=Schema([TensorSpec(np.dtype("float64"), (-1, *scores.shape[1:]))]),
    )
    with tempfile.TemporaryDirectory(prefix="mlcycle-onnx-") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        onnx_file.write_bytes(onnx_bytes)
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=_OnnxPyfuncFlavor(),
            onnx_file=str(onnx_file),
            signature=signature,
            example=example,
        )
    if mlflow.active_run() is None:
        raise AssertionError("log_onnx_model needs an active MLflow run")
    return str(info.model_uri)


def audit(settings: Settings, pipeline: str) -> list[dict[str, Any]]:
    with connect(settings) as conn:
        return fetch_dicts(
            conn,
            "SELECT alias, from_version, to_version, actor, run_id, reason, changed_at FROM alias_audit"
            " WHERE pipeline = %s ORDER BY id",
            (pipeline,),
        )
