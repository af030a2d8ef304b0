"""The subcommands of who may do what and who did it: `keys create | list | revoke` (serving keys
per pipeline) and `audit` (a pipeline's trail). Their parser is `add_team`.

    mlcycle keys create --pipeline P [--pipeline Q] [--name LABEL]   prints the key once
    mlcycle keys list [--pipeline P] [--json]                        ids, labels, pipelines; never a key
    mlcycle keys revoke KEY_ID                                       refused by Serve within its reload
    mlcycle audit P [--limit N] [--json]                             who did what, newest first
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import TYPE_CHECKING, Any

from pipelines.core.settings import load_settings, spec_for
from pipelines.io import audit, db, keys

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def os_user() -> str:
    """Who runs this command, as the audit names them: the OS user (`--actor` overrides it)."""
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container's): the uid
        import os

        return f"uid:{os.getuid()}"


def add_team(sub: Subparsers) -> None:
    """`keys create | list | revoke`, `audit`."""
    ks = sub.add_parser("keys", help="serving keys per pipeline").add_subparsers(dest="action", required=True)
    p = ks.add_parser("create", help="a key for one or more pipelines (printed once, stored hashed)")
    p.add_argument("--pipeline", action="append", required=True, help="a pipeline it opens (repeatable)")
    p.add_argument("--name", default="", help="a label: who or what uses it")
    p.add_argument("--actor", help="who creates it, for the audit (default: the OS user)")
    p.set_defaults(func=cmd_keys_create)
    p = ks.add_parser("list", help="the keys: ids, labels, pipelines, who made or revoked them (never a key)")
    p.add_argument("--pipeline", help="only the keys that open this pipeline")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_list)
    p = ks.add_parser("revoke", help="revoke a key (Serve refuses it within MLCYCLE_SERVING_KEYS_RELOAD_S)")
    p.add_argument("key_id")
    p.add_argument("--actor", help="who revokes it, for the audit (default: the OS user)")
    p.set_defaults(func=cmd_keys_revoke)

    p = sub.add_parser("audit", help="who did what on a pipeline, newest first")
    p.add_argument("pipeline")
    p.add_argument("--limit", type=int, default=50, help="at most N events (default 50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)


def cmd_keys_create(args: argparse.Namespace) -> int:
    settings = load_settings()
    for pipeline in args.pipeline:
        spec_for(settings, pipeline)  # one that exists, or an error naming the known ones
    db.migrate(settings)
    row, secret = keys.create(settings, args.pipeline, args.name, args.actor or os_user())
    print(f"{row['id']}  opens {', '.join(row['pipelines'])}" + (f"  ({row['name']})" if row["name"] else ""))
    print(secret)
    print("This key is shown once and stored hashed: keep it now (`mlcycle keys revoke` ends it).")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    db.migrate(settings)
    rows = keys.listed(settings, args.pipeline)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    print(render_keys(rows))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    settings = load_settings()
    db.migrate(settings)
    row = keys.revoke(settings, args.key_id, args.actor or os_user())
    reload_s = settings.serving_keys_reload_s
    print(f"{row['id']} revoked: every endpoint refuses it within {reload_s:g} s (MLCYCLE_SERVING_KEYS_RELOAD_S)")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    settings = load_settings()
    db.migrate(settings)
    events = audit.events(settings, args.pipeline, limit=args.limit)
    if args.json:
        print(json.dumps(events, default=str, indent=2))
        return 0
    print(render_events(args.pipeline, events))
    return 0


def render_keys(rows: list[dict[str, Any]]) -> str:
    """The keys as a table: no secret, no hash (the rows carry neither). Pure."""
    if not rows:
        return "no serving keys (`mlcycle keys create --pipeline P`)"
    lines = [f"{'id':<17} {'pipelines':<24} {'name':<16} {'created':<17} {'by':<12} revoked"]
    for r in rows:
        revoked = f"{r['revoked_at']:%Y-%m-%d %H:%M} by {r['revoked_by']}" if r["revoked_at"] else "-"
        lines.append(
            f"{r['id']:<17} {','.join(r['pipelines']):<24} {r['name'] or '-':<16} "
            f"{r['created_at']:%Y-%m-%d %H:%M} {r['created_by']:<12} {revoked}"
        )
    return "\n".join(lines)


def render_events(pipeline: str, events: list[dict[str, Any]]) -> str:
    """A pipeline's audit trail, newest first, one line an event. Pure."""
    if not events:
        return f"{pipeline}: no audit events"
    lines = []
    for e in events:
        what = e["action"] + (f" v{e['version']}" if e["version"] is not None else "")
        what += f" run {e['run_id']}" if e["run_id"] else ""
        detail = " ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()))
        reason = f"  reason: {e['reason']}" if e["reason"] else ""
        lines.append(
            f"{e['at']:%Y-%m-%d %H:%M:%S}  {e['actor']} ({e['actor_kind']})  {what}  {detail}{reason}".rstrip()
        )
    return "\n".join(lines)
