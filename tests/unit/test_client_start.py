"""``ControlClient.start``: a call answered through a ``Pending``'s callbacks, run
from the client's reader (issue 14: the throughput benchmarks' clients drive their
calls this way, without a coroutine and a task per call).  The same answers as
``call`` -- results, error codes, timeouts, a lost connection -- and the same
in-flight cap, which it never waits on: a call beyond it is refused "busy"."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.control.pending import Pending
from agent.control.server import ControlServer
from meshtui.client import MAX_CLIENT_IN_FLIGHT, ClientError, ConnectionLost, ControlClient

pytestmark = pytest.mark.timeout(60)


async def echo(params: dict[str, Any]) -> Any:
    return params


async def refuse(params: dict[str, Any]) -> Any:
    raise ValueError("no such thing")


@pytest.fixture
async def served() -> AsyncIterator[tuple[ControlServer, asyncio.Event]]:
    directory = tempfile.mkdtemp(prefix="mt-start-", dir="/tmp")
    release = asyncio.Event()

    async def hang(params: dict[str, Any]) -> Any:
        await release.wait()
        return "released"

    srv = ControlServer(os.path.join(directory, "agent.sock"),
                        {"echo": echo, "refuse": refuse, "hang": hang}, {"tasks"})
    await srv.start()
    try:
        yield srv, release
    finally:
        await srv.close()
        shutil.rmtree(directory, ignore_errors=True)


async def settled(call: Pending[Any]) -> tuple[str, Any]:
    """What ``call``'s callback saw: ("ok", result) or ("error", code)."""
    seen: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()

    def answered(_: None, done: Pending[Any]) -> None:
        error = done.exception()
        seen.set_result(("ok", done.result()) if error is None
                        else ("error", getattr(error, "code", type(error).__name__)))

    call.then(answered, None)
    return await asyncio.wait_for(seen, 10)


async def test_start_answers_as_call_does(served: Any) -> None:
    srv, _ = served
    async with await ControlClient.connect_unix(srv.path) as client:
        assert await settled(client.start("echo", {"a": 1})) == ("ok", {"a": 1})
        assert await client.call("echo", {"a": 1}) == {"a": 1}
        assert await settled(client.start("refuse", {})) == ("error", "bad_request")
        with pytest.raises(ClientError) as info:
            await client.call("refuse")
        assert info.value.code == "bad_request"
        assert await settled(client.start("nope", {})) == ("error", "bad_request")
        with pytest.raises(ClientError):
            client.start("echo", {"bad": object()})  # not encodable: refused at once
        # Many at once, each its own answer, callbacks starting the next calls.
        answers = await asyncio.gather(*(settled(client.start("echo", {"i": i})) for i in range(200 // 4)))
        assert answers == [("ok", {"i": i}) for i in range(50)]


async def test_start_never_waits_for_a_slot_and_frees_it_when_answered(served: Any) -> None:
    srv, release = served
    async with await ControlClient.connect_unix(srv.path) as client:
        hanging = [client.start("hang", {}) for _ in range(MAX_CLIENT_IN_FLIGHT)]
        with pytest.raises(ClientError) as info:
            client.start("echo", {})
        assert info.value.code == "busy"
        release.set()
        assert [await settled(c) for c in hanging] == [("ok", "released")] * MAX_CLIENT_IN_FLIGHT
        # Every slot is free again: a full window, then a coroutine call.
        again = [client.start("echo", {"i": i}) for i in range(MAX_CLIENT_IN_FLIGHT)]
        assert [await settled(c) for c in again][-1] == ("ok", {"i": MAX_CLIENT_IN_FLIGHT - 1})
        assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_start_times_out_and_a_lost_connection_fails_every_call(served: Any) -> None:
    srv, _ = served
    client = await ControlClient.connect_unix(srv.path)
    assert await settled(client.start("hang", {}, timeout=0.2)) == ("error", "timeout")
    assert await settled(client.start("echo", {"n": 1})) == ("ok", {"n": 1})
    restarted: list[str] = []

    def restart(_: None, done: Pending[Any]) -> None:
        # A callback starting the next call as the connection goes: refused, not a crash.
        try:
            client.start("echo", {})
        except ClientError as exc:
            restarted.append(type(exc).__name__)

    calls = [client.start("hang", {}) for _ in range(5)]
    for call in calls:
        call.then(restart, None)
    await asyncio.sleep(0.05)
    await srv.close()
    for call in calls:
        assert isinstance(await asyncio.wait_for(_error_of(call), 10), ConnectionLost)
    assert restarted == ["ConnectionLost"] * 5
    await client.close()


async def _error_of(call: Pending[Any]) -> BaseException | None:
    try:
        await call
    except BaseException as exc:
        return exc
    return None
