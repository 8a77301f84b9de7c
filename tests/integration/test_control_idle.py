"""Idle control clients are closed, so a full table of them cannot lock out ``meshtui``.

A real ``ControlServer`` on a Unix socket in a temp dir, with a short idle
timeout: ``MAX_CONNECTIONS`` (the server's real limit) quiet clients fill it,
the next client is refused, and once the timeout passes they are closed and a
new client is served.  Subscribers and clients waiting on a slow request are
not idle and keep their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from support.wait import wait_until_async

from agent.control.codec import CLIENT, ControlConnection, ErrorResponse
from agent.control.server import MAX_CONNECTIONS, ControlServer
from meshtui.client import ClientError, ControlClient

pytestmark = pytest.mark.timeout(60)

IDLE = 0.5
"""The idle timeout these tests run with (seconds)."""
FILL_IDLE = 2.0
"""The idle timeout while ``MAX_CONNECTIONS`` clients connect: long enough that
the first are not closed before the last one is in."""
DEADLINE = 10.0
"""Seconds any wait here may take at most."""


async def status(params: dict[str, Any]) -> Any:
    return {"node": "n1"}


async def slow(params: dict[str, Any]) -> Any:
    await asyncio.sleep(IDLE * 4)
    return "done"


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[[float], Awaitable[ControlServer]]]:
    directory = tempfile.mkdtemp(prefix="mt-idle-", dir="/tmp")
    started: list[ControlServer] = []

    async def make(idle: float) -> ControlServer:
        srv = ControlServer(
            f"{directory}/agent.sock", {"status": status, "slow": slow}, {"tasks"},
            idle_timeout=idle,
        )
        await srv.start()
        started.append(srv)
        return srv

    try:
        yield make
    finally:
        for srv in started:
            await srv.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def server(make_server: Callable[[float], Awaitable[ControlServer]]) -> ControlServer:
    return await make_server(IDLE)


async def farewell(reader: asyncio.StreamReader) -> ErrorResponse:
    """Everything the server sent until it hung up, as the one final error."""
    data = await asyncio.wait_for(reader.read(), DEADLINE)
    conn = ControlConnection(CLIENT)
    conn.receive_data(data)
    message = conn.next_event()
    assert isinstance(message, ErrorResponse), message
    return message


async def call(srv: ControlServer, method: str) -> Any:
    async with await ControlClient.connect_unix(srv.path) as client:
        return await asyncio.wait_for(client.call(method), DEADLINE)


async def test_a_full_table_of_idle_clients_drains_and_a_new_client_is_served(
    make_server: Callable[[float], Awaitable[ControlServer]],
) -> None:
    server = await make_server(FILL_IDLE)
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            streams.append(await asyncio.open_unix_connection(server.path))
        await wait_until_async("the table to fill",
                               lambda: server.connection_count == MAX_CONNECTIONS, DEADLINE)
        with pytest.raises(ClientError) as info:
            await call(server, "status")  # locked out, as before the fix
        assert info.value.code == "unavailable"

        await wait_until_async("idle clients to be closed", lambda: server.connection_count == 0,
                               DEADLINE)
        assert await call(server, "status") == {"node": "n1"}
        bye = await farewell(streams[0][0])
        assert (bye.id, bye.code) == (None, "unavailable")
        assert bye.message == f"closed after {FILL_IDLE:g} s without a request"
    finally:
        for _, writer in streams:
            writer.close()


async def test_a_partial_request_does_not_keep_a_client_alive(server: ControlServer) -> None:
    reader, writer = await asyncio.open_unix_connection(server.path)
    try:
        writer.write(b"\x00\x00\x00\x40" + b"\x81")  # a frame header and 1 of its 64 bytes
        await writer.drain()
        bye = await farewell(reader)
        assert bye.code == "unavailable"
    finally:
        writer.close()


async def test_subscribers_and_slow_requests_are_not_idle(server: ControlServer) -> None:
    async with await ControlClient.connect_unix(server.path) as watcher:
        events = await watcher.subscribe(["tasks"])
        async with await ControlClient.connect_unix(server.path) as waiting:
            # The slow request runs for 4 idle timeouts; its client must get the reply.
            assert await asyncio.wait_for(waiting.call("slow"), DEADLINE) == "done"
            assert server.connection_count == 2
            # ... and a reply resets the clock: a request right after it is served.
            assert await asyncio.wait_for(waiting.call("status"), DEADLINE) == {"node": "n1"}
        await wait_until_async("the second client to leave", lambda: server.connection_count == 1,
                               DEADLINE)
        # A quiet witness connected now is closed after one idle timeout (its
        # farewell is the event); the subscriber, quiet at least as long, stays.
        reader, writer = await asyncio.open_unix_connection(server.path)
        try:
            assert (await farewell(reader)).code == "unavailable"
        finally:
            writer.close()
        await wait_until_async("the witness to be dropped", lambda: server.connection_count == 1,
                               DEADLINE)
        server.publish("tasks", {"i": 1})
        got = await asyncio.wait_for(anext(events), DEADLINE)
        assert got == {"event": "tasks", "data": {"i": 1}}
        with contextlib.suppress(ClientError):
            await events.close()


async def test_idle_timeout_must_be_positive(tmp_path: Any) -> None:
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="idle_timeout"):
            ControlServer(str(tmp_path / "s.sock"), {}, set(), idle_timeout=bad)
