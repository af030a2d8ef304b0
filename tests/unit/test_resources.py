"""The platform API's resources as the pure functions shape them (`pipelines.core.resources`),
the bounded health check over probes, and the page's links to them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.core import resources

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def version(v: int, aliases: list[str]) -> dict[str, Any]:
    return {"version": v, "aliases": aliases, "lineage": {"lifecycle_run": f"run-{v}", "data_hash": f"h{v}"}}


def test_a_model_summary_counts_versions_and_says_where_each_alias_points() -> None:
    summary = resources.model_summary("churn", "mlcycle-churn", [version(3, ["challenger"]), version(2, ["champion"])])
    assert summary == {
        "pipeline": "churn",
        "model": "mlcycle-churn",
        "versions": 2,
        "latest": 3,
        "aliases": {"challenger": 3, "champion": 2},
    }
    assert resources.model_summary("x", "mlcycle-x", [])["latest"] is None


def test_a_versions_lineage_joins_registry_tags_run_metrics_steps_audit_and_digests() -> None:
    tags = {"mlcycle.feature_service": "churn_features_v1", "mlcycle.code_version": "abc", "mlcycle.verdict": "passed"}
    event = {"id": 4, "at": NOW, "actor": "admin", "action": "pin", "version": 2}
    out = resources.version_lineage(
        version(2, ["champion"]),
        tags,
        {"val_auc": 0.8, "test_auc": 0.79},
        [("ingest", "succeeded"), ("promote", "succeeded")],
        [event],
        resources.file_digests('{"model.onnx": "ab12", "MLmodel": "cd34"}'),
    )
    assert out["lineage"]["lifecycle_run"] == "run-2" and out["lineage"]["data_hash"] == "h2"  # the record's
    assert out["lineage"]["feature_service"] == "churn_features_v1" and out["lineage"]["code_version"] == "abc"
    assert out["lineage"]["steps"] == {"ingest": "succeeded", "promote": "succeeded"}
    assert list(out["metrics"]) == ["test_auc", "val_auc"] and out["verdict"] == "passed"
    assert out["artifacts"] == {"sealed": True, "sha256": {"MLmodel": "cd34", "model.onnx": "ab12"}}
    assert out["audit"] == [{**event, "at": NOW.isoformat()}]  # JSON: the time as ISO 8601


def test_digests_that_were_never_recorded_or_do_not_read_leave_the_version_unsealed() -> None:
    for raw in (None, "", "not json", "[1, 2]"):
        assert resources.file_digests(raw) == {}


def test_a_deployment_passes_on_only_what_serve_runs_never_its_counters() -> None:
    served = {"versions": [{"version": 1, "weight": 95.0}], "weights": {"1": 95.0, "2": 5.0}, "shadow": None}
    served |= {"canary": {"state": "step"}, "request_log": {"pending": 3}, "ab": {"p": 0.2}, "batching": {}}
    canary = {"outcome": "running", "steps": [{"percent": 5}]}
    out = resources.deployment_record("churn", served, "serving", canary)
    assert out["serving"] == {k: served[k] for k in ("versions", "weights", "shadow", "canary")}
    assert out["unavailable"] is None and out["canary"] is canary
    down = resources.deployment_record("churn", None, "Serve did not answer (ConnectError)", None)
    assert down["serving"] is None and down["unavailable"] == "Serve did not answer (ConnectError)"


def trial(n: int, state: str, value: float | None) -> dict[str, Any]:
    return {"number": n, "state": state, "value": value, "mlflow_run_id": f"m{n}"}


def test_a_studys_best_trial_follows_its_direction_and_ignores_failed_and_pruned_ones() -> None:
    trials = [trial(2, "COMPLETE", 0.7), trial(0, "COMPLETE", 0.9), trial(1, "FAIL", None), trial(3, "PRUNED", 0.95)]
    up = resources.study_record("churn:manual__2026", "MAXIMIZE", trials, "parent")
    assert (up["pipeline"], up["run_id"], up["direction"]) == ("churn", "manual__2026", "maximize")
    assert up["best"]["number"] == 0 and up["mlflow_run_id"] == "parent"
    assert [t["number"] for t in up["trials"]] == [0, 1, 2, 3]
    assert up["states"] == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1}
    down = resources.study_record("wine:r1", "MINIMIZE", trials, None)
    assert down["best"]["number"] == 2
    tied = resources.study_record("p:r", "MAXIMIZE", [trial(5, "COMPLETE", 1.0), trial(4, "COMPLETE", 1.0)], None)
    assert tied["best"]["number"] == 4  # the first to reach it, as Optuna's best trial
    assert resources.study_record("p:r", "MAXIMIZE", [trial(0, "RUNNING", None)], None)["best"] is None


def test_an_infinite_trial_value_reads_as_none_json_has_no_infinity() -> None:
    assert resources.trial_value(0.5, "FINITE") == 0.5
    assert resources.trial_value(1e308, "INF_POS") is None and resources.trial_value(None, None) is None


def test_a_feature_views_freshness_is_its_last_materializations_age_against_its_ttl() -> None:
    intervals = [
        (NOW - timedelta(days=3), NOW - timedelta(days=2)),
        (NOW - timedelta(days=2), NOW - timedelta(hours=1)),
    ]
    view = resources.feature_view_record(
        "customer_stats", ["customer"], [("tenure", "Int64")], 86400.0, True, intervals, NOW
    )
    assert view["last_materialized"] == (NOW - timedelta(hours=1)).isoformat()
    assert view["age_s"] == 3600.0 and view["fresh"] is True
    assert view["features"] == [{"name": "tenure", "dtype": "Int64"}]
    stale = resources.freshness(intervals, 600.0, NOW)
    assert stale["fresh"] is False
    assert resources.freshness(intervals, None, NOW)["fresh"] is None  # no TTL: never stale
    assert resources.freshness([], 600.0, NOW) == {"last_materialized": None, "age_s": None, "fresh": None}


def test_each_version_reads_the_feature_service_its_tags_name() -> None:
    tags = {2: {"mlcycle.feature_service": "svc_v2"}, 1: {"mlcycle.feature_service": "svc_v1"}}
    assert resources.services_per_version([version(2, []), version(1, []), version(0, [])], tags) == {
        "2": "svc_v2",
        "1": "svc_v1",
        "0": None,
    }


def test_the_scheduler_is_up_only_on_airflows_healthy_heartbeat() -> None:
    beat = "2026-12-06T12:00:00+00:00"
    assert resources.scheduler_health({"scheduler": {"status": "healthy", "latest_scheduler_heartbeat": beat}}) == (
        True,
        f"heartbeat at {beat}",
    )
    ok, why = resources.scheduler_health({"scheduler": {"status": "unhealthy", "latest_scheduler_heartbeat": beat}})
    assert not ok and "unhealthy" in why and beat in why
    assert resources.scheduler_health({}) == (False, "scheduler unknown (last heartbeat never)")


def test_errors_in_a_health_answer_are_one_line_without_credentials() -> None:
    line = resources.first_line("connection to postgresql://mlcycle:s3cret@db:5432/x failed\ndetail: more")
    assert line == "connection to postgresql://***@db:5432/x failed"
    assert len(resources.first_line("x" * 1000)) == 200 and resources.first_line("") == ""


def test_health_asks_every_probe_at_once_and_a_hung_one_is_down_within_the_bound() -> None:
    from pipelines.io.resources import health

    def hung() -> tuple[bool, str]:
        time.sleep(3)
        return True, "late"

    def broken() -> tuple[bool, str]:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    started = time.monotonic()
    out = health({"database": lambda: (True, "answers queries"), "mlflow": broken, "serve": hung}, bound_s=0.5)
    assert time.monotonic() - started < 2.5  # bounded: the hung probe is not waited for
    rows = {r["service"]: r for r in out["services"]}
    assert list(rows) == ["database", "mlflow", "serve"]
    assert rows["database"]["up"] and rows["database"]["why"] == "answers queries"
    assert (
        not rows["mlflow"]["up"] and rows["mlflow"]["why"] == "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert not rows["serve"]["up"] and rows["serve"]["why"] == "no answer within 0.5 s"
    assert out["status"] == "degraded" and out["down"] == ["mlflow", "serve"]
    assert health({"database": lambda: (True, "ok")})["status"] == "up"


def test_the_page_lists_the_api_resources_for_its_pipeline() -> None:
    from plugins.mlcycle_resources import api_section

    html = api_section("churn")
    for path in ("models", "deployments", "experiments", "features"):
        assert f'href="/api/ml/{path}?pipeline=churn"' in html
    assert 'href="/api/ml/health"' in html and 'href="/api/ml/docs"' in html
    assert "pipeline=a&lt;b" in api_section("a<b")  # escaped


def test_the_answers_of_models_and_health_match_the_shapes_their_openapi_declares() -> None:
    from pipelines.io.resources import health
    from plugins.mlcycle_resources import Health, ModelPage

    summaries = [resources.model_summary("churn", "mlcycle-churn", [version(2, ["champion"])])]
    summaries.append(resources.model_summary("wine", "mlcycle-wine", []))
    page = ModelPage.model_validate(resources.page_of(summaries, 3, 2, 0))
    assert page.next_offset == 2 and page.items[0].aliases == {"champion": 2} and page.items[1].latest is None
    checked = Health.model_validate(health({"database": lambda: (True, "ok"), "serve": lambda: (False, "HTTP 503")}))
    assert checked.status == "degraded" and checked.down == ["serve"] and checked.services[0].up
