"""``mesh-agent``: run the daemon, or make a cluster key.

A bad flag or config prints one line naming the field and the reason and
exits with code 2; nothing is started.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn

from agent.errors import ConfigError, MeshError, StorageError


class _ArgParser(argparse.ArgumentParser):
    """argparse that reports errors as one line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"mesh-agent: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgParser(prog="mesh-agent", description="meshtui cluster agent")
    from agent import __version__

    parser.add_argument("--version", action="version", version=f"mesh-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--config", help="TOML config file (flags override it)")
    run.add_argument("--profile", choices=["lan", "local"], help="timing profile (default lan)")
    run.add_argument("--name", help="node name (default: host name)")
    run.add_argument("--data-dir", dest="data_dir", help="state directory")
    run.add_argument("--bind", help="listen address (default 0.0.0.0)")
    run.add_argument("--advertise", help="address peers use to reach this node")
    run.add_argument("--port", type=int, help="UDP+TCP port (default 7900)")
    run.add_argument("--join", action="append", metavar="HOST:PORT", help="seed peer (repeatable)")
    run.add_argument("--no-mdns", dest="mdns", action="store_false", default=None)
    run.add_argument("--key-file", dest="key_file", help="cluster key file")
    run.add_argument(
        "--insecure-no-key",
        dest="insecure_no_key",
        action="store_true",
        default=None,
        help="run WITHOUT sealing (anyone on the LAN can join): experiments only",
    )
    run.add_argument("--socket", help="control socket path")
    run.add_argument("--cluster", help="cluster name")
    run.add_argument("--cap", dest="caps", action="append", metavar="TAG", help="capability tag")
    run.add_argument("--slots", type=int, help="task slots (default: CPU count)")
    run.add_argument("--run-as", dest="run_as", help="user tasks run as when root")
    run.add_argument("--max-voters", dest="max_voters", type=int, help="Raft voters (default 5)")
    run.add_argument(
        "--load-source", dest="load_source", choices=["system", "tasks"],
        help="CPU figure used for placement (default: system; local profile: tasks)",
    )
    run.add_argument(
        "--metrics-addr", dest="metrics_addr", metavar="HOST:PORT",
        help="serve Prometheus /metrics on HOST:PORT (default: off; [metrics] addr)",
    )
    run.add_argument(
        "--event-loop", dest="event_loop", choices=["auto", "asyncio", "uvloop"],
        help="auto (default: uvloop if installed), asyncio or uvloop ([event_loop])",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    recover = sub.add_parser("recover", help="operator recovery of a data dir (see --force-new-cluster)")
    recover.add_argument("--data-dir", dest="data_dir", required=True, help="the node's state directory")
    recover.add_argument(
        "--force-new-cluster",
        dest="force_new_cluster",
        action="store_true",
        help="start a new one-voter cluster from this node's state (loses what only others had)",
    )

    keygen = sub.add_parser("keygen", help="make a new base64 cluster key")
    keygen.add_argument(
        "-o", "--output", metavar="FILE",
        help="write it to FILE, created with mode 0600 (an existing FILE is refused); "
        "default: print it",
    )
    return parser


_FLAG_FIELDS = (
    "name", "data_dir", "bind", "advertise", "port", "mdns", "key_file", "insecure_no_key",
    "socket", "cluster", "slots", "run_as", "max_voters", "profile", "load_source",
    "event_loop",
)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user actually gave, so the config file is not clobbered."""
    out: dict[str, Any] = {}
    for name in _FLAG_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    if args.join:
        out["join"] = list(args.join)
    if args.caps:
        out["caps"] = list(args.caps)
    if getattr(args, "metrics_addr", None) is not None:
        out["metrics"] = {"addr": args.metrics_addr}
    return out


def keygen(output: str | None) -> int:
    """Print a new key, or write it to a new 0600 file (``mesh-agent keygen -o FILE``)."""
    from agent.crypto import generate_key

    key = generate_key()
    if output is None:
        print(key)
        return 0
    from agent.keyfile import write_key_file

    try:
        write_key_file(output, key, field="keygen")
    except ConfigError as exc:
        sys.stderr.write(f"mesh-agent: {exc}\n")
        return 2
    return 0


def recover(data_dir: str, force_new_cluster: bool) -> int:
    """``mesh-agent recover --force-new-cluster --data-dir D`` (runtime/recovery.py)."""
    if not force_new_cluster:
        sys.stderr.write("mesh-agent: recover: say --force-new-cluster (the only recovery there is)\n")
        return 2
    from agent.runtime.recovery import force_new_cluster as force

    try:
        result = force(data_dir)
    except MeshError as exc:
        sys.stderr.write(f"mesh-agent: recover: {exc}\n")
        return 2
    print(result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        return keygen(args.output)
    if args.command == "recover":
        return recover(args.data_dir, args.force_new_cluster)

    from agent.config import load_config

    try:
        config = load_config(args.config, overrides_from_args(args), args.profile)
    except ConfigError as exc:
        sys.stderr.write(f"mesh-agent: config error: {exc}\n")
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from agent.datadir import DataDirBusy
    from agent.runtime.agent import run_agent

    try:
        return run_agent(config)
    except DataDirBusy as exc:
        sys.stderr.write(f"mesh-agent: {exc}\n")
        return 2
    except ConfigError as exc:
        sys.stderr.write(f"mesh-agent: config error: {exc}\n")
        return 2
    except StorageError as exc:
        # Damaged storage this node cannot repair alone (runtime/recovery.py).
        sys.stderr.write(f"mesh-agent: {exc}\n")
        return 2
    except MeshError as exc:
        sys.stderr.write(f"mesh-agent: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
