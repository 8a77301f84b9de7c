"""``meshtui replicas`` and ``meshtui replicas replace OLD NEW``: PBFT's replica group.

``replicas`` lists the replicas (with their key fingerprints), the hosts that
follow, the view and primary, and a replacement waiting for its checkpoint.
``replicas replace OLD NEW`` (names or ids) asks the cluster to replace OLD by
NEW through the protocol itself; it takes effect at the next checkpoint
boundary (docs/internals.md §6 PBFT).  Refusals are one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from meshtui.commands import EXIT_OK, EXIT_USAGE, with_session
from meshtui.targets import Session


def add_parser(sub: Any, common: Any) -> None:
    """``meshtui replicas [replace OLD NEW]`` (``common``: cli._common)."""
    p = sub.add_parser("replicas", help="PBFT's replica group; replace OLD NEW through the protocol")
    common(p)
    p.add_argument("op", nargs="?", choices=["replace"], help="replace OLD by NEW")
    p.add_argument("old", nargs="?", metavar="OLD", help="the replica to replace (name or id)")
    p.add_argument("new", nargs="?", metavar="NEW", help="the live member to take its place")


def cmd_replicas(args: argparse.Namespace) -> int:
    if args.op == "replace" and not (args.old and args.new):
        sys.stderr.write("meshtui: replicas replace needs OLD and NEW\n")
        return EXIT_USAGE
    if args.op is None and (args.old or args.new):
        sys.stderr.write("meshtui: replicas takes no arguments (did you mean 'replicas replace OLD NEW'?)\n")
        return EXIT_USAGE
    return int(_run(args))


@with_session
def _run(args: argparse.Namespace, session: Session) -> int:
    if args.op == "replace":
        done = session.call("replicas.replace", old=args.old, new=args.new)
        if args.json:
            _json(done)
        else:
            print(f"replace {done['old']} -> {done['new']} agreed; "
                  f"in effect after checkpoint {done['effective_after']}")
        return EXIT_OK
    view = session.call("replicas.list")
    cons = session.call("status").get("consensus", {})
    if args.json:
        _json({**view, "view": cons.get("term"), "primary": cons.get("leader")})
        return EXIT_OK
    print(f"pbft n={view['n']} f={view['f']} view={cons.get('term')} primary={cons.get('leader')}")
    fingerprints = view.get("fingerprints") or {}
    for row in view["replicas"]:
        print(f"replica  {row['name']:<16} {row['id']}  {fingerprints.get(row['id']) or ''}")
    for row in view["followers"]:
        print(f"follower {row['name']:<16} {row['id']}")
    pending = view.get("pending")
    if pending:
        names = ",".join(r["name"] for r in pending["replicas"])
        print(f"pending: replicas {names} after checkpoint {pending['effective_after']}")
    return EXIT_OK


def _json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=lambda v: v.decode("utf-8", "replace"))
    sys.stdout.write("\n")
