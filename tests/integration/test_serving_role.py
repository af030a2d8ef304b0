"""The serving path's database role (migration 0013) on the real platform database: it resolves
the `champion` alias, answers /similar and writes the request log and its served embeddings, and
cannot move an alias, register a version, read MLflow's users or create a table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import mlflow
import numpy as np
import psycopg
import pytest

from pipelines.core.settings import Settings
from pipelines.io import db, vectors
from pipelines.io.registry import CHAMPION, champion_version, model_name, move_alias
from pipelines.io.tracking import setup_mlflow
from serving.records import LogRow
from serving.telemetry import RequestLog

pytestmark = pytest.mark.integration
PIPELINE = "srole"

REFUSED = (
    "UPDATE mlflow.registered_model_aliases SET version = 2",
    "DELETE FROM mlflow.registered_model_aliases",
    "INSERT INTO mlflow.registered_model_aliases (name, alias, version) VALUES ('mlcycle-srole', 'x', 2)",
    "UPDATE mlflow.model_versions SET source = 'file:///evil'",
    "INSERT INTO alias_audit (pipeline, model_name, alias, actor, reason) VALUES ('p', 'm', 'a', 'x', 'y')",
    "SELECT * FROM mlflow_auth.users",
    "CREATE TABLE mlflow.planted (id int)",
    "CREATE TABLE vectors.planted (id int)",
    "DELETE FROM inference_requests",
    "UPDATE vector_spaces SET state = 'ready'",
    # what every replica serves (weights, versions): published by the platform's role only
    "INSERT INTO serving_args (pipeline, generation, layout, args) VALUES ('p', 99, 'l', '{}')",
    "UPDATE serving_args SET args = '{}'",
)


def _log_row(pipeline: str, entity: str) -> LogRow:
    row = LogRow(uuid.uuid4(), pipeline, 1, entity, "{}", 0.5, 1.0, "ok", None, False, datetime.now(UTC))
    return row


def test_the_serving_role_reads_the_champion_and_cannot_move_it(workspace: Settings) -> None:
    setup_mlflow(workspace, PIPELINE)
    client = mlflow.MlflowClient()
    client.create_registered_model(model_name(PIPELINE))
    for _ in range(2):
        client.create_model_version(model_name(PIPELINE), source=f"{workspace.artifact_root}/none")
    move_alias(workspace, client, pipeline=PIPELINE, alias=CHAMPION, version=1, actor="test", run_id="r", reason="t")
    matrix = np.random.default_rng(3).normal(size=(40, 8)).astype(np.float32)
    space = vectors.open_space(workspace, PIPELINE, 1, 8, "cosine", "hnsw", "test", "model-1")
    vectors.copy_vectors(workspace, space, [str(i) for i in range(len(matrix))], matrix)
    vectors.build_index(workspace, space)
    vectors.mark_ready(workspace, space, vectors.measure_recall(workspace, space, 20))

    url = db.enable_serving_role(workspace)
    serving = workspace.model_copy(update={"database_url": url})
    assert champion_version(serving, PIPELINE) == 1  # the replica's way: MLflow's client on the database
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (db.SERVING_ROLE,)
        found = vectors.similar(conn, PIPELINE, model_name(PIPELINE), "0", 3)  # /similar's query
        conn.execute("SELECT * FROM serving_args")  # followed by the replicas
        assert found["version"] == 1 and len(found["neighbours"]) == 3
        for statement in REFUSED:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    # the request log and the served embeddings: written through the role
    log = RequestLog(lambda: url, PIPELINE)
    assert log.write([_log_row(PIPELINE, "e1")], [(1, "e1", matrix[0].tolist())]) == 0
    log.close()
    with db.connect(workspace) as conn:
        logged = conn.execute("SELECT count(*) FROM inference_requests WHERE pipeline = %s", (PIPELINE,)).fetchone()
        served = conn.execute(f'SELECT source FROM vectors."{space.table}" WHERE entity_id = %s', ("e1",)).fetchone()
    assert logged == (1,) and served == ("served",)
    assert champion_version(workspace, PIPELINE) == 1  # nothing moved it


def test_the_serving_role_is_what_the_embedded_ray_head_gives_its_replicas(platform: Settings) -> None:
    from serving import embedded

    _, env = embedded.head_command(platform)
    with psycopg.connect(env["MLCYCLE_DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (db.SERVING_ROLE,)
