"""The scriptable ``meshtui`` subcommands: each takes parsed args, returns an exit code.

Human output is a plain table; ``--json`` prints exactly the API's shape
(DESIGN.md, Operator contract) so scripts can rely on it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from meshtui.targets import ResolvedTarget, Session, TargetError, resolve_target

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_NO_QUORUM, EXIT_CONNECT = 0, 1, 2, 3, 4
EXIT_DISK_FULL = 5

Command = Callable[[argparse.Namespace], int]


def fail(message: str, code: int) -> int:
    sys.stderr.write(f"meshtui: {message}\n")
    return code


def with_session(fn: Callable[[argparse.Namespace, Session], int]) -> Command:
    """Resolve the target, connect, run, and turn every failure into one line + exit code."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from meshtui.rpc import ClientError

        try:
            target = resolve_target(getattr(args, "target", None), getattr(args, "inventory", None))
            wait = request_timeout(args)
        except TargetError as exc:
            return fail(str(exc), EXIT_USAGE)
        except ValueError as exc:  # a bad --request-timeout / MESHTUI_REQUEST_TIMEOUT
            return fail(str(exc), EXIT_USAGE)
        try:
            with Session(target, request_timeout=wait) as session:
                return fn(args, session)
        except ClientError as exc:
            return fail(exc.message, exc.exit_code)
        except BrokenPipeError:  # our stdout was closed (``| head``): not an agent problem
            return EXIT_OK
        except (ConnectionError, FileNotFoundError, OSError) as exc:
            return fail(_connect_error(target, exc), EXIT_CONNECT)
        except KeyboardInterrupt:
            return 130

    return wrapper


DEFAULT_REQUEST_TIMEOUT = 5.0
"""Seconds a request may wait for a leader while the cluster forms or elects (then
exit 3): a few election timeouts on a LAN, short enough for a script to retry."""


def request_timeout(args: argparse.Namespace) -> float:
    """``--request-timeout``, else ``$MESHTUI_REQUEST_TIMEOUT``, else 5 s.
    ``ValueError`` (one line) if not a number of seconds in (0, 300]."""
    value = getattr(args, "request_timeout", None)
    source = "--request-timeout"
    if value is None:
        raw = os.environ.get("MESHTUI_REQUEST_TIMEOUT", "").strip()
        if not raw:
            return DEFAULT_REQUEST_TIMEOUT
        source = "MESHTUI_REQUEST_TIMEOUT"
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{source}={raw!r}: not a number of seconds") from None
    if not 0 < value <= 300:  # NaN fails this too
        raise ValueError(f"{source} {value:g}: must be more than 0 and at most 300 seconds")
    return float(value)


def _connect_error(target: ResolvedTarget, exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if target.kind == "unix" and isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return f"cannot connect to {target.label}: no agent is running there ({reason})"
    return f"cannot connect to {target.label}: {reason}"


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def new_rid() -> str:
    """Idempotency id: a retried request with the same rid applies once."""
    return uuid.uuid4().hex


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:.0f}%"


def pbft_group_lines(pbft: Any) -> list[str]:
    """The replica group, a replacement decided and not yet in effect, and whether
    this host has left the group (PBFT's ``status``); the CLI and the TUI print these."""
    lines: list[str] = []
    if pbft.get("replicas"):
        lines.append("replicas: " + " ".join(str(r) for r in pbft["replicas"]))
    pending = pbft.get("replace_pending")
    if isinstance(pending, dict):
        lines.append("replacement pending: replicas become " +
                     " ".join(str(r) for r in pending.get("replicas") or []) +
                     f" after checkpoint {pending.get('at')}")
    if pbft.get("retired"):
        lines.append("retired: this host was replaced and no longer takes part")
    return lines


def _print_pbft(pbft: Any) -> None:
    """PBFT's lines of ``meshtui status`` (issue 13): view, watermarks, keys, evidence."""
    if not isinstance(pbft, dict):
        return
    print(
        f"pbft: view={pbft.get('view')} primary={pbft.get('primary')} "
        f"active={pbft.get('active')} n={pbft.get('n')} f={pbft.get('f')} "
        f"watermarks={pbft.get('low')}..{pbft.get('high')} executed={pbft.get('executed')} "
        f"view_changes={pbft.get('view_changes')}"
    )
    for line in pbft_group_lines(pbft):
        print(line)
    for name, fp in sorted((pbft.get("fingerprints") or {}).items()):
        print(f"  key {name}: {fp}")
    for ev in pbft.get("evidence") or []:
        print(f"EVIDENCE: {ev.get('summary')}")


