"""The reads behind the platform API's resources on the real embedded PostgreSQL: Optuna's
studies read with SQL as Optuna itself reads them, the audit events of one version, and the
health of a platform whose database and store answer and whose MLflow and Serve do not."""

from __future__ import annotations

import socket

import pytest

from pipelines.core.audit import AuditEvent
from pipelines.core.settings import Settings
from pipelines.io import audit
from pipelines.io import resources as reads

pytestmark = pytest.mark.integration


def test_studies_are_read_from_optunas_tables_as_optuna_reads_them(workspace: Settings) -> None:
    import optuna

    from pipelines.io.tracking import optuna_url

    storage = optuna.storages.RDBStorage(optuna_url(workspace))
    study = optuna.create_study(study_name="res_exp:run-1", storage=storage, direction="minimize")
    other = optuna.create_study(study_name="res_other:run-1", storage=storage)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        trial.set_user_attr("mlflow_run_id", f"child-{trial.number}")
        if trial.number == 2:
            raise ValueError("a failed trial")
        return x * x

    study.optimize(objective, n_trials=4, catch=(ValueError,))
    other.optimize(lambda t: t.suggest_float("y", 0, 1), n_trials=1)

    later = optuna.create_study(study_name="res_exp:run-2", storage=storage)
    later.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    found = reads.studies(workspace, ["res_exp"], limit=1, offset=1)  # paged in the database, newest first
    assert (found["total"], found["next_offset"]) == (2, None) and [s["study"] for s in found["items"]] == [
        "res_exp:run-1"
    ]  # only the pipelines asked for
    assert reads.studies(workspace, ["res_exp"], limit=1)["items"][0]["study"] == "res_exp:run-2"
    got = found["items"][0]
    assert (got["pipeline"], got["run_id"], got["direction"]) == ("res_exp", "run-1", "minimize")
    assert got["states"] == {"COMPLETE": 3, "FAIL": 1}
    assert got["best"]["number"] == study.best_trial.number and got["best"]["value"] == study.best_value
    assert got["best"]["params"] == study.best_trial.params
    for mine, theirs in zip(got["trials"], study.get_trials(), strict=True):
        assert (mine["number"], mine["state"], mine["value"]) == (theirs.number, theirs.state.name, theirs.value)
        assert mine["mlflow_run_id"] == f"child-{theirs.number}" and mine["started"] is not None
    assert reads.studies(workspace, ["no_such_pipeline"])["items"] == []


def test_a_versions_audit_events_are_its_own(workspace: Settings) -> None:
    for v in (1, 2, 2):
        audit.record(workspace, AuditEvent("admin", "user", "pin", "res_audit", version=v, reason=f"v{v}"))
    mine = audit.events(workspace, "res_audit", version=2)
    assert [e["version"] for e in mine] == [2, 2] and len(audit.events(workspace, "res_audit")) == 3


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_says_which_service_is_down_and_why(workspace: Settings) -> None:
    port = closed_port()
    settings = workspace.model_copy(update={"mlflow_ui_url": f"http://127.0.0.1:{port}", "serve_port": port})
    out = reads.health(reads.platform_probes(settings))
    rows = {r["service"]: r for r in out["services"]}
    assert rows["database"]["up"] and rows["database"]["why"] == "answers queries"
    assert rows["object_store"]["up"] and "local directory" in rows["object_store"]["why"]
    for down in ("mlflow", "serve"):
        assert not rows[down]["up"] and rows[down]["why"].startswith("ConnectError"), rows[down]
    assert out["status"] == "degraded" and out["down"] == ["mlflow", "serve"]
