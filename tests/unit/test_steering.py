"""The pure decisions of steering a champion: which version a rollback restores, what a pinned run
says and whether it may move the champion, when serve-sync takes an alias for a move made by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.core.steering import (
    Pin,
    RollbackError,
    blocked_promotion,
    champion_stack,
    follow_needed,
    moved_outside,
    parse_version,
    pinned_outcome,
    rollback_target,
)
from pipelines.io.status import outcome

PIN = Pin("churn", "alice", datetime(2026, 12, 6, 14, 0, tzinfo=UTC), "release freeze", 3)


def test_a_rollback_restores_the_champion_before_the_current_one() -> None:
    assert rollback_target([1, 2, 3], current=3) == 2


def test_a_second_rollback_goes_further_back_instead_of_undoing_the_first() -> None:
    trail = [1, 2, 3, 2]  # 3 was rolled back to 2
    assert champion_stack(trail) == [1, 2]
    assert rollback_target(trail, current=2) == 1


def test_a_version_promoted_after_a_rollback_rolls_back_to_the_restored_one() -> None:
    assert rollback_target([1, 2, 3, 2, 4], current=4) == 2


def test_deleted_aliases_change_nothing_and_a_named_version_wins() -> None:
    assert champion_stack([None, 1, None, 2]) == [1, 2]
    assert rollback_target([1, 2, 3], current=3, to=1) == 1
    assert rollback_target([1, 2, 3], current=3, to=7) == 7  # a later version, named: existence is checked at I/O


def test_a_rollback_refuses_what_it_cannot_do() -> None:
    with pytest.raises(RollbackError, match="first champion on record"):
        rollback_target([1], current=1)
    with pytest.raises(RollbackError, match="first champion on record"):
        rollback_target([], current=5)  # a champion never recorded (set by hand before any trail)
    with pytest.raises(RollbackError, match="champion already"):
        rollback_target([1, 2], current=2, to=2)


def test_versions_are_read_as_vN_or_N() -> None:
    assert parse_version("v3") == 3
    assert parse_version(" 12 ") == 12
    for bad in ("v0", "three", "v-1", ""):
        with pytest.raises(Exception, match="not a model version"):
            parse_version(bad)


def test_a_pinned_run_keeps_the_champion_and_says_who_when_and_why() -> None:
    said = pinned_outcome(PIN, champion=3, challenger=4)
    assert said == "pinned by alice at 2026-12-06 14:00:00 UTC: release freeze: v4 stays challenger, v3 stays champion"
    assert blocked_promotion(PIN, champion_at_start=3, champion_now=3) == PIN.line()
    assert blocked_promotion(None, champion_at_start=3, champion_now=3) is None
    moved = blocked_promotion(None, champion_at_start=3, champion_now=2)
    assert moved == "the champion moved from v3 to v2 while the canary walked"
    assert outcome("promote:succeeded canary:skipped", None, said) == f"champion kept: {said}"


def test_serve_sync_follows_an_alias_moved_by_hand_and_leaves_a_canary_alone() -> None:
    assert moved_outside(recorded=2, current=1) is True
    assert moved_outside(recorded=2, current=2) is False
    assert moved_outside(recorded=None, current=None) is False
    assert follow_needed(champion=1, served=[2]) is True
    assert follow_needed(champion=1, served=[1, 2]) is False  # a canary walks: the step owns Serve
    assert follow_needed(champion=1, served=None) is False  # not answering: serve_champion_if_idle's case


def test_the_page_shows_the_pin_and_posts_each_action_as_json_to_the_api() -> None:
    from mlcycle_page import steering_section

    pinned = {"line": PIN.line(), "by": "alice"}
    html = steering_section("churn", pinned, {"version": 3})
    assert "data-pin='pinned'" in html and "pinned by alice at 2026-12-06 14:00:00 UTC: release freeze" in html
    assert "value='rollback'" in html and "value='unpin'" in html and "value='pin'" not in html
    assert "data-steer='../api/ml/pipelines/churn'" in html and '"content-type": "application/json"' in html
    free = steering_section("churn", None, {"version": 3})
    assert "data-pin='none'" in free and "value='pin'" in free
    assert "<form" not in steering_section("churn", None, None)  # no champion: nothing to steer
    assert "&lt;b&gt;" in steering_section("churn", {"line": "pinned by <b>x</b>"}, {"version": 1})


def test_the_steering_routes_want_a_login_before_anything_and_take_json_only() -> None:
    from fastapi import FastAPI, HTTPException
    from fastapi.testclient import TestClient
    from starlette.requests import Request

    from plugins.mlcycle_plugin import MlcyclePlugin
    from plugins.mlcycle_steering import json_only

    api = {a["url_prefix"]: a["app"] for a in MlcyclePlugin.fastapi_apps}["/api/ml"]
    client = TestClient(api)
    for action in ("rollback", "pin", "unpin"):
        answer = client.post(f"/pipelines/churn/{action}", data={"reason": "x"})  # a form, and no login
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
    paths = api.openapi()["paths"]
    assert {"/pipelines/{pipeline}/rollback", "/pipelines/{pipeline}/pin", "/pipelines/{pipeline}/unpin"} <= set(paths)
    assert isinstance(api, FastAPI)

    def request(kind: str) -> Request:
        return Request({"type": "http", "headers": [(b"content-type", kind.encode())]})

    json_only(request("application/json; charset=utf-8"))
    for kind in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"):
        with pytest.raises(HTTPException) as refused:
            json_only(request(kind))
        assert refused.value.status_code == 415


def test_the_model_commands_need_a_reason_and_read_a_version() -> None:
    from pipelines.cli import build_parser

    args = build_parser().parse_args(["model", "rollback", "churn", "--to", "v2", "--reason", "bad answers"])
    assert (args.action, args.pipeline, parse_version(args.to), args.reason) == ("rollback", "churn", 2, "bad answers")
    for argv in (["model", "pin", "churn"], ["model", "freeze", "churn", "--reason", "x"]):
        with pytest.raises(SystemExit) as refused:
            build_parser().parse_args(argv)
        assert refused.value.code == 2


def test_serve_sync_asks_readyz_with_a_key_of_this_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.core.settings import Settings
    from serving.steer import serving_key

    settings = Settings(state_dir=tmp_path)
    monkeypatch.delenv("MLCYCLE_SERVING_API_KEYS", raising=False)
    assert serving_key(settings) is None  # none made up
    (tmp_path / "serving-api-key").write_text("from-file\n")
    assert serving_key(settings) == "from-file"
    monkeypatch.setenv("MLCYCLE_SERVING_API_KEYS", " k1 , k2")
    assert serving_key(settings) == "k1"
