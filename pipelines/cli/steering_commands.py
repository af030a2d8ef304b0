"""`mlcycle model rollback | pin | unpin`: a person steering a pipeline's champion from the shell.

The actor the audit trail records is the login name of the shell's user; the platform API and the
mlcycle page record the Airflow user instead.
"""

from __future__ import annotations

import argparse
import getpass
import json

from pipelines.core.settings import Settings, load_settings, spec_for
from pipelines.core.steering import parse_version
from pipelines.io import db, steering
from pipelines.steps.runner import run_step
from serving.steer import rollback


def cli_actor() -> str:
    """Who the audit trail says acted from this shell: its user's login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container's): say so rather than guess
        return "unknown-shell-user"


def cmd_model(args: argparse.Namespace) -> int:
    settings = load_settings()
    spec_for(settings, args.pipeline)  # one that exists, or an error naming the known ones
    db.migrate(settings)
    actor = cli_actor()
    if args.action == "pin":
        pin = steering.pin(settings, args.pipeline, actor, "user", args.reason)
        print(f"{args.pipeline}: v{pin.version} {pin.line()}; runs train and evaluate, the champion stays")
        return 0
    if args.action == "unpin":
        pin = steering.unpin(settings, args.pipeline, actor, "user", args.reason)
        print(f"{args.pipeline}: unpinned (was {pin.line()}); promotion allowed again")
        return 0
    to = parse_version(args.to) if getattr(args, "to", None) else None
    done = rollback(settings, args.pipeline, to, actor, "user", args.reason)
    if done["vector_space"] == "dropped" and done.get("run_id"):
        done["vector_space"] = rebuild_space(settings, args.pipeline, done["to"], done["run_id"])
    serving = f"after {done['serve_s']:.1f}s" if done["serve_s"] is not None else f"not yet: {done['serving']}"
    print(
        f"{args.pipeline}: champion v{done['from']} -> v{done['to']} (rollback by {actor}); Serve answers with "
        f"v{done['to']} alone {serving}; vector space: {done['vector_space']}"
    )
    print(json.dumps(done, default=str))
    return 0


def rebuild_space(settings: Settings, pipeline: str, version: int, run_id: str) -> str:
    """Build a restored version's dropped vector space again: the `embed` step of the run that
    registered it, on that run's snapshot."""
    steering.forget_dropped_space(settings, pipeline, version)
    out = run_step("embed", pipeline, run_id, settings, force=True)
    return f"rebuilt ({out.get('rows') or out.get('added')} vectors, recall@10 {out.get('recall_at_10')})"


def add_steering(model: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`model rollback | pin | unpin` (beside the approval's actions under `model`)."""
    helps = {
        "rollback": "move the champion back to the previous (or named) version",
        "pin": "freeze promotion: runs train and evaluate, the champion stays",
        "unpin": "allow promotion again",
    }
    for action, what in helps.items():
        p = model.add_parser(action, help=what)
        p.add_argument("pipeline")
        if action == "rollback":
            p.add_argument("--to", metavar="vN", help="the version to restore (default: the previous champion)")
        p.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
        p.set_defaults(func=cmd_model)
