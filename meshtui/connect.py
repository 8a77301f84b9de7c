"""Client factories for the TUI: a fresh ``ControlClient`` per (re)connect.

The TUI calls the factory again after a dropped connection (with backoff),
so a factory must open a brand-new connection each time: a new Unix socket
connection, or a new SSH connection and ``direct-streamlocal`` channel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshtui.targets import ResolvedTarget

ClientFactory = Callable[[], Awaitable[Any]]


def client_factory_for(target: ResolvedTarget) -> ClientFactory:
    if target.kind == "unix":

        async def open_unix() -> Any:
            from meshtui.client import ControlClient

            return await ControlClient.connect_unix(target.socket_path)

        return open_unix

    async def open_ssh() -> Any:
        from meshtui.client import ControlClient
        from meshtui.ssh import open_ssh_streams, ssh_target_from

        ssh_target = ssh_target_from(target)  # type: ignore[arg-type]
        reader, writer, conn = await open_ssh_streams(ssh_target)
        client = await ControlClient.from_streams(reader, writer)
        return _SshClient(client, conn)

    return open_ssh


class _SshClient:
    """A ControlClient that also closes its SSH connection."""

    def __init__(self, client: Any, conn: Any) -> None:
        self._client = client
        self._conn = conn

    async def call(self, method: str, **params: Any) -> Any:
        return await self._client.call(method, **params)

    def subscribe(self, topics: list[str]) -> Any:
        return self._client.subscribe(topics)

    async def close(self) -> None:
        try:
            await self._client.close()
        finally:
            self._conn.close()
