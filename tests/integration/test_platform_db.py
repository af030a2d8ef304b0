"""The platform tables on the real embedded PostgreSQL (+ pgvector)."""

from __future__ import annotations

import socket

import pytest

from pipelines.core.errors import ServiceUnavailable, StepInputError
from pipelines.core.settings import Settings
from pipelines.io import db, runs
from tests.integration.helpers import run, small_spec

pytestmark = pytest.mark.integration


def test_migrations_apply_once_and_pgvector_is_there(platform: Settings) -> None:
    assert db.migrate(platform) == []  # the session fixture applied them already
    with db.connect(platform) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == sorted(db.available_migrations(db.migrations_dir(platform)))
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone() is not None
        assert conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone() == (1.0,)
        server = conn.execute("SHOW server_version_num").fetchone()
        assert server is not None and int(server[0]) >= 180000


def test_every_attempt_is_recorded(workspace: Settings) -> None:
    small_spec(workspace, {"kind": "synthetic", "customers": 200, "months": 6})
    with pytest.raises(StepInputError, match="run `mlcycle step ingest"):
        run(workspace, "validate", "rec-1")
    run(workspace, "ingest", "rec-1")
    run(workspace, "ingest", "rec-1")
    with db.connect(workspace) as conn:
        rows = conn.execute(
            "SELECT step, attempt, status, error IS NOT NULL, outputs ? 'content_hash'"
            " FROM step_runs WHERE pipeline='churn' AND run_id='rec-1' ORDER BY started_at, attempt"
        ).fetchall()
    assert rows == [
        ("validate", 1, "failed", True, False),
        ("ingest", 1, "succeeded", False, True),
        ("ingest", 2, "reused", False, True),
    ]


def test_an_attempt_left_running_is_interrupted_by_the_next_and_by_the_operator(workspace: Settings) -> None:
    """A killed step never records how it ended: its next attempt marks it `interrupted` (taking
    over); a trial worker's retry marks only its own; the operator marks the last one, a no-op
    when the step recorded its outcome."""
    first = runs.start_attempt(workspace, "churn", "int-1", "train")
    other_worker = runs.start_attempt(workspace, "churn", "int-1", "trials", worker=1)
    runs.start_attempt(workspace, "churn", "int-1", "trials", worker=0)
    runs.start_attempt(workspace, "churn", "int-1", "trials", worker=0)  # worker 0's retry
    second = runs.start_attempt(workspace, "churn", "int-1", "train")
    runs.finish_attempt(workspace, second, runs.Outcome("succeeded", {"study": "s"}))
    assert runs.interrupt_running(workspace, "churn", "int-1", "train", None, "gone") == 0  # it recorded
    assert runs.interrupt_running(workspace, "churn", "int-1", "trials", 0, "exit -9 (SIGKILL)") == 1
    with db.connect(workspace) as conn:
        rows = conn.execute(
            "SELECT step, worker, attempt, status, error FROM step_runs WHERE run_id='int-1' ORDER BY step, attempt"
        ).fetchall()
    assert [r[:4] for r in rows] == [
        ("train", None, first.number, "interrupted"),
        ("train", None, second.number, "succeeded"),
        ("trials", 1, other_worker.number, "running"),  # another worker's live attempt is left alone
        ("trials", 0, 2, "interrupted"),
        ("trials", 0, 3, "interrupted"),
    ]
    assert rows[0][4] == f"{runs.LOST}; attempt 2 took over"
    assert rows[3][4] == f"{runs.LOST}; attempt 3 took over" and rows[4][4] == "exit -9 (SIGKILL)"


