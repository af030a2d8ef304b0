"""What each pipeline's application serves, in the platform database (`serving_args`, migration
0021), and the two notification channels around it: `mlcycle_serving_args` (a new generation was
published: its payload is the pipeline) and `mlcycle_serving_applied` (a replica saw or applied a
generation: its payload is a JSON `pipelines.core.acks.Ack`). `serving.deploy` publishes and
waits for the acks (`applied`); the ingress replicas follow (`serving.follow`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.core.acks import Ack, AckTally

if TYPE_CHECKING:
    import psycopg

PUBLISHED = "mlcycle_serving_args"
APPLIED = "mlcycle_serving_applied"


@dataclass(frozen=True)
class Published:
    """One pipeline's row: the generation, the layout it needs and the arguments (a `ServingArgs`
    dict without `generation` and `layout`)."""

    generation: int
    layout: str
    args: dict[str, Any]


def publish(conn: psycopg.Connection[Any], pipeline: str, layout: str, args: dict[str, Any]) -> tuple[int, str | None]:
    """Write the pipeline's next generation and notify the replicas (at commit): `(generation, the
    layout of the generation before it, or None for the first)`."""
    found = conn.execute("SELECT layout FROM serving_args WHERE pipeline = %s FOR UPDATE", (pipeline,)).fetchone()
    row = conn.execute(
        "INSERT INTO serving_args (pipeline, generation, layout, args) VALUES (%(p)s, 1, %(l)s, %(a)s) "
        "ON CONFLICT (pipeline) DO UPDATE SET generation = serving_args.generation + 1, layout = EXCLUDED.layout, "
        "args = EXCLUDED.args, updated_at = now() RETURNING generation",
        {"p": pipeline, "l": layout, "a": json.dumps(args)},
    ).fetchone()
    conn.execute("SELECT pg_notify(%s, %s)", (PUBLISHED, pipeline))
    return (int(row[0]) if row is not None else 0), (str(found[0]) if found is not None else None)


def read(conn: psycopg.Connection[Any], pipeline: str) -> Published | None:
    row = conn.execute("SELECT generation, layout, args FROM serving_args WHERE pipeline = %s", (pipeline,)).fetchone()
    return None if row is None else Published(int(row[0]), str(row[1]), dict(row[2]))


def acknowledge(conn: psycopg.Connection[Any], ack: Ack) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (APPLIED, ack.payload()))


def applied(
    listener: psycopg.Connection[Any], tally: AckTally, replicas: Callable[[], int], follow_s: float, apply_s: float
) -> bool:
    """Wait on `listener` (LISTENing on `APPLIED` since before the publish) until every running
    replica (`replicas()`, asked again every few seconds: autoscaling) applied the tally's
    generation: True; False where they did not all say within `follow_s` that they follow it (a
    replica of another layout, a database outage). `DeployFailed` where one failed to apply it,
    `TimeoutError` where they followed and did not apply it within `apply_s`."""
    started = time.monotonic()
    running, asked = replicas(), started
    while not tally.done(running):
        now = time.monotonic()
        if now - asked > 3.0:
            running, asked = replicas(), now
        limit = follow_s if not tally.followed(running) else apply_s
        if now - started > limit:
            if not tally.followed(running):
                return False
            raise TimeoutError(f"{tally.pipeline}: generation {tally.generation} not applied in {apply_s:.0f}s")
        for note in listener.notifies(timeout=0.5, stop_after=1):
            tally.add(Ack.parse(note.payload))
    return True
