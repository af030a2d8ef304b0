"""Published serving arguments on the real database: a generation is numbered, the replicas'
follower applies each new one of its layout as soon as it is notified and says so, and a deploy
hears it (`pipelines.io.servingargs.applied`). Serve itself is exercised in test_serving.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pipelines.core.acks import AckTally, DeployFailed
from pipelines.core.settings import Settings
from pipelines.io import db, servingargs
from pipelines.io.db import database_url
from pipelines.io.servingargs import Published
from serving.follow import APPLICATION_NAME, ArgsFollower

pytestmark = pytest.mark.integration


def _publish(settings: Settings, pipeline: str, layout: str, args: dict[str, object]) -> tuple[int, str | None]:
    with db.connect(settings) as conn:
        return servingargs.publish(conn, pipeline, layout, args)


class Replica:
    """A follower and what it applied; `refuse` names a generation it fails to apply."""

    def __init__(self, settings: Settings, pipeline: str, name: str = "r1") -> None:
        self.applied: list[tuple[int, dict[str, object]]] = []
        self.refuse = -1
        self.follower = ArgsFollower(pipeline, name, lambda: database_url(settings), self.apply, resync_s=1.0)

    def apply(self, published: Published) -> str:
        if published.generation == self.refuse:
            return "version 9 does not load"
        self.applied.append((published.generation, published.args))
        return ""


@pytest.fixture
def replica(platform: Settings) -> Iterator[Replica]:
    r = Replica(platform, "args_demo")
    yield r
    r.follower.stop()


def _wait(until: object, timeout_s: float = 15.0) -> None:
    began = time.monotonic()
    while not until() and time.monotonic() - began < timeout_s:  # type: ignore[operator]
        time.sleep(0.05)


def test_each_publish_is_the_next_generation_and_names_the_layout_before_it(platform: Settings) -> None:
    assert _publish(platform, "args_numbered", "L1", {"w": 1}) == (1, None)
    assert _publish(platform, "args_numbered", "L1", {"w": 2}) == (2, "L1")
    assert _publish(platform, "args_numbered", "L2", {"w": 3}) == (3, "L1")
    with db.connect(platform) as conn:
        assert servingargs.read(conn, "args_numbered") == Published(3, "L2", {"w": 3})
        assert servingargs.read(conn, "args_never") is None


def test_a_follower_applies_each_new_generation_of_its_layout_and_a_deploy_hears_it(
    platform: Settings, replica: Replica
) -> None:
    first, _ = _publish(platform, "args_demo", "L1", {"w": 1})
    replica.follower.follow("L1", 0)  # a replica's start: the row it finds is applied at once
    _wait(lambda: replica.applied)
    assert replica.applied == [(first, {"w": 1})]

    with db.connect(platform, autocommit=True) as listener:
        listener.execute(f"LISTEN {servingargs.APPLIED}")
        began = time.monotonic()
        second, before = _publish(platform, "args_demo", "L1", {"w": 2})
        tally = AckTally("args_demo", second)
        assert before == "L1" and servingargs.applied(listener, tally, lambda: 1, 5.0, 30.0)
        took = time.monotonic() - began
    assert replica.applied[-1] == (second, {"w": 2}) and tally.applied == {"r1"}
    print(f"\npublished -> applied and acknowledged: {took * 1000:.0f} ms")  # notified, not polled (resync 1 s)

    # a row of another layout (Serve redeploys those) is not the follower's
    _publish(platform, "args_demo", "L2", {"w": 3})
    time.sleep(2.5)  # two resyncs
    assert replica.applied[-1] == (second, {"w": 2})


def test_a_generation_a_replica_cannot_apply_fails_the_deploy_and_is_not_tried_again(
    platform: Settings, replica: Replica
) -> None:
    _publish(platform, "args_demo", "L1", {"w": 1})
    replica.follower.follow("L1", 0)
    _wait(lambda: replica.applied)
    with db.connect(platform, autocommit=True) as listener:
        listener.execute(f"LISTEN {servingargs.APPLIED}")
        replica.refuse, _ = _publish(platform, "args_demo", "L1", {"w": "broken"})
        with pytest.raises(DeployFailed, match="replica r1 did not apply it: version 9 does not load"):
            servingargs.applied(listener, AckTally("args_demo", replica.refuse), lambda: 1, 5.0, 30.0)
    applied_before = len(replica.applied)
    time.sleep(2.5)
    assert len(replica.applied) == applied_before  # the broken generation is not retried every resync


def test_replicas_that_do_not_follow_leave_the_deploy_to_serve(platform: Settings) -> None:
    """No follower of the layout answers (a hand-written Serve config, another layout): `applied`
    says so after `follow_s`, and the deploy goes through Serve."""
    with db.connect(platform, autocommit=True) as listener:
        listener.execute(f"LISTEN {servingargs.APPLIED}")
        generation, _ = _publish(platform, "args_unfollowed", "L1", {"w": 1})
        began = time.monotonic()
        assert not servingargs.applied(listener, AckTally("args_unfollowed", generation), lambda: 1, 1.0, 30.0)
        assert time.monotonic() - began < 10


def test_a_follower_survives_a_database_outage_and_catches_up(platform: Settings, replica: Replica) -> None:
    """Its connection dropped (the database restarted, a failover): it reconnects and applies the
    generation published meanwhile."""
    _publish(platform, "args_demo", "L1", {"w": 1})
    replica.follower.follow("L1", 0)
    _wait(lambda: replica.applied)
    with db.connect(platform, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s) t",
            (APPLICATION_NAME,),
        ).fetchone()
    assert ended is not None and ended[0] >= 1
    latest, _ = _publish(platform, "args_demo", "L1", {"w": "after"})
    _wait(lambda: replica.applied[-1][0] == latest)
    assert replica.applied[-1] == (latest, {"w": "after"})
