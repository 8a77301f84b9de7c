"""Where a ``meshtui`` command talks to: a local socket, ``ssh://…``, or an inventory host.

TARGET is (DESIGN.md, Operator contract):

* a socket path (anything containing ``/`` that is not a URL);
* ``ssh://[user@]host[:port][/socket/path]``;
* a host name from the inventory given with ``-i FILE``.

Default: ``$MESH_TARGET``, else the local agent's socket.

A local socket is spoken to with a blocking socket (``meshtui.rpc.call_sync``)
so scriptable commands never import asyncio-heavy or UI modules; SSH targets
run one private event loop for the whole command.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.control.paths import default_socket_path

Caller = Callable[..., Any]
"""``call(method, **params) -> result``; raises ``meshtui.rpc.ClientError``."""

REMOTE_DEFAULT_SOCKET = "/run/mesh-agent/agent.sock"
"""Socket path on a remote host when the URL does not give one (agents run as root there)."""


class TargetError(Exception):
    """A target that cannot be parsed or resolved; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    kind: str
    """``unix`` or ``ssh``."""
    label: str
    """What the user sees in banners and errors."""
    socket_path: str
    host: str = ""
    port: int = 22
    user: str | None = None
    key_file: str | None = None


def resolve_target(target: str | None, inventory_path: str | None) -> ResolvedTarget:
    raw = target or os.environ.get("MESH_TARGET") or ""
    if not raw:
        path = default_socket_path()
        return ResolvedTarget("unix", path, path)
    if raw.startswith("ssh://"):
        return _parse_ssh_url(raw)
    if "://" in raw:
        raise TargetError(f"unsupported target scheme in {raw!r} (use a socket path or ssh://)")
    if "/" in raw or raw.endswith(".sock"):
        return ResolvedTarget("unix", raw, raw)
    if inventory_path:
        return _from_inventory(raw, inventory_path)
    raise TargetError(
        f"target {raw!r} is not a socket path or ssh:// URL; "
        "to use an inventory host name pass -i INVENTORY"
    )


def _parse_ssh_url(url: str) -> ResolvedTarget:
    rest = url[len("ssh://") :]
    hostpart, slash, path = rest.partition("/")
    socket_path = "/" + path if slash and path else REMOTE_DEFAULT_SOCKET
    user: str | None = None
    if "@" in hostpart:
        user, _, hostpart = hostpart.rpartition("@")
        if not user:
            raise TargetError(f"empty user in {url!r}")
    port = 22
    if hostpart.startswith("["):
        host, _, tail = hostpart[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], url)
    elif ":" in hostpart:
        host, _, port_text = hostpart.rpartition(":")
        port = _port(port_text, url)
    else:
        host = hostpart
    if not host:
        raise TargetError(f"no host in {url!r}")
    return ResolvedTarget("ssh", url, socket_path, host=host, port=port, user=user)


def _port(text: str, url: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise TargetError(f"bad port {text!r} in {url!r}")
    return int(text)


def _from_inventory(name: str, inventory_path: str) -> ResolvedTarget:
    from inventory import load_inventory

    inv = load_inventory(inventory_path)
    host = inv.hosts.get(name)
    if host is None:
        raise TargetError(f"{inventory_path}: no host named {name!r}")
    hv = host.vars
    return ResolvedTarget(
        "ssh",
        f"{name} ({inventory_path})",
        str(hv.get("mesh_socket", REMOTE_DEFAULT_SOCKET)),
        host=str(hv.get("ansible_host", name)),
        port=int(hv.get("ansible_port", 22)),
        user=hv.get("ansible_user"),
        key_file=hv.get("ansible_ssh_private_key_file"),
    )


REPLY_SLACK = 7.0
"""Seconds a reply may take beyond the request timeout: the agent's commit timeout
(default 5 s) for a write already forwarded when the wait ends, plus margin, so the
agent's own answer (exit 3) arrives before the client gives up (exit 4)."""


class Session:
    """One command's connection to an agent. Use as a context manager."""

    def __init__(
        self, target: ResolvedTarget, timeout: float = 10.0, request_timeout: float | None = None
    ) -> None:
        """``timeout``: seconds to wait for a reply.  ``request_timeout``: seconds the
        agent may wait for a leader (sent with every call as ``request_timeout``); the
        reply wait grows to cover it plus one commit (REPLY_SLACK)."""
        self.target = target
        self.timeout = timeout if request_timeout is None else max(timeout, request_timeout + REPLY_SLACK)
        self.request_timeout = request_timeout
        self._loop: Any = None
        self._client: Any = None
        self._conn: Any = None

    def __enter__(self) -> Session:
        if self.target.kind == "ssh":
            self._open_ssh()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> Any:
        if self.request_timeout is not None:
            params["request_timeout"] = self.request_timeout
        if self.target.kind == "unix":
            from meshtui.rpc import call_sync

            return call_sync(self.target.socket_path, method, params, self.timeout)
        # params travel as one mapping: a task's own "timeout" must not
        # collide with the call's deadline keyword.
        return self._loop.run_until_complete(
            self._client.call(method, params, timeout=self.timeout)
        )

    def _open_ssh(self) -> None:
        import asyncio

        from meshtui.client import ControlClient
        from meshtui.ssh import open_ssh_streams, ssh_target_from

        self._loop = asyncio.new_event_loop()

        async def connect() -> None:
            reader, writer, conn = await open_ssh_streams(
                ssh_target_from(self.target)  # type: ignore[arg-type]
            )
            self._conn = conn
            self._client = await ControlClient.from_streams(reader, writer)

        self._loop.run_until_complete(connect())

    def close(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._client is not None:
                await self._client.close()
            if self._conn is not None:
                self._conn.close()

        try:
            self._loop.run_until_complete(shutdown())
        finally:
            self._loop.close()
            self._loop = None