def test_a_step_pods_result_is_what_its_latest_successful_attempt_recorded(workspace: Settings) -> None:
    """The kubernetes runtime reads a step pod's result from step_runs (no XCom sidecar, so no
    pods/exec): the latest attempt that succeeded or reused its work, of that trial worker."""
    assert runs.step_outputs(workspace, "churn", "out-1", "ingest", None) is None
    first = runs.start_attempt(workspace, "churn", "out-1", "ingest")
    runs.finish_attempt(workspace, first, runs.Outcome("succeeded", {"rows": 1, "snapshot": "s3://b/1"}))
    failed = runs.start_attempt(workspace, "churn", "out-1", "ingest")
    runs.finish_attempt(workspace, failed, runs.Outcome("failed", error="boom"), required=False)
    assert runs.step_outputs(workspace, "churn", "out-1", "ingest", None) == {"rows": 1, "snapshot": "s3://b/1"}
    reused = runs.start_attempt(workspace, "churn", "out-1", "ingest")
    runs.finish_attempt(workspace, reused, runs.Outcome("reused", {"rows": 2, "reused": True}))
    assert runs.step_outputs(workspace, "churn", "out-1", "ingest", None) == {"rows": 2, "reused": True}
    worker = runs.start_attempt(workspace, "churn", "out-1", "trials", worker=1)
    runs.finish_attempt(workspace, worker, runs.Outcome("succeeded", {"trials": 3}))
    assert runs.step_outputs(workspace, "churn", "out-1", "trials", 1) == {"trials": 3}
    assert runs.step_outputs(workspace, "churn", "out-1", "trials", 0) is None


def test_a_success_that_cannot_be_recorded_fails_the_task_instead_of_hiding(
    workspace: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform database gone at a step's last write: the success is retried, then raises
    ServiceUnavailable (exit 1, the task retried, the step reusing its work) naming the database; a
    failure's record is best effort and never hides the step's own error."""
    attempt = runs.start_attempt(workspace, "churn", "gone-1", "ingest")
    monkeypatch.setattr(runs, "RECORD_TRIES", 2)
    with socket.socket() as closed:  # a port nothing listens on: PostgreSQL is down
        closed.bind(("127.0.0.1", 0))
        down = workspace.model_copy(update={"database_url": f"postgresql://x@127.0.0.1:{closed.getsockname()[1]}/x"})
    with pytest.raises(ServiceUnavailable, match="the step succeeded but its outcome could not be recorded") as err:
        runs.finish_attempt(down, attempt, runs.Outcome("succeeded", {"rows": 1}))
    assert err.value.exit_code == 1 and "127.0.0.1" in str(err.value)
    runs.finish_attempt(down, attempt, runs.Outcome("failed", error="boom"), required=False)  # logged only
    runs.finish_attempt(workspace, attempt, runs.Outcome("succeeded", {"rows": 1}))  # the retry records it
    assert run_steps_status(workspace, "gone-1") == [("ingest", "succeeded")]


def run_steps_status(settings: Settings, run_id: str) -> list[tuple[str, str]]:
    return [(r.step, r.status) for r in runs.run_steps(settings, "churn", run_id)]


def test_the_audit_trail_keeps_who_did_what_and_the_table_refuses_a_malformed_row(platform: Settings) -> None:
    import psycopg

    from pipelines.core.audit import AuditError, AuditEvent
    from pipelines.io import audit

    pipeline = "audit-probe"
    first = audit.record(platform, AuditEvent("alice", "user", "pin", pipeline, reason="release freeze"))
    second = audit.record(platform, AuditEvent("key:k1", "key", "labels_loaded", pipeline, detail={"rows": 3}))
    rows = audit.events(platform, pipeline)
    assert [r["id"] for r in rows] == [second, first]  # newest first
    assert (rows[1]["actor"], rows[1]["actor_kind"], rows[1]["action"], rows[1]["reason"]) == (
        "alice",
        "user",
        "pin",
        "release freeze",
    )
    assert rows[0]["detail"] == {"rows": 3}
    assert [r["id"] for r in audit.events(platform, pipeline, action="pin")] == [first]
    with pytest.raises(AuditError, match="unknown audit action"):
        AuditEvent("alice", "user", "drop_table", pipeline)
    with db.connect(platform) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO audit_events (actor, actor_kind, action, pipeline) VALUES ('x', 'root', 'pin', %s)",
            (pipeline,),
        )
