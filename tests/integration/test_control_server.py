"""The control server and client over a real Unix socket in a temp directory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from support.wait import wait_until_async

from agent.control import server as server_module
from agent.control.codec import (
    CLIENT,
    NEED_DATA,
    ControlConnection,
    ErrorResponse,
    Event,
    Request,
    Response,
)
from agent.control.server import SUBSCRIBER_QUEUE, ControlError, ControlServer, Handler
from agent.errors import (
    ConfigError,
    LocalError,
    NoQuorumError,
    NotLeaderError,
    ProtocolError,
    SchedulingError,
    TaskError,
)
from meshtui.client import ClientError, ConnectionLost, ControlClient, call_sync

TOPICS = {"members", "consensus", "tasks", "migrations", "metrics"}
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # pytest's tmp_path can exceed the 107-byte sun_path limit; keep it short.
    directory = tempfile.mkdtemp(prefix="mt-ctl-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def echo(params: dict[str, Any]) -> Any:
    return params


async def status(params: dict[str, Any]) -> Any:
    return {"node": "n1", "read_only": False}


def raiser(exc: BaseException) -> Handler:
    async def handler(params: dict[str, Any]) -> Any:
        raise exc

    return handler


BASE_HANDLERS: dict[str, Handler] = {"echo": echo, "status": status}


@pytest.fixture
async def make_server(sock_dir: str) -> AsyncIterator[Callable[..., Awaitable[ControlServer]]]:
    started: list[ControlServer] = []

    async def make(handlers: dict[str, Handler] | None = None, path: str = "") -> ControlServer:
        srv = ControlServer(
            path or os.path.join(sock_dir, "run", "agent.sock"),
            {**BASE_HANDLERS, **(handlers or {})},
            TOPICS,
        )
        await srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        await srv.close()


class RawClient:
    """A hand-driven client: the codec over a bare asyncio stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = ControlConnection(CLIENT)

    @classmethod
    async def open(cls, path: str) -> RawClient:
        return cls(*await asyncio.open_unix_connection(path))

    def send(self, *requests: Request) -> None:
        self.writer.write(b"".join(self.conn.send(r) for r in requests))

    async def receive(self, count: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < count:
            while (message := self.conn.next_event()) is not NEED_DATA:
                out.append(message)
            if len(out) >= count:
                break
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            self.conn.receive_data(data)
            if not data:
                while (message := self.conn.next_event()) is not NEED_DATA:
                    out.append(message)
                break
        return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


# ---------------------------------------------------------------- lifecycle
async def test_socket_mode_directory_and_close_removes_file(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "nested", "agent.sock")
    srv = ControlServer(path, BASE_HANDLERS, TOPICS)
    await srv.start()
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    expected_dir = 0o750 if os.geteuid() == 0 else 0o700
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == expected_dir
    await srv.close()
    assert not os.path.exists(path)


async def test_stale_socket_is_removed(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "agent.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # bound, never listening, then closed: what a SIGKILLed agent leaves
    dead.close()
    assert os.path.exists(path)
    srv = ControlServer(path, BASE_HANDLERS, TOPICS)
    await srv.start()
    try:
        got = await asyncio.to_thread(call_sync, path, "status", {}, 5)
        assert got == {"node": "n1", "read_only": False}
    finally:
        await srv.close()


async def test_second_agent_on_the_same_socket_is_refused(make_server: Any) -> None:
    first = await make_server()
    second = ControlServer(first.path, BASE_HANDLERS, TOPICS)
    with pytest.raises(LocalError, match="another agent is running on"):
        await second.start()
    # the first one is untouched and still serving
    assert await asyncio.to_thread(call_sync, first.path, "echo", {"a": 1}, 5) == {"a": 1}


async def test_non_socket_file_is_not_removed(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "agent.sock")
    with open(path, "w") as fh:
        fh.write("precious")
    with pytest.raises(LocalError, match="not a socket"):
        await ControlServer(path, BASE_HANDLERS, TOPICS).start()
    with open(path) as fh:
        assert fh.read() == "precious"


async def test_close_leaves_a_replaced_socket_alone(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "agent.sock")
    srv = ControlServer(path, BASE_HANDLERS, TOPICS)
    await srv.start()
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(path)
    try:
        await srv.close()
        assert os.path.exists(path)
    finally:
        other.close()


async def test_too_long_path_is_a_clear_error(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "x" * 120, "agent.sock")
    with pytest.raises(LocalError, match="too long"):
        await ControlServer(path, BASE_HANDLERS, TOPICS).start()


# ---------------------------------------------------------------- calls
async def test_concurrent_calls_run_concurrently(make_server: Any) -> None:
    arrived = 0
    all_here = asyncio.Event()

    async def barrier(params: dict[str, Any]) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == 20:
            all_here.set()
        # Only returns once all 20 are in flight: a serial server would time out.
        await asyncio.wait_for(all_here.wait(), 5)
        return params["n"]

    srv = await make_server({"barrier": barrier})
    async with await ControlClient.connect_unix(srv.path) as client:
        results = await asyncio.gather(*(client.call("barrier", n=i) for i in range(20)))
    assert results == list(range(20))


async def test_in_flight_requests_are_bounded(make_server: Any) -> None:
    running = peak = 0
    release = asyncio.Event()

    async def slow(params: dict[str, Any]) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return params["n"]

    srv = await make_server({"slow": slow})
    raw = await RawClient.open(srv.path)
    raw.send(*(Request(i, "slow", {"n": i}) for i in range(100)))
    await wait_until_async(f"{server_module.MAX_IN_FLIGHT} requests to run at once",
                           lambda: running == server_module.MAX_IN_FLIGHT, 10)
    await asyncio.sleep(0.05)  # room for a server that ignored the limit to start more
    assert running == peak == server_module.MAX_IN_FLIGHT
    release.set()
    replies = await raw.receive(100)
    assert sorted(r.id for r in replies) == list(range(100))
    assert all(isinstance(r, Response) and r.result == r.id for r in replies)
    await raw.close()


ERROR_CASES = [
    (NoQuorumError("3 of 5 unreachable"), "no_quorum", 3),
    (NotLeaderError("n2"), "not_leader", 3),
    (TaskError("no task 'abc'"), "not_found", 1),
    (KeyError("abc"), "not_found", 1),
    (ValueError("slots must be >= 0"), "bad_request", 2),
    (ConfigError("strategy", "unknown 'x'"), "bad_request", 2),
    (ProtocolError("argv must be a list"), "bad_request", 2),
    (SchedulingError("no eligible host"), "unavailable", 4),
    (ControlError("unavailable", "shutting down"), "unavailable", 4),
    (RuntimeError("kaput\nsecond line"), "internal", 1),
]


@pytest.mark.parametrize(
    ("exc", "code", "exit_code"),
    ERROR_CASES,
    ids=[c[1] + "-" + type(c[0]).__name__ for c in ERROR_CASES],
)
async def test_handler_errors_map_to_codes(
    make_server: Any, caplog: pytest.LogCaptureFixture, exc: Exception, code: str, exit_code: int
) -> None:
    srv = await make_server({"fail": raiser(exc)})
    caplog.set_level(logging.ERROR, logger="agent.control.server")
    async with await ControlClient.connect_unix(srv.path) as client:
        with pytest.raises(ClientError) as info:
            await client.call("fail")
        assert info.value.code == code
        assert info.value.exit_code == exit_code
        assert "\n" not in info.value.message
        # the connection and the server survive
        assert await client.call("echo", x=1) == {"x": 1}
    logged_traceback = any(r.exc_info for r in caplog.records)
    assert logged_traceback == (code == "internal")
    if code == "internal":
        assert info.value.message == "RuntimeError: kaput"


async def test_unknown_method(make_server: Any) -> None:
    srv = await make_server()
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(call_sync, srv.path, "nope", {}, 5)
    assert (info.value.code, info.value.message) == ("bad_request", "unknown method 'nope'")


async def test_unencodable_result_is_an_internal_error(make_server: Any) -> None:
    async def bad(params: dict[str, Any]) -> Any:
        return {"obj": object()}

    srv = await make_server({"bad": bad})
    async with await ControlClient.connect_unix(srv.path) as client:
        with pytest.raises(ClientError, match="not encodable") as info:
            await client.call("bad")
        assert info.value.code == "internal"
        assert await client.call("status") == {"node": "n1", "read_only": False}


GARBAGE = {
    "text": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "4 GiB length": b"\xff\xff\xff\xff",
    "not a map": struct.pack(">I", 3) + b"\x93\x01\x02\x03",
    "bad request": struct.pack(">I", 1) + b"\x80",
}


@pytest.mark.parametrize("junk", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_gets_an_error_and_a_hangup_then_others_are_served(
    make_server: Any, junk: bytes
) -> None:
    srv = await make_server()
    reader, writer = await asyncio.open_unix_connection(srv.path)
    writer.write(junk)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)  # until EOF: the server hangs up
    writer.close()
    conn = ControlConnection(CLIENT)
    conn.receive_data(data)
    reply = conn.next_event()
    assert isinstance(reply, ErrorResponse)
    assert (reply.id, reply.code) == (None, "bad_request")
    assert reply.message.startswith("protocol error")
    assert await asyncio.to_thread(call_sync, srv.path, "status", {}, 5) == {
        "node": "n1",
        "read_only": False,
    }


async def test_connection_limit(make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 2)
    srv = await make_server()
    first = await ControlClient.connect_unix(srv.path)
    second = await ControlClient.connect_unix(srv.path)
    await first.call("status")
    await second.call("status")
    third = await ControlClient.connect_unix(srv.path)
    with pytest.raises(ClientError) as info:
        await third.call("status")
    assert info.value.code == "unavailable"
    for client in (first, second, third):
        await client.close()


# ---------------------------------------------------------------- subscriptions
async def test_events_arrive_in_order_for_subscribed_topics_only(make_server: Any) -> None:
    srv = await make_server()
    async with await ControlClient.connect_unix(srv.path) as client:
        tasks_sub = await client.subscribe(["tasks"])
        both_sub = await client.subscribe(["tasks", "members"])
        assert srv.has_subscribers("members") and not srv.has_subscribers("metrics")
        for i in range(500):
            srv.publish("tasks", {"i": i})
            srv.publish("members", {"kind": "update", "i": i})
            srv.publish("metrics", {"cpu": 0.5})
        got = [await anext(tasks_sub) for _ in range(500)]
        assert got == [{"event": "tasks", "data": {"i": i}} for i in range(500)]
        mixed = [await anext(both_sub) for _ in range(1000)]
        assert [e["data"]["i"] for e in mixed if e["event"] == "tasks"] == list(range(500))
        assert [e["data"]["i"] for e in mixed if e["event"] == "members"] == list(range(500))
        await tasks_sub.close()
        srv.publish("tasks", {"i": "after"})
        assert await anext(both_sub) == {"event": "tasks", "data": {"i": "after"}}
        with pytest.raises(StopAsyncIteration):
            await anext(tasks_sub)


async def test_async_for_subscribes_lazily(make_server: Any) -> None:
    srv = await make_server()
    async with await ControlClient.connect_unix(srv.path) as client:
        stream = client.subscribe(["metrics"])

        async def publish_when_ready() -> None:
            await wait_until_async("the lazy subscription to reach the server",
                                   lambda: srv.has_subscribers("metrics"), 10, 0.005)
            for i in range(3):
                srv.publish("metrics", {"cpu": i})

        publisher = asyncio.create_task(publish_when_ready())
        seen = []
        async for event in stream:
            seen.append(event["data"]["cpu"])
            if len(seen) == 3:
                break
        await publisher
        await stream.close()
        assert seen == [0, 1, 2]
        assert not srv.has_subscribers("metrics")


async def test_bad_subscriptions(make_server: Any) -> None:
    srv = await make_server()
    async with await ControlClient.connect_unix(srv.path) as client:
        with pytest.raises(ClientError, match="unknown topic 'weather'"):
            await client.subscribe(["tasks", "weather"])
        with pytest.raises(ClientError) as info:
            await client.call("subscribe", topics="tasks")
        assert info.value.code == "bad_request"
        with pytest.raises(ClientError, match="no subscription"):
            await client.call("unsubscribe", sub=99)


async def test_slow_subscriber_overflows_and_never_blocks_the_agent(make_server: Any) -> None:
    srv = await make_server()
    raw = await RawClient.open(srv.path)
    raw.send(Request(1, "subscribe", {"topics": ["tasks"]}))
    (reply,) = await raw.receive(1)
    assert reply == Response(1, {"sub": 1})
    # Publishing is synchronous: 25,000 events without yielding keep only the
    # newest 10,000 and count the rest.  It must not block.
    extra = 15_000
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(SUBSCRIBER_QUEUE + extra):
        srv.publish("tasks", {"i": i})
    assert loop.time() - started < 2.0
    # Other clients are served while this subscriber is not reading.
    assert (await asyncio.to_thread(call_sync, srv.path, "status", {}, 5))["node"] == "n1"
    events = await raw.receive(1 + SUBSCRIBER_QUEUE)
    assert events[0] == Event("overflow", 1, {"dropped": extra})
    assert [e.data["i"] for e in events[1:]] == list(range(extra, extra + SUBSCRIBER_QUEUE))
    await raw.close()


PUBLISH_NEVER_WAITS = 2.0
"""Seconds 30 publishes into a stalled subscriber may take.  They take microseconds:
publish only queues.  One that waited for the reader would never return; the
bound leaves a loaded box room to deschedule the test (0.5 s was too tight for that)."""


async def test_stalled_reader_with_full_socket_does_not_stall_publish(make_server: Any) -> None:
    srv = await make_server()
    raw = await RawClient.open(srv.path)
    raw.send(Request(1, "subscribe", {"topics": ["metrics"]}))
    await raw.receive(1)
    blob = "x" * 4096
    loop = asyncio.get_running_loop()
    for batch in range(30):  # ~120 KB per batch; the socket fills after a few
        started = loop.time()
        for _ in range(30):
            srv.publish("metrics", {"blob": blob, "batch": batch})
        assert loop.time() - started < PUBLISH_NEVER_WAITS
        await asyncio.sleep(0)  # let the writer fill the socket and block in drain
    assert await asyncio.to_thread(call_sync, srv.path, "echo", {"ok": True}, 5) == {"ok": True}
    await raw.close()
    await wait_until_async("the stalled subscriber's connection to close",
                           lambda: srv.connection_count == 0, 10)


async def test_client_side_queue_overflow_keeps_server_counts(make_server: Any) -> None:
    srv = await make_server()
    async with await ControlClient.connect_unix(srv.path) as client:
        sub = await client.subscribe(["tasks"])
        for i in range(SUBSCRIBER_QUEUE + 5):
            srv.publish("tasks", {"i": i})
        await client.call("status")  # everything published before this reply has arrived
        for _ in range(20):
            await asyncio.sleep(0.01)
            srv.publish("tasks", {"i": "tail"})
        await client.call("status")
        first = await anext(sub)
        assert first["event"] == "overflow"
        # every event is either delivered or counted as dropped
        delivered = 0
        with contextlib.suppress(TimeoutError):
            while True:
                await asyncio.wait_for(anext(sub), 0.2)
                delivered += 1
        assert first["data"]["dropped"] + delivered == SUBSCRIBER_QUEUE + 5 + 20


# ---------------------------------------------------------------- client behaviour
async def test_many_multiplexed_calls_get_their_own_results(make_server: Any) -> None:
    async def jitter(params: dict[str, Any]) -> Any:
        await asyncio.sleep((params["n"] * 7 % 10) / 1000)
        return {"n": params["n"], "blob": bytes([params["n"] % 256]) * 100}

    srv = await make_server({"jitter": jitter})
    async with await ControlClient.connect_unix(srv.path) as client:
        results = await asyncio.gather(*(client.call("jitter", n=i) for i in range(300)))
    assert [r["n"] for r in results] == list(range(300))
    assert all(r["blob"] == bytes([r["n"] % 256]) * 100 for r in results)


async def test_params_mapping_carries_a_timeout_param(make_server: Any) -> None:
    srv = await make_server()
    async with await ControlClient.connect_unix(srv.path) as client:
        got = await client.call("echo", {"argv": ["true"], "timeout": 30}, timeout=5, rid="r1")
    assert got == {"argv": ["true"], "timeout": 30, "rid": "r1"}


async def test_from_streams(make_server: Any) -> None:
    srv = await make_server()
    reader, writer = await asyncio.open_unix_connection(srv.path)
    client = await ControlClient.from_streams(reader, writer)
    assert await client.call("echo", v=b"\x00") == {"v": b"\x00"}
    await client.close()
    assert client.closed


async def test_call_timeout_then_connection_still_usable(make_server: Any) -> None:
    async def hang(params: dict[str, Any]) -> Any:
        await asyncio.sleep(30)

    srv = await make_server({"hang": hang})
    async with await ControlClient.connect_unix(srv.path) as client:
        with pytest.raises(ClientError) as info:
            await client.call("hang", timeout=0.2)
        assert info.value.code == "timeout"
        assert info.value.exit_code == 4
        assert await client.call("status") == {"node": "n1", "read_only": False}


async def test_server_close_fails_pending_calls_and_ends_subscriptions(make_server: Any) -> None:
    started = asyncio.Event()

    async def hang(params: dict[str, Any]) -> Any:
        started.set()
        await asyncio.sleep(30)

    srv = await make_server({"hang": hang})
    client = await ControlClient.connect_unix(srv.path)
    sub = await client.subscribe(["tasks"])
    pending = asyncio.create_task(client.call("hang", timeout=20))
    await started.wait()
    await srv.close()
    with pytest.raises(ConnectionLost):
        await pending
    with pytest.raises(ConnectionLost):
        await anext(sub)
    with pytest.raises(ConnectionLost):
        await client.call("status")
    await client.close()


async def test_call_sync_errors(make_server: Any, sock_dir: str) -> None:
    missing = os.path.join(sock_dir, "nobody.sock")
    with pytest.raises(ClientError) as info:
        call_sync(missing, "status", {}, 2)
    assert info.value.code == "unavailable"
    assert info.value.exit_code == 4
    assert "no agent is running there" in info.value.message

    async def hang(params: dict[str, Any]) -> Any:
        await asyncio.sleep(30)

    srv = await make_server({"hang": hang})
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(call_sync, srv.path, "hang", {}, 0.3)
    assert info.value.code == "timeout"
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(call_sync, srv.path, "fail", {}, 2)
    assert info.value.code == "bad_request"
    got = await asyncio.to_thread(call_sync, srv.path, "echo", {"k": b"\xff", "n": [1, 2]}, 2)
    assert got == {"k": b"\xff", "n": [1, 2]}


async def test_call_sync_against_a_server_that_hangs_up(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "rude.sock")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4)
        writer.close()

    rude = await asyncio.start_unix_server(hang_up, path=path)
    try:
        with pytest.raises(ConnectionLost):
            await asyncio.to_thread(call_sync, path, "status", {}, 2)
    finally:
        rude.close()
        await rude.wait_closed()


async def test_half_closed_client_still_gets_its_replies(make_server: Any) -> None:
    async def slowish(params: dict[str, Any]) -> Any:
        await asyncio.sleep(0.2)
        return "late but delivered"

    srv = await make_server({"slowish": slowish})
    raw = await RawClient.open(srv.path)
    raw.send(Request(1, "slowish", {}), Request(2, "status", {}))
    raw.writer.write_eof()  # like `... | socat - UNIX-CONNECT:agent.sock`
    replies = await raw.receive(3)  # asks for one more than exists: stops at EOF
    assert sorted(replies, key=lambda r: r.id) == [
        Response(1, "late but delivered"),
        Response(2, {"node": "n1", "read_only": False}),
    ]
    await raw.close()


async def test_client_that_does_not_read_is_back_pressured(make_server: Any) -> None:
    calls = 0
    blob = b"r" * 65536

    async def big(params: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        return blob

    srv = await make_server({"big": big})
    raw = await RawClient.open(srv.path)
    raw.send(*(Request(i, "big", {}) for i in range(300)))
    await asyncio.sleep(0.5)
    # Replies pile up only until the socket and MAX_IN_FLIGHT slots are full;
    # then the server stops running this client's requests.
    assert calls < server_module.MAX_IN_FLIGHT + 40, calls
    replies = await raw.receive(300)
    assert calls == 300
    assert sorted(r.id for r in replies) == list(range(300))
    assert all(r.result == blob for r in replies)
    await raw.close()


# ---------------------------------------------------------------- future handlers
async def test_future_returning_handlers_reply_from_the_future(make_server: Any) -> None:
    """A plain handler returning a future: value, raised error and synchronous refusal."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Any]] = []

    def deferred(params: dict[str, Any]) -> asyncio.Future[Any]:
        if params.get("refuse"):
            raise ValueError("refused before starting")
        fut: asyncio.Future[Any] = loop.create_future()
        futures.append(fut)
        return fut

    srv = await make_server({"deferred": deferred})
    async with await ControlClient.connect_unix(srv.path) as client:
        calls = [asyncio.create_task(client.call("deferred", n=i)) for i in range(60)]
        with pytest.raises(ClientError) as refused:
            await client.call("deferred", refuse=True)
        assert refused.value.code == "bad_request"
        await wait_until_async("60 deferred calls to reach the handler",
                               lambda: len(futures) == 60, 10)
        # All resolved in one loop iteration: their replies share a write.
        for n, fut in enumerate(futures):
            if n == 7:
                fut.set_exception(NoQuorumError("lost the leader"))
            else:
                fut.set_result({"n": n})
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[7], ClientError) and results[7].code == "no_quorum"
    assert [r for n, r in enumerate(results) if n != 7] == [{"n": n} for n in range(60) if n != 7]


async def test_client_waits_for_a_slot_and_times_out_waiting(make_server: Any) -> None:
    from meshtui.client import MAX_CLIENT_IN_FLIGHT

    release = asyncio.Event()

    async def hold(params: dict[str, Any]) -> Any:
        await release.wait()
        return params["n"]

    srv = await make_server({"hold": hold})
    async with await ControlClient.connect_unix(srv.path) as client:
        held = [asyncio.create_task(client.call("hold", n=i)) for i in range(MAX_CLIENT_IN_FLIGHT)]
        await asyncio.sleep(0.05)
        with pytest.raises(ClientError) as waited:
            await client.call("hold", n=-1, timeout=0.1)  # never gets a slot
        assert waited.value.code == "timeout"
        queued = asyncio.create_task(client.call("hold", n=MAX_CLIENT_IN_FLIGHT))
        await asyncio.sleep(0.05)
        release.set()
        assert await asyncio.gather(*held, queued) == list(range(MAX_CLIENT_IN_FLIGHT + 1))
        assert await client.call("echo", ok=1) == {"ok": 1}  # every slot came back


async def test_shorter_timeout_after_longer_ones_fires_on_time(make_server: Any) -> None:
    never = asyncio.Event()

    async def hang(params: dict[str, Any]) -> Any:
        await never.wait()

    srv = await make_server({"hang": hang})
    async with await ControlClient.connect_unix(srv.path) as client:
        slow = [asyncio.create_task(client.call("hang", timeout=30.0)) for _ in range(3)]
        started = asyncio.get_running_loop().time()
        with pytest.raises(ClientError) as quick:
            await client.call("hang", timeout=0.2)
        assert quick.value.code == "timeout"
        assert asyncio.get_running_loop().time() - started < 2.0
        assert await client.call("echo", ok=1) == {"ok": 1}
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
