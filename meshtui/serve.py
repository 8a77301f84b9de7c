"""``meshtui serve``: the TUI in a browser, through textual-serve.

Each browser tab gets its own ``meshtui attach`` process (textual-serve runs
the command per connection and streams its terminal over a WebSocket), so a
tab is exactly the terminal TUI, attached to the same target.

textual-serve has **no authentication**: whoever reaches the port drives the
TUI, which can submit tasks, drain nodes and move leadership.  So it binds to
loopback by default; remote operators tunnel over SSH
(``ssh -L 8000:127.0.0.1:8000 host``) instead of binding elsewhere, and
binding elsewhere prints a loud warning.  Needs ``pip install 'meshtui[web]'``.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import socket
import sys

from meshtui.targets import TargetError, resolve_target

EXIT_OK, EXIT_USAGE = 0, 2

WARNING = """\
!!! meshtui serve is listening on {host}:{port}, not on loopback.
!!! textual-serve has NO AUTHENTICATION: anyone who can reach this port controls
!!! the cluster through the TUI (submit tasks, drain nodes, move leadership).
!!! Prefer the default --host 127.0.0.1 and an SSH tunnel:
!!!     ssh -L {port}:127.0.0.1:{port} <this host>   then open http://127.0.0.1:{port}
"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def attach_command(target: str | None, inventory: str | None) -> str:
    """The shell command textual-serve runs for each browser tab."""
    argv = [sys.executable, "-m", "meshtui.cli", "attach"]
    if target:
        argv.append(target)
    if inventory:
        argv += ["-i", inventory]
    return shlex.join(argv)


def public_url(host: str, port: int) -> str | None:
    """The URL the page's WebSocket connects back to; textual-serve's default
    (``http://host:port``) is wrong only for a wildcard bind."""
    if host in ("0.0.0.0", "::", ""):
        return f"http://{socket.gethostname()}:{port}"
    return None


def serve(args: argparse.Namespace) -> int:
    host, port = args.host, int(args.port)
    if not 0 < port < 65536:
        sys.stderr.write(f"meshtui: serve: bad --port {port}\n")
        return EXIT_USAGE
    try:
        resolve_target(args.target, args.inventory)  # a bad target fails here, not per tab
    except TargetError as exc:
        sys.stderr.write(f"meshtui: {exc}\n")
        return EXIT_USAGE
    try:
        from textual_serve.server import Server
    except ImportError:
        sys.stderr.write("meshtui: serve needs textual-serve: pip install 'meshtui[web]'\n")
        return EXIT_USAGE
    if not is_loopback(host):
        sys.stderr.write(WARNING.format(host=host, port=port))
    sys.stderr.write(f"meshtui serve: http://{host}:{port} (Ctrl+C stops)\n")
    sys.stderr.flush()
    Server(
        attach_command(args.target, args.inventory), host=host, port=port, title="meshtui",
        public_url=public_url(host, port),
    ).serve()
    return EXIT_OK