@with_session
def cmd_status(args: argparse.Namespace, session: Session) -> int:
    status = session.call("status")
    if args.json:
        print_json(status)
        return EXIT_OK
    cons = status.get("consensus", {})
    tasks = status.get("tasks", {})
    banner = "  READ-ONLY (no quorum)" if status.get("read_only") else ""
    print(f"node {status.get('node')}{banner}")
    for alarm in status.get("alarms") or []:  # a full disk (agent/runtime/diskfull.py)
        print(f"ALARM: {alarm.get('message')} ({alarm.get('error')}, {alarm.get('what')})")
    print(
        f"consensus {cons.get('engine')}: role={cons.get('role')} term={cons.get('term')} "
        f"leader={cons.get('leader')} commit={cons.get('commit_index')} "
        f"voters={','.join(cons.get('voters') or [])}"
    )
    _print_pbft(cons.get("pbft"))
    print(
        "tasks: " + " ".join(f"{k}={tasks.get(k, 0)}" for k in ("queued", "running", "done", "failed"))
    )
    rows = [
        [m["name"], m["addr"], m["state"], m.get("role"), _pct(m.get("cpu")), _pct(m.get("mem")),
         m.get("tasks"), ",".join(m.get("caps") or []),
         "-" if m.get("rtt_ms") is None else f"{m['rtt_ms']:.1f}"]
        for m in status.get("members", [])
    ]
    print_table(["name", "addr", "state", "role", "cpu", "mem", "tasks", "caps", "rtt_ms"], rows)
    return EXIT_OK


def _node_command(method: str) -> Command:
    @with_session
    def run(args: argparse.Namespace, session: Session) -> int:
        session.call(method, node=args.node, rid=new_rid())
        if not args.json:
            print(f"{method.split('.')[1]}ed {args.node}")
        return EXIT_OK

    return run


cmd_drain = _node_command("node.drain")
cmd_undrain = _node_command("node.undrain")


@with_session
def cmd_kv(args: argparse.Namespace, session: Session) -> int:
    ns = args.namespace
    if args.op == "get":
        got = session.call("kv.get", ns=ns, key=args.key, stale=args.stale)
        if not got["found"]:
            return fail(f"kv get: {ns}/{args.key}: not found", EXIT_NOT_FOUND)
        if args.json:
            print_json(got)
        else:
            sys.stdout.buffer.write(got["value"] + b"\n")
        return EXIT_OK
    if args.op == "put":
        ttl = {} if args.ttl is None else {"ttl": float(args.ttl)}
        if args.ttl is not None and not 0 < args.ttl <= 365 * 86400:
            return fail("kv put: --ttl must be more than 0 and at most a year", EXIT_USAGE)
        res = session.call(
            "kv.put", ns=ns, key=args.key, value=args.value.encode(), rid=new_rid(), **ttl)
    elif args.op == "del":
        res = session.call("kv.delete", ns=ns, key=args.key, rid=new_rid())
        if not res.get("deleted", True):
            return fail(f"kv del: {ns}/{args.key}: not found", EXIT_NOT_FOUND)
    else:
        if args.op == "search":
            res = session.call("kv.search", ns=ns, pattern=args.key, stale=args.stale)
        else:
            res = session.call("kv.list", ns=ns, prefix=args.key, stale=args.stale)
        if not args.json:
            for key, value in res["items"]:
                print(f"{key}\t{value.decode('utf-8', 'replace')}")
            return EXIT_OK
    if args.json:
        print_json(res)
    return EXIT_OK


@with_session
def cmd_propose(args: argparse.Namespace, session: Session) -> int:
    if not 0 < args.threshold <= 1:
        return fail("propose: --threshold must be in (0, 1]", EXIT_USAGE)
    res = session.call(
        "proposal.create", title=args.title, body=args.body, threshold=args.threshold, rid=new_rid()
    )
    if args.json:
        print_json(res)
    else:
        print(res["id"])
    return EXIT_OK


@with_session
def cmd_vote(args: argparse.Namespace, session: Session) -> int:
    res = session.call("proposal.vote", id=args.proposal, approve=args.choice == "yes", rid=new_rid())
    if args.json:
        print_json(res)
    else:
        print(json.dumps(res.get("tally", res), default=_json_default))
    return EXIT_OK


@with_session
def cmd_proposals(args: argparse.Namespace, session: Session) -> int:
    rows = session.call("proposal.list")
    if args.json:
        print_json(rows)
        return EXIT_OK
    print_table(
        ["id", "title", "state", "yes", "no", "threshold"],
        [[p["id"], p["title"], p["state"], p["yes"], p["no"], p["threshold"]] for p in rows],
    )
    return EXIT_OK


@with_session
def cmd_report(args: argparse.Namespace, session: Session) -> int:
    timeframe = getattr(args, "timeframe", None)
    report = session.call("report", **({"timeframe": timeframe} if timeframe else {}))
    if args.json:
        print_json(report)
        return EXIT_OK
    history = report.pop("history", None)
    for key, value in report.items():
        print(f"{key:28} {json.dumps(value, default=_json_default)}")
    if isinstance(history, dict):
        _print_history(history)
    return EXIT_OK


def _print_history(history: dict[str, Any]) -> None:
    """``report --timeframe``: one line per series of the agent's history."""
    print(f"\nhistory over {history.get('timeframe', 0) / 3600:g} h "
          f"(slots of {history.get('step')} s): min / mean / max / last")
    for name, row in history.get("series", {}).items():
        if not row.get("slots"):
            print(f"  {name:24} no samples")
            continue
        print(f"  {name:24} {row['min']:g} / {row['mean']:g} / {row['max']:g} / {row['last']:g}"
              f"  ({row['slots']} slots)")


