"""Attach to a remote agent over SSH: asyncssh to the host's own sshd, then direct-streamlocal.

Theory of operation
-------------------
The agent's control socket never listens on the network.  A remote operator
reaches it the way they reach the host's shell: ``asyncssh.connect`` to the
host's sshd (honouring ``~/.ssh/config``, the ssh-agent, default keys and
``known_hosts``), then ``conn.open_unix_connection(path)`` opens a
``direct-streamlocal@openssh.com`` channel that sshd connects to the socket
*as the logged-in user*, so the socket's file permissions are the access
control.  The channel comes back as an asyncio-style (reader, writer) pair that
``meshtui.client.ControlClient.from_streams`` speaks msgpack RPC over.

Every failure becomes one ``SSHAttachError`` line that says what to fix.
asyncssh is imported inside the functions: ``meshtui`` commands against a local
socket never pay for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import LocalError

REMOTE_DEFAULT_SOCKET = "/run/mesh-agent/agent.sock"
"""Socket path on a remote host when the URL does not name one (agents run as root there)."""
CONNECT_TIMEOUT = 15.0
"""Seconds for TCP connect + SSH handshake + authentication."""

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(\d+))?$")


class SSHAttachError(LocalError):
    """Attaching over SSH failed; ``str()`` is one line naming the host and the cause."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to attach: ``kind`` is ``unix`` (a local socket), ``ssh``, or ``name``.

    A ``name`` target is a bare host name for the caller to resolve through an
    inventory.  ``port`` and ``user`` are None when ~/.ssh/config (or ssh's
    defaults) should decide.
    """

    kind: str
    socket_path: str = ""
    host: str = ""
    port: int | None = None
    user: str | None = None
    key_file: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "unix":
            return self.socket_path
        if self.kind == "name":
            return self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{user}{self.host}{port}{self.socket_path}"


def parse_target(text: str) -> Target:
    """Parse ``ssh://[user@]host[:port][/socket/path]``, a socket path, or a bare host name."""
    raw = text.strip()
    if not raw:
        raise SSHAttachError("empty target (give a socket path, ssh://host, or a host name)")
    if raw.startswith("ssh://"):
        return _parse_ssh_url(raw)
    if "://" in raw:
        scheme = raw.split("://", 1)[0]
        raise SSHAttachError(f"unsupported target scheme {scheme}:// in {raw!r} (use ssh://)")
    if "/" in raw or raw.endswith(".sock"):
        return Target("unix", socket_path=raw)
    if _HOST_RE.match(raw) and ":" not in raw:
        return Target("name", host=raw)
    raise SSHAttachError(f"target {raw!r} is not a socket path, ssh:// URL or host name")


def _parse_ssh_url(url: str) -> Target:
    rest = url[len("ssh://") :]
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    user: str | None = None
    if "@" in authority:
        user, authority = authority.rsplit("@", 1)
        if not user:
            raise SSHAttachError(f"empty user name in {url!r}")
    match = _HOST_RE.match(authority)
    if not authority or match is None:
        raise SSHAttachError(f"bad host in {url!r} (expected ssh://[user@]host[:port][/path])")
    host = match.group(1).strip("[]")
    port: int | None = None
    if match.group(2) is not None:
        port = int(match.group(2))
        if not 0 < port < 65536:
            raise SSHAttachError(f"port {port} out of range in {url!r}")
    if path in ("", "/"):
        path = REMOTE_DEFAULT_SOCKET
    return Target("ssh", socket_path=path, host=host, port=port, user=user)


class _ResolvedLike(Protocol):
    host: str
    port: int
    user: str | None
    socket_path: str
    key_file: str | None


def ssh_target_from(resolved: _ResolvedLike) -> Target:
    """A ``Target`` from ``meshtui.targets.ResolvedTarget`` (URL or inventory host)."""
    return Target(
        "ssh",
        socket_path=resolved.socket_path or REMOTE_DEFAULT_SOCKET,
        host=resolved.host,
        port=resolved.port,
        user=resolved.user,
        key_file=resolved.key_file,
    )


def _where(target: Target) -> str:
    user = f"{target.user}@" if target.user else ""
    port = f":{target.port}" if target.port is not None else ""
    return f"{user}{target.host}{port}"


async def open_ssh_streams(
    target: Target,
    known_hosts: str | None = None,
    client_keys: list[str] | None = None,
    config: list[str] | None = None,
    *,
    timeout: float = CONNECT_TIMEOUT,
) -> tuple[Any, Any, Any]:
    """Connect to ``target``'s sshd and open the agent socket; returns (reader, writer, conn).

    ``known_hosts``/``client_keys``/``config`` override ssh's defaults (for
    tests and ``-i`` inventories); left None, asyncssh uses ~/.ssh/known_hosts,
    the ssh-agent and default keys, and ~/.ssh/config.  The caller closes
    ``conn`` when done (closing it also closes the channel).
    """

    import asyncssh

    if target.kind != "ssh":
        raise SSHAttachError(f"{target.label} is not an ssh:// target")
    options: dict[str, Any] = {"connect_timeout": timeout}
    if target.port is not None:
        options["port"] = target.port
    if target.user is not None:
        options["username"] = target.user
    # Passing None would *disable* host key checking in asyncssh: only pass real values.
    if known_hosts is not None:
        options["known_hosts"] = known_hosts
    keys = list(client_keys) if client_keys is not None else None
    if target.key_file:
        keys = [*(keys or []), target.key_file]
    if keys is not None:
        options["client_keys"] = keys
    if config is not None:
        options["config"] = config
    where = _where(target)
    trusted = known_hosts or "~/.ssh/known_hosts"
    try:
        conn = await asyncssh.connect(target.host, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise SSHAttachError(
            f"host key for {target.host} is not trusted (known_hosts {trusted}): {exc.reason}"
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise SSHAttachError(
            f"ssh to {where}: permission denied (no accepted key; check ssh-agent, "
            f"~/.ssh/config and the user name)"
        ) from exc
    except asyncssh.DisconnectError as exc:
        raise SSHAttachError(f"ssh to {where}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise SSHAttachError(f"ssh to {where}: timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise SSHAttachError(f"cannot reach {where}: {exc.strerror or exc}") from exc
    except asyncssh.Error as exc:
        raise SSHAttachError(f"ssh to {where}: {exc}") from exc
    try:
        reader, writer = await conn.open_unix_connection(target.socket_path)
    except asyncssh.ChannelOpenError as exc:
        conn.close()
        raise SSHAttachError(_channel_refused(target, exc.code, exc.reason)) from exc
    except (OSError, asyncssh.Error) as exc:
        conn.close()
        raise SSHAttachError(f"cannot open {target.socket_path} on {target.host}: {exc}") from exc
    return reader, writer, conn


def _channel_refused(target: Target, code: int, reason: str) -> str:
    """One line for a refused direct-streamlocal channel.

    sshd does not forward errno: for a socket it could not connect to it says
    only "open failed" (code 2, CONNECT_FAILED) for a socket the user may not
    open, a missing one, and (OpenSSH) ``AllowTcpForwarding no``, which also
    gates direct-streamlocal.  The message names the likely causes.
    """
    base = f"cannot open {target.socket_path} on {target.host}"
    low = reason.lower()
    if code == 1 or "prohibited" in low:
        return f"{base}: sshd forbids socket forwarding (AllowStreamLocalForwarding)"
    if "permission" in low or code == 2:
        user = target.user or "this user"
        return (
            f"{base}: permission denied, or no socket there (as {user}; "
            f"sshd said only {reason!r}, its log has the cause)"
        )
    return f"{base}: {reason} (code {code})"
