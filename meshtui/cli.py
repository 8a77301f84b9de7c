"""``meshtui``: the operator CLI (scriptable commands) and the TUI entry point.

Exit codes (docs/internals.md §4): 0 ok, 1 not found / task failed,
2 usage or config error, 3 no quorum, 4 cannot connect, 5 disk full (a node's
Raft disk is full and no healthy majority could take the write).

Only the ``attach`` and ``demo`` commands import Textual; ``status``, ``kv``,
``submit`` and friends against a local socket import neither textual, asyncssh
nor zeroconf, so they start in well under 150 ms.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_QUORUM = 3
EXIT_CONNECT = 4
EXIT_DISK_FULL = 5


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"meshtui: {message}\n")
        raise SystemExit(EXIT_USAGE)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1.5G``, ``64MiB``, ``1048576`` -> bytes (units are powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size like 512M or 2G, got {text!r}")
    size = int(float(match[1]) * _SIZE_UNITS[(match[2] or "").upper()])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return size


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _common(
    p: argparse.ArgumentParser, json_flag: bool = True, nested: bool = False, many: bool = False
) -> None:
    """-t/-i/--json/--request-timeout; on a nested parser (``kv put``) they may also come before the
    verb (``kv -t X put``), so there they must not reset what the outer one parsed."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if nested else {}
    p.add_argument("-t", "--target", help="socket path, ssh://[user@]host[:port][/sock], or host"
                   + ("; repeat for several clusters (x switches)" if many else ""),
                   action="append" if many else "store", **extra)
    p.add_argument("-i", "--inventory", help="inventory file (for host-name targets)", **extra)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON", **extra)
    p.add_argument("--request-timeout", type=float, metavar="SECONDS", **extra,
                   help="how long a request may wait for a leader while the cluster forms"
                   " or elects (default $MESHTUI_REQUEST_TIMEOUT, else 5)")