@with_session
def cmd_transfer_leader(args: argparse.Namespace, session: Session) -> int:
    session.call("leader.transfer", to=args.to)
    if not args.json:
        print("leadership transfer requested")
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    """With ``-i`` and no target: rotate across the inventory's hosts; else one agent."""
    if args.op == "install":
        key_file = getattr(args, "key_file", None)
        if key_file and args.key:
            return fail("keys install: give the key or --key-file, not both", EXIT_USAGE)
        if key_file:
            from agent.errors import ConfigError
            from agent.keyfile import read_key_text

            try:  # refused, as the agent refuses it, if group or others may read it
                args.key = read_key_text(key_file, field="--key-file").strip()
            except ConfigError as exc:
                return fail(f"keys install: {exc}", EXIT_USAGE)
    if getattr(args, "inventory", None) and not getattr(args, "target", None):
        from inventory.cli import run_inventory_command

        return run_inventory_command("keys", args)
    if args.op == "install" and not args.key:
        return fail("keys install: give the key or --key-file FILE", EXIT_USAGE)
    return _keys_on_agent(args)


@with_session
def _keys_on_agent(args: argparse.Namespace, session: Session) -> int:
    params: dict[str, Any] = {}
    if args.op == "install":
        params["key"] = args.key
    elif args.op in ("use", "remove"):
        params["key_id"] = args.key
    res = session.call(f"keys.{args.op}", **params)
    if args.json:
        print_json(res)
    else:
        for key in res.get("keys", []):
            mark = "*" if key.get("primary") else " "
            print(f"{mark} {key['id']}")
    return EXIT_OK


def cmd_attach(args: argparse.Namespace) -> int:
    # ``meshtui attach -t A -t B``: several clusters, ``x`` switches between them.
    texts: list[str | None] = [args.attach_target] if args.attach_target else []
    given = args.target if isinstance(args.target, list) else [args.target] if args.target else []
    texts += given
    try:
        targets = [resolve_target(text, args.inventory) for text in texts or [None]]
    except TargetError as exc:
        return fail(str(exc), EXIT_USAGE)
    from meshtui.app import run_app
    from meshtui.connect import client_factory_for

    first, *more = targets
    run_app(
        client_factory_for(first), first.label, clusters=[(t.label, client_factory_for(t)) for t in more]
    )
    return EXIT_OK


@with_session
def cmd_events(args: argparse.Namespace, session: Session) -> int:
    """``events send``: publish and report who acknowledged it; ``events list``: what
    this node received (``--follow`` keeps polling)."""
    if args.op == "send":
        res = session.call("events.send", name=args.name, payload=args.payload.encode(),
                           to=args.to, **{"from": args.sender}, wait=float(args.wait))
        if args.json:
            print_json(res)
        else:
            print(f"{res['id']} to {res['to']}: delivered {len(res['delivered'])}"
                  f"/{len(res['expected'])} ({', '.join(res['delivered'])})"
                  + (f", pending {', '.join(res['pending'])}" if res["pending"] else ""))
        return EXIT_OK if not res["pending"] or not args.wait else EXIT_NOT_FOUND
    since = args.since
    while True:
        res = session.call("events.list", since=since, name=args.name)
        for row in res["events"]:
            if args.json:
                print(json.dumps(row, default=_json_default), flush=True)
            else:
                payload = row["payload"].decode("utf-8", "replace")
                print(f"{row['seq']}\t{row['name']}\tfrom={row['from']} via={row['origin']}"
                      f" to={row['to']}\t{payload}", flush=True)
            since = row["seq"]
        if not args.follow:
            return EXIT_OK
        time.sleep(0.5)


def cmd_mcp(args: argparse.Namespace) -> int:
    """The MCP tools on stdio (``meshtui/mcp/``; needs the ``mcp`` extra)."""
    try:
        target = resolve_target(args.target, args.inventory)
    except TargetError as exc:
        return fail(str(exc), EXIT_USAGE)
    try:
        from meshtui.mcp.server import run_stdio
    except ImportError as exc:
        return fail(f"mcp: the MCP SDK is not installed ({exc.name}): "
                     "pip install 'meshtui[mcp]'", EXIT_USAGE)
    return run_stdio(target)


def cmd_serve(args: argparse.Namespace) -> int:
    """The TUI in a browser through textual-serve (``meshtui/serve.py``; ``web`` extra)."""
    from meshtui.serve import serve

    return serve(args)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 15:
        return fail("demo: --nodes must be 1-15", EXIT_USAGE)
    from meshtui.demo import run_demo

    return run_demo(args.nodes, tui=not args.no_tui, workload=not args.no_workload)


def _inventory_command(name: str) -> Command:
    def run(args: argparse.Namespace) -> int:
        from inventory.cli import run_inventory_command

        return run_inventory_command(name, args)

    return run


cmd_deploy = _inventory_command("deploy")
cmd_undeploy = _inventory_command("undeploy")
cmd_upgrade = _inventory_command("upgrade")
