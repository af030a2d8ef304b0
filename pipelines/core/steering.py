"""A person steering a pipeline's champion: the rollback's target, the pin, an alias moved outside
mlcycle. Pure: the decisions only; `pipelines.io.steering` reads and writes, `serving.steer` serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pipelines.core.errors import InvalidArgument


class RollbackError(InvalidArgument):
    """A rollback that cannot be done as asked: no earlier champion, or the version named is the champion."""


@dataclass(frozen=True)
class Pin:
    """A pipeline's champion frozen by a person: who, when, why (and the champion it froze)."""

    pipeline: str
    by: str
    at: datetime
    reason: str
    version: int | None = None

    def line(self) -> str:
        """What a skipped canary, `mlcycle status` and the page say of it."""
        return f"pinned by {self.by} at {self.at:%Y-%m-%d %H:%M:%S %Z}".rstrip() + f": {self.reason}"


def champion_stack(trail: Sequence[int | None]) -> list[int]:
    """The champions in force, oldest first, from the champion alias's trail (each move's
    `to_version`, oldest first): a move to a version already on the stack goes back to it (a
    rollback, or an alias moved back by hand) and drops the versions above it; any other move
    stacks its version; a deleted alias (None) changes nothing. Pure."""
    stack: list[int] = []
    for version in trail:
        if version is None:
            continue
        if version in stack:
            del stack[stack.index(version) + 1 :]
        else:
            stack.append(version)
    return stack


def rollback_target(trail: Sequence[int | None], current: int, to: int | None = None) -> int:
    """The version a rollback restores: `to` when named (any version but the champion), else the
    champion before `current` in the trail (`champion_stack`), so a second rollback goes further
    back rather than undoing the first. Pure."""
    if to is not None:
        if to == current:
            raise RollbackError(f"v{to} is the champion already")
        if to < 1:
            raise RollbackError(f"no version v{to}: versions start at 1")
        return to
    stack = champion_stack(trail)
    if current in stack:
        del stack[stack.index(current) :]
    earlier = [v for v in stack if v != current]
    if not earlier:
        raise RollbackError(f"v{current} is the first champion on record: no earlier one to go back to (use --to vN)")
    return earlier[-1]


def parse_version(text: str) -> int:
    """`vN` or `N` as the version number N (>= 1). Pure."""
    raw = text.strip().lower().removeprefix("v")
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidArgument(f"not a model version: {text!r} (write it vN, e.g. v3)")
    return int(raw)


def moved_outside(recorded: int | None, current: int | None) -> bool:
    """Whether the champion alias was moved outside mlcycle: it names another version than the
    last move mlcycle recorded (`recorded`: the trail's latest `to_version`). Pure."""
    return current is not None and current != recorded


def follow_needed(champion: int | None, served: Sequence[int] | None) -> bool:
    """Whether Serve must be moved to the champion: the application serves versions and the champion
    is not among them (a canary serves both champion and challenger, and is left alone; an
    application not running at all is `serve_champion_if_idle`'s). Pure."""
    return champion is not None and served is not None and len(served) > 0 and champion not in served


def blocked_promotion(pin: Pin | None, champion_at_start: int, champion_now: int | None) -> str | None:
    """Why a canary that passed must not move the champion, or None: the pipeline is pinned, or the
    champion moved while the canary walked (a rollback, an alias moved by hand). Pure."""
    if pin is not None:
        return pin.line()
    if champion_now != champion_at_start:
        now = f"v{champion_now}" if champion_now is not None else "none"
        return f"the champion moved from v{champion_at_start} to {now} while the canary walked"
    return None


def pinned_outcome(pin: Pin, champion: int | None, challenger: int | None) -> str:
    """What a pinned pipeline's run says where it would have moved the champion. Pure."""
    stays = f"v{champion} stays champion" if champion is not None else "no champion is made"
    held = f"v{challenger} stays challenger, " if challenger is not None and challenger != champion else ""
    return f"{pin.line()}: {held}{stays}"
