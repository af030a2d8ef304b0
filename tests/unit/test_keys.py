"""Serving keys and the audit's views, as pure logic: how a presented key is judged, what a key
request may say, and how the trail prints (the real table and endpoint: tests/integration/test_serving_keys.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.core.errors import InvalidArgument
from pipelines.core.keys import BOOTSTRAP_ID, Grant, check_request, grants, judge, key_hash, new_key_id, new_secret


def test_a_key_opens_its_pipelines_others_get_403_and_unknown_or_revoked_401() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("mlk_") and len(a) == 4 + 43  # 256 random bits, URL-safe
    live = [("key_000000000001", key_hash(a), ["churn"]), ("key_000000000002", key_hash(b), ["churn", "fraud"])]
    table = grants(["boot"], live)
    assert judge(table, a, "churn") == (200, "key_000000000001")
    assert judge(table, a, "fraud") == (403, "key_000000000001")
    assert judge(table, b, "fraud") == (200, "key_000000000002")
    assert judge(table, "boot", "anything") == (200, BOOTSTRAP_ID)  # the bootstrap key: every pipeline
    assert judge(table, "", "churn") == (401, None)
    assert judge(table, a + "x", "churn") == (401, None)
    revoked = grants(["boot"], live[1:])  # a reload without the revoked row
    assert judge(revoked, a, "churn") == (401, None)
    assert a not in repr(table) and all(isinstance(g, Grant) for g in table.values())  # held hashed only
    # a grant found under a hash it does not carry is refused (the constant-time check after the lookup)
    assert judge({key_hash(a): Grant("key_x", None, "0" * 64)}, a, "churn") == (401, None)


def test_a_key_request_names_known_shaped_pipelines_and_a_short_label() -> None:
    assert check_request("ci bot", ["fraud", "churn", "churn"]) == ("ci bot", ("churn", "fraud"))
    assert new_key_id().startswith("key_") and len(new_key_id()) == 16
    with pytest.raises(InvalidArgument, match="at least one pipeline"):
        check_request("", [])
    with pytest.raises(InvalidArgument, match="not a pipeline name"):
        check_request("", ["../etc"])
    with pytest.raises(InvalidArgument, match="--name"):
        check_request("<script>", ["churn"])


def test_the_trail_prints_newest_first_with_actors_and_the_page_escapes_it() -> None:
    from mlcycle_audit import audit_section

    from pipelines.cli.team_commands import render_events, render_keys

    at = datetime(2026, 12, 6, 14, 0, tzinfo=UTC)
    events = [
        {"at": at, "actor": "alice", "actor_kind": "user", "action": "trigger", "version": None,
         "run_id": "manual__1", "reason": "", "detail": {"via": "api"}},
        {"at": at, "actor": "<b>eve</b>", "actor_kind": "user", "action": "key_created", "version": 3,
         "run_id": None, "reason": "new client", "detail": {"key_id": "key_1"}},
    ]  # fmt: skip
    text = render_events("churn", events).splitlines()
    assert text[0] == "2026-12-06 14:00:00  alice (user)  trigger run manual__1  via=api"
    assert text[1].endswith("key_created v3  key_id=key_1  reason: new client")
    assert render_events("churn", []) == "churn: no audit events"
    html = audit_section(events)
    assert "<td>alice" in html and "&lt;b&gt;eve&lt;/b&gt;" in html and "<b>eve" not in html
    assert "No action recorded yet" in audit_section([])
    row = {"id": "key_1", "pipelines": ["churn"], "name": "", "created_at": at, "created_by": "bob"}
    assert "key_1" in render_keys([{**row, "revoked_at": None, "revoked_by": None}])
    assert "2026-12-06 14:00 by carol" in render_keys([{**row, "revoked_at": at, "revoked_by": "carol"}])
