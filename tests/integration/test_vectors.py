"""Versioned embedding spaces on the real PostgreSQL + pgvector (and the real MLflow registry in
it): the `embed` backfill, its index and recall gate, resume; similarity switched by the champion
alias under load, never mixing versions; rollback and retention drops; serving's dual write."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from pipelines.io import db, vectors
from pipelines.io.registry import model_name, move_alias
from pipelines.io.storage import open_storage, read_parquet
from pipelines.io.tracking import setup_mlflow
from pipelines.ml.model import embedding_dimension, onnx_session
from serving.telemetry import RequestLog
from tests.integration.helpers import run, run_through, small_spec

pytestmark = pytest.mark.integration

ONE_TRIAL = {"n_trials": 1, "max_epochs": 3, "early_stopping_patience": 2, "pruner": "none", "batch_size": 128}
EVAL = {"min_primary": 0.55, "bootstrap_samples": 50, "max_latency_ms_per_row": 50.0}
THROUGH_PROMOTE = ("ingest", "validate", "features", "train", "evaluate", "promote")


def _count(settings: Any, table: str) -> int:
    with db.connect(settings) as conn:
        row = conn.execute(f'SELECT count(*) FROM vectors."{table}"').fetchone()
    return int(row[0]) if row else 0


def test_embed_fills_indexes_and_checks_the_challengers_space_and_resumes(workspace: Any) -> None:
    source = {"kind": "synthetic", "customers": 700, "months": 6, "seed": 5}
    small_spec(workspace, source, name="vec_embed", training=ONE_TRIAL, evaluation=EVAL)
    assert run_through(workspace, "emb-1", THROUGH_PROMOTE, "vec_embed")["promote"]["version"] == 1
    out = run(workspace, "embed", "emb-1", "vec_embed")

    validated = read_parquet(open_storage(workspace), "vec_embed/emb-1/validate/validated.parquet")
    entities = validated["customer_id"].nunique()
    width = embedding_dimension(onnx_session(open_storage(workspace).read_bytes("vec_embed/emb-1/train/model.onnx")))
    assert out["entities"] == out["added"] == entities == _count(workspace, "vec_embed_v1")  # one row per entity
    assert out["dimension"] == width and out["state"] == "ready"
    assert out["recall_at_10"] >= 0.9
    info = vectors.space_info(workspace, "vec_embed", 1)
    assert info is not None and info["state"] == "ready" and info["rows"] == entities
    assert info["recall_at_10"] == pytest.approx(out["recall_at_10"], abs=1e-4) and info["build_seconds"] > 0
    # the neighbour query can read the HNSW index (the recall check makes it; on 700 rows the
    # planner would rather scan)
    with db.connect(workspace) as conn:
        conn.execute("SET LOCAL enable_seqscan = off")
        (q,) = conn.execute('SELECT embedding::text FROM vectors."vec_embed_v1" LIMIT 1').fetchone()  # type: ignore[misc]
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                'EXPLAIN SELECT entity_id FROM vectors."vec_embed_v1" ORDER BY embedding <=> %s::vector LIMIT 10', (q,)
            )
        )
    assert "vec_embed_v1_hnsw" in plan, plan

    # A backfill killed half-way: the retry embeds only what is missing, then indexes and checks.
    with db.connect(workspace) as conn:
        conn.execute(
            'DELETE FROM vectors."vec_embed_v1" WHERE entity_id IN (SELECT entity_id FROM vectors."vec_embed_v1" LIMIT 150)'
        )
        conn.execute("UPDATE vector_spaces SET state = 'filling' WHERE pipeline = 'vec_embed'")
    again = run(workspace, "embed", "emb-1", "vec_embed")
    assert (again["resumed_with"], again["added"], again["state"]) == (entities - 150, 150, "ready")
    assert _count(workspace, "vec_embed_v1") == entities
    assert run(workspace, "embed", "emb-1", "vec_embed")["reused"] is True


def _registered(settings: Any, pipeline: str, versions: int) -> Any:
    """A registered model with `versions` versions in the real MLflow registry (no artifacts needed)."""
    import mlflow

    setup_mlflow(settings, pipeline)
    client = mlflow.MlflowClient()
    name = model_name(pipeline)
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, source=f"{settings.artifact_root}/none")
    return client


def _space(settings: Any, pipeline: str, version: int, matrix: np.ndarray, index: str = "hnsw") -> vectors.Space:
    space = vectors.open_space(
        settings, pipeline, version, matrix.shape[1], "cosine", index, "test", f"model-{version}"
    )
    vectors.copy_vectors(settings, space, [str(i) for i in range(len(matrix))], matrix)
    vectors.build_index(settings, space)
    vectors.mark_ready(settings, space, vectors.measure_recall(settings, space, 50))
    return space


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_similarity_follows_the_champion_alias_under_load_and_never_mixes_versions(workspace: Any) -> None:
    pipeline = "vec_switch"
    client = _registered(workspace, pipeline, 3)
    rng = np.random.default_rng(7)
    spaces = {v: rng.normal(size=(400, 8 + 4 * v)).astype(np.float32) for v in (1, 2)}  # other vectors, other widths
    for version, matrix in spaces.items():
        _space(workspace, pipeline, version, matrix)
    move = {"pipeline": pipeline, "actor": "test", "run_id": "switch", "reason": "test"}
    move_alias(workspace, client, alias="champion", version=1, **move)

    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:  # bounded: at most 2,000 queries, one connection
        with db.connect(workspace, autocommit=True) as conn:
            for n in range(2000):
                if stop.is_set() and n % 50 == 0:
                    return
                try:
                    answers.append(vectors.similar(conn, pipeline, model_name(pipeline), str(n % 400), 10))
                except BaseException as err:
                    errors.append(err)

    reader = threading.Thread(target=load)
    reader.start()
    while len(answers) < 100 and reader.is_alive():
        threading.Event().wait(0.02)
    move_alias(workspace, client, alias="champion", version=2, **move)  # the promotion
    vectors.retire_space(workspace, pipeline, 1)
    seen_switch = len(answers)
    while len(answers) < seen_switch + 100 and reader.is_alive():
        threading.Event().wait(0.02)
    stop.set()
    reader.join(60)

    assert not errors, errors[:3]
    served = [a["version"] for a in answers]
    assert served[0] == 1 and served[-1] == 2 and served == sorted(served)  # switched once, for every read
    for n, answer in enumerate(answers):  # each answer's distances are its version's vectors, none other's
        matrix = spaces[answer["version"]]
        query = matrix[n % 400]
        for hit in answer["neighbours"]:
            assert hit["distance"] == pytest.approx(_cosine(query, matrix[int(hit["entity_id"])]), abs=1e-4)
        assert len(answer["neighbours"]) == 10

    # Dual write: served vectors go to the spaces that take writes (v2), not to the retired v1.
    log = RequestLog(lambda: db.database_url(workspace), pipeline)
    assert log.takes_vectors(1) and log.takes_vectors(2)  # which spaces take writes is not known before a write
    log.write([], [(2, "new-entity", spaces[2][0]), (1, "new-entity", spaces[1][0]), (2, "new-entity", spaces[2][1])])
    log.close()
    assert (log.spaces, log.takes_vectors(1), log.takes_vectors(2)) == ({2}, False, True)  # v1's are no longer queued
    with db.connect(workspace) as conn:
        got = conn.execute(
            'SELECT source, embedding::text FROM vectors."vec_switch_v2" WHERE entity_id = %s', ("new-entity",)
        ).fetchone()
    assert got is not None and got[0] == "served"
    assert np.allclose(np.array(got[1].strip("[]").split(","), dtype=np.float32), spaces[2][1])  # the latest
    assert _count(workspace, "vec_switch_v1") == 400

    # A rolled-back challenger's space is dropped; a retired champion's after its retention.
    _space(workspace, pipeline, 3, rng.normal(size=(50, 4)).astype(np.float32))
    assert vectors.drop_space(workspace, pipeline, 3, "rolled back: p99 over the SLO") is True
    assert vectors.drop_space(workspace, pipeline, 3, "again") is False
    with pytest.raises(vectors.SpaceError, match="was dropped .rolled back: p99"):
        vectors.open_space(workspace, pipeline, 3, 4, "cosine", "hnsw", "test", "model-3")
    # another model registered as v3 (the registered model deleted and made again): a space anew
    fresh = vectors.open_space(workspace, pipeline, 3, 6, "cosine", "hnsw", "again", "another-model")
    assert (fresh.dimension, fresh.state, _count(workspace, "vec_switch_v3")) == (6, "filling", 0)
    assert vectors.drop_space(workspace, pipeline, 3, "test done") is True
    now = datetime.now(UTC)
    assert vectors.sweep_retired(workspace, pipeline, 168, now) == []
    assert vectors.sweep_retired(workspace, pipeline, 168, now + timedelta(hours=169)) == [1]
    with db.connect(workspace) as conn:
        states = dict(conn.execute("SELECT model_version, state FROM vector_spaces WHERE pipeline = %s", (pipeline,)))
        left = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'vectors'")}
    assert states == {1: "dropped", 2: "ready", 3: "dropped"}
    assert "vec_switch_v2" in left and not {"vec_switch_v1", "vec_switch_v3"} & left
    with db.connect(workspace) as conn, pytest.raises(vectors.NotInSpace, match="'nobody' has no vector in v2"):
        vectors.similar(conn, pipeline, model_name(pipeline), "nobody", 5)


def test_an_ivfflat_space_is_searched_with_the_probes_its_gate_measured(workspace: Any) -> None:
    """12,000 vectors: 12 lists; the recall check and the endpoint's query visit 10 of them."""
    pipeline = "vec_ivf"
    client = _registered(workspace, pipeline, 1)
    matrix = np.random.default_rng(3).normal(size=(12_000, 8)).astype(np.float32)
    _space(workspace, pipeline, 1, matrix, index="ivfflat")
    info = vectors.space_info(workspace, pipeline, 1)
    assert info is not None and info["state"] == "ready" and info["recall_at_10"] >= 0.9, info
    move_alias(workspace, client, pipeline=pipeline, alias="champion", version=1, actor="t", run_id="t", reason="t")
    with db.connect(workspace) as conn:
        answer = vectors.similar(conn, pipeline, model_name(pipeline), "5", 10)
        assert conn.execute("SHOW ivfflat.probes").fetchone() == ("10",)
    exact = sorted(range(len(matrix)), key=lambda i: _cosine(matrix[5], matrix[i]))[1:11]
    found = [int(n["entity_id"]) for n in answer["neighbours"]]
    assert len(set(found) & set(exact)) >= 8, (found, exact)