def _inventory_flags(p: argparse.ArgumentParser, nested: bool = False) -> None:
    """Ansible's -f/-k/-K/-b for the commands that work on an inventory's hosts over SSH."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if nested else {}
    p.add_argument("-f", "--forks", type=_positive_int, metavar="N", **extra,
                   help="hosts worked on at once (default 5; upgrade goes one at a time)")
    p.add_argument("-k", "--ask-pass", action="store_true", **extra,
                   help="prompt once for the SSH password (ansible_password)")
    p.add_argument("-K", "--ask-become-pass", action="store_true", **extra,
                   help="prompt once for the become password (ansible_become_password)")
    p.add_argument("-b", "--become", action="store_true", **extra,
                   help="run as --become-user on the hosts (ansible_become; the inventory's wins)")
    p.add_argument("--become-method", choices=("sudo", "su"), **extra,
                   help="sudo (default) or su (ansible_become_method)")
    p.add_argument("--become-user", metavar="USER", **extra,
                   help="the user to become (default root; ansible_become_user)")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgParser(prog="meshtui", description="operate a mesh-agent cluster")
    from meshtui import __version__

    parser.add_argument("--version", action="version", version=f"meshtui {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_ArgParser)

    p = sub.add_parser("attach", help="open the TUI (default command); -t A -t B: x switches")
    p.add_argument("attach_target", nargs="?", metavar="TARGET")
    _common(p, json_flag=False, many=True)

    _common(sub.add_parser("status", help="members, consensus and task counts"))

    p = sub.add_parser("submit", help="submit a shell task; prints its id")
    _common(p)
    p.add_argument("--cap", dest="caps", action="append", default=[], metavar="TAG")
    p.add_argument("--key", help="placement key (hash-ring strategy)")
    p.add_argument("--strategy", choices=["auction", "capability", "hash"])
    p.add_argument("--restartable", action="store_true")
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--timeout", type=float, default=0.0, help="seconds (0 = none)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--cwd", default="")
    p.add_argument("--mem", type=parse_size, default=0, metavar="SIZE",
                   help="memory limit of the task's cgroup (512M, 2G); refused where unenforceable")
    p.add_argument("--pids", type=_positive_int, default=0, metavar="N",
                   help="process/thread limit of the task's cgroup; refused where unenforceable")
    p.add_argument("--artifact", dest="artifacts", action="append", default=[], metavar="PATH",
                   help="a file (relative to the task's working directory) kept when it ends")
    p.add_argument("--count", type=_positive_int, default=1, metavar="N",
                   help="submit N copies (task.submit_many, up to 1024 a request); prints N ids")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")

    _common(sub.add_parser("tasks", help="list tasks"))
    for name, helptext in (
        ("logs", "print a task's output"),
        ("cancel", "cancel a task"),
        ("wait", "wait for a task to finish; exit 1 if it failed"),
    ):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("task")
        if name == "logs":
            p.add_argument("-f", "--follow", action="store_true")
            p.add_argument("--stderr", action="store_true")
            p.add_argument("--attempt", type=int, default=None, metavar="N",
                           help="the run under epoch N (default: the latest)")
        if name == "wait":
            p.add_argument("--timeout", type=float, default=0.0)
    p = sub.add_parser("artifacts", help="list a task's artifacts, or fetch one")
    _common(p)
    p.add_argument("task")
    p.add_argument("--get", metavar="NAME", help="the artifact to fetch (checksum verified)")
    p.add_argument("-o", "--output", metavar="FILE", help="where --get writes (default: stdout)")
    p.add_argument("--attempt", type=int, default=None, metavar="N")
    p = sub.add_parser("prune", help="drop finished output and artifact copies on every host")
    _common(p)
    p.add_argument("--older-than", required=True, metavar="DURATION",
                   help="e.g. 7d, 12h, 30m, 90s")
    for name in ("drain", "undrain"):
        p = sub.add_parser(name, help=f"{name} a node")
        _common(p)
        p.add_argument("node")

    p = sub.add_parser("kv", help="replicated key-value store")
    _common(p)
    kv = p.add_subparsers(dest="op", required=True, parser_class=_ArgParser)
    for op, helptext in (
        ("get", "print a value (exit 1 if missing)"),
        ("put", "set a value"),
        ("del", "delete a key"),
        ("list", "list keys under a prefix"),
        ("search", "list keys matching a glob (*, ?, [...]) or a prefix"),
    ):
        q = kv.add_parser(op, help=helptext)
        _common(q, nested=True)
        q.add_argument("--namespace", "-n", default="default")
        if op in ("get", "list", "search"):
            q.add_argument("--stale", action="store_true", help="read locally, no leader round trip")
        if op == "list":
            q.add_argument("key", nargs="?", default="", metavar="PREFIX")
        else:
            q.add_argument("key")
        if op == "put":
            q.add_argument("value")
            q.add_argument("--ttl", type=float, default=None, metavar="SECONDS",
                           help="the key expires after this long (every node agrees when)")

    p = sub.add_parser("propose", help="create a proposal members vote on")
    _common(p)
    p.add_argument("title")
    p.add_argument("--body", default="")
    p.add_argument("--threshold", type=float, default=0.67)
    p = sub.add_parser("vote", help="vote on a proposal")
    _common(p)
    p.add_argument("proposal", type=int, help="the proposal id")
    p.add_argument("choice", choices=["yes", "no"])
    _common(sub.add_parser("proposals", help="list proposals"))

    p = sub.add_parser("report", help="cluster metrics")
    _common(p)
    p.add_argument("--timeframe", choices=["10m", "1h", "24h", "7d", "30d"],
                   help="also summarise the agent's metrics history over this timeframe")
    p = sub.add_parser("transfer-leader", help="move Raft leadership")
    _common(p)
    p.add_argument("to", nargs="?")
    from meshtui import replicas_cmd  # PBFT's replica group (issue 13)

    replicas_cmd.add_parser(sub, _common)

    for name in ("deploy", "undeploy", "upgrade"):
        p = sub.add_parser(name, help=f"{name} agents over SSH from an inventory")
        p.add_argument("-i", "--inventory", required=True)
        p.add_argument("--limit", help="host pattern (Ansible syntax)")
        if name == "undeploy":
            p.add_argument("--purge", action="store_true", help="also remove the data dir")
        _inventory_flags(p)
        p.add_argument("-C", "--check", action="store_true",
                       help="report per host what would change; change nothing")
        p.add_argument("-D", "--diff", action="store_true",
                       help="with --check: unified diffs of the files that would change")
    p = sub.add_parser("keys", help="cluster key rotation")
    _common(p)
    keys = p.add_subparsers(dest="op", required=True, parser_class=_ArgParser)
    for op in ("list", "install", "use", "remove"):
        q = keys.add_parser(op, help=f"{op} cluster keys")
        _common(q, nested=True)
        q.add_argument("--limit", help="host pattern (with -i: rotate across the inventory)")
        _inventory_flags(q, nested=True)
        if op == "install":
            q.add_argument("key", nargs="?", help="the base64 key (with -i: generated if omitted)")
            q.add_argument("--key-file", help="read the key from this file, keeping it out of argv")
        elif op != "list":
            q.add_argument("key", help="the key id")

    p = sub.add_parser("events", help="user events: send to one node or all; list received")
    _common(p)
    ev = p.add_subparsers(dest="op", required=True, parser_class=_ArgParser)
    q = ev.add_parser("send", help="send an event (to every node unless --to)")
    _common(q, nested=True)
    q.add_argument("name")
    q.add_argument("payload", nargs="?", default="")
    q.add_argument("--to", default="all", help="a node name or id, or 'all' (default)")
    q.add_argument("--from", dest="sender", default="", help="who the event speaks for")
    q.add_argument("--wait", type=float, default=3.0, metavar="SECONDS",
                   help="wait this long for every node's acknowledgement (0: do not wait)")
    q = ev.add_parser("list", help="events this node received, oldest first")
    _common(q, nested=True)
    q.add_argument("--since", type=int, default=0, metavar="SEQ", help="only after this seq")
    q.add_argument("--name", default="", help="only events of this name")
    q.add_argument("-f", "--follow", action="store_true", help="keep printing new events")

    p = sub.add_parser("mcp", help="serve the MCP tools on stdio (pip install 'meshtui[mcp]')")
    _common(p, json_flag=False)
    p = sub.add_parser("serve", help="the TUI in a browser (pip install 'meshtui[web]')")
    _common(p, json_flag=False)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback; there is no authentication)")
    p.add_argument("--port", type=int, default=8000)

    p = sub.add_parser("demo", help="a local mesh of real agents plus the TUI")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--no-tui", action="store_true", help="run the mesh and workload headless")
    p.add_argument("--no-workload", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "attach"
    if command == "attach" and not hasattr(args, "attach_target"):
        args.attach_target = None
        args.target = None
        args.inventory = None
    from meshtui import commands, task_commands

    if command == "replicas":
        from meshtui.replicas_cmd import cmd_replicas

        return cmd_replicas(args)
    name = "cmd_" + command.replace("-", "_")
    handler: Any = getattr(commands, name, None) or getattr(task_commands, name)
    return int(handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
