"""Control client: RPC calls and event streams to one mesh-agent.

Two ways in:

* ``call_sync(path, method, params, timeout)`` -- one request over a blocking
  Unix socket, no event loop; this is what keeps ``meshtui status`` fast.
* ``ControlClient`` -- asyncio; over a Unix socket (``connect_unix``) or any
  byte streams (``from_streams``, used for SSH ``direct-streamlocal``
  channels).  Calls are multiplexed by id over one connection; a single reader
  task routes replies to waiting calls and events to subscriptions.

Both speak the sans-IO ``agent.control.codec``.  Only asyncio and msgpack are
imported (never textual, asyncssh or zeroconf): the CLI imports this module on
every command.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Generator, Mapping
from typing import Any, Protocol

from agent.control.codec import (
    CLIENT,
    NEED_DATA,
    ControlConnection,
    ErrorResponse,
    Event,
)
from agent.control.pending import Pending
from agent.errors import ProtocolError
from meshtui.rpc import (  # re-exported: one import for both clients
    CONNECT_TIMEOUT,
    DEFAULT_CALL_TIMEOUT,
    EXIT_CONNECT,
    EXIT_DISK_FULL,
    EXIT_NO_QUORUM,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    MAX_CLIENT_IN_FLIGHT,
    READ_CHUNK,
    SUBSCRIPTION_QUEUE,
    ClientError,
    ConnectionLost,
    _connect_failure,
    call_sync,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_CALL_TIMEOUT",
    "EXIT_CONNECT",
    "EXIT_DISK_FULL",
    "EXIT_NOT_FOUND",
    "EXIT_NO_QUORUM",
    "EXIT_OK",
    "EXIT_USAGE",
    "MAX_CLIENT_IN_FLIGHT",
    "READ_CHUNK",
    "SUBSCRIPTION_QUEUE",
    "ClientError",
    "ConnectionLost",
    "ControlClient",
    "call_sync",
]


# ---------------------------------------------------------------- asyncio client
DRAIN_ABOVE = 64 * 1024
"""Bytes buffered in the transport beyond which a call waits for the writer to drain."""


_Waiter = asyncio.Future[Any] | Pending[Any]
"""What a call in flight is answered through: a future (``call``) or a ``Pending`` (``start``)."""


def _expire(future: _Waiter, method: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(ClientError("timeout", f"{method}: no reply within {timeout:g}s"))

class ByteReader(Protocol):
    """What ``from_streams`` needs to read (asyncio and asyncssh readers both fit)."""

    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    """What ``from_streams`` needs to write."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class Subscription:
    """An event stream: ``await`` it to subscribe, then ``async for`` over it.

    ``async for ev in client.subscribe([...])`` also works and subscribes on
    the first iteration.  Items are ``{"event": topic, "data": {...}}``; an
    ``"overflow"`` event (``data = {"dropped": n}``) means events were lost and
    the consumer should re-read state.  When the connection drops, iteration
    raises ``ConnectionLost``; after ``close()`` it stops.
    """

    def __init__(self, client: ControlClient, topics: list[str]) -> None:
        self._client = client
        self.topics = list(topics)
        self.id: int | None = None
        self._queue: deque[dict[str, Any]] = deque()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._ended: ClientError | None = None
        self._closed = False

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self._open().__await__()

    async def _open(self) -> Subscription:
        if self.id is None:
            await self._client._register(self)
        return self

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self.id is None and not self._closed and self._ended is None:
            await self._client._register(self)
        while True:
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                return {"event": "overflow", "data": {"dropped": dropped}}
            if self._queue:
                return self._queue.popleft()
            if self._closed:
                raise StopAsyncIteration
            if self._ended is not None:
                raise self._ended
            self._wake.clear()
            await self._wake.wait()

    def _push(self, event: dict[str, Any]) -> None:
        if len(self._queue) >= SUBSCRIPTION_QUEUE:
            oldest = self._queue.popleft()
            # Dropping the server's own overflow marker must keep its count.
            lost = oldest["data"].get("dropped") if oldest["event"] == "overflow" else None
            self._dropped += lost if type(lost) is int else 1
        self._queue.append(event)
        self._wake.set()

    def _end(self, error: ClientError) -> None:
        self._ended = error
        self._wake.set()

    async def close(self) -> None:
        """Unsubscribe (best effort) and end iteration."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._dropped = 0
        self._wake.set()
        sub_id, self.id = self.id, None
        if sub_id is not None:
            self._client._subs.pop(sub_id, None)
            if not self._client.closed:
                with contextlib.suppress(ClientError):
                    await self._client.call("unsubscribe", sub=sub_id)

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> Subscription:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ControlClient:
    """Multiplexed control connection; see the module docstring."""

    def __init__(self, reader: ByteReader, writer: ByteWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = ControlConnection(CLIENT)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        # Subscribe calls in flight: their reply must register the queue before
        # the reader handles the next frame, which may already be an event.
        self._subscribing: dict[int, Subscription] = {}
        self._subs: dict[int, Subscription] = {}
        # In-flight cap: a counter plus a queue of waiters, cheaper per call
        # than a Semaphore, which costs a coroutine even when a slot is free.
        self._free_slots = MAX_CLIENT_IN_FLIGHT
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        # Frames queued in one loop iteration leave in one write (``_flush``).
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._transport: Any = getattr(writer, "transport", None)
        self._flush_scheduled = False
        self._write_lock = asyncio.Lock()
        self._deadlines: list[tuple[float, int, _Waiter, str, float]] = []
        self._sweep_at: float | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._lost: ClientError | None = None
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect_unix(cls, path: str, *, timeout: float = CONNECT_TIMEOUT) -> ControlClient:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        except TimeoutError as exc:
            raise ClientError("timeout", f"connecting to {path} timed out") from exc
        except OSError as exc:
            raise _connect_failure(path, exc) from exc
        return cls(reader, writer)

    @classmethod
    async def from_streams(cls, reader: ByteReader, writer: ByteWriter) -> ControlClient:
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._lost is not None

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = DEFAULT_CALL_TIMEOUT,
        **kwparams: Any,
    ) -> Coroutine[Any, Any, Any]:
        """Call ``method``; await the result (``ClientError`` on an error reply).

        Params come from ``params`` and keyword arguments (keywords win).  A
        method whose params include ``timeout`` (``task.submit``) must pass it
        in the ``params`` mapping: the keyword is this call's own deadline.
        A plain function returning the request's coroutine: one coroutine per
        call instead of a chain of them (the client's cost per request counts
        on a box whose cores the agents share).
        """
        # ``kwparams`` is this call's own dict: used as is when there is no mapping.
        merged = {**params, **kwparams} if params else kwparams
        return self._request(method, merged, timeout)

    def start(
        self,
        method: str,
        params: dict[str, Any],
        /,
        *,
        timeout: float | None = DEFAULT_CALL_TIMEOUT,
    ) -> Pending[Any]:
        """Send a call now and return its ``Pending`` (``agent/control/pending.py``):
        ``then(callback, arg)`` runs ``callback(arg, pending)`` straight from the
        reader when the reply (or an error: ``ClientError``, a timeout, the
        connection lost) arrives -- no coroutine or task per call, for a client
        that keeps many calls in flight (the throughput benchmarks).  The same
        request, reply, in-flight cap and deadline as ``call``; but it never
        waits: with no free slot it raises ``ClientError("busy")`` (keep at most
        ``MAX_CLIENT_IN_FLIGHT`` in flight), and it does not wait for the socket to
        drain (the in-flight cap bounds what is buffered)."""
        if self._lost is not None:
            raise self._lost
        if not self._free_slots or self._slot_waiters:
            raise ClientError("busy", f"{method}: {MAX_CLIENT_IN_FLIGHT} calls already in flight")
        request_id = next(self._ids)
        try:
            frame = self._conn.send_request(request_id, method, params)
        except ProtocolError as exc:
            raise ClientError("bad_request", str(exc)) from exc
        self._free_slots -= 1
        call: Pending[Any] = Pending()
        # No callback of ours on it: whatever resolves it (a reply, its deadline, the
        # connection lost) first drops it and frees its slot (``_take``), so its
        # callbacks may start the next call at once.
        self._pending[request_id] = call
        if timeout is not None:
            self._add_deadline(call, request_id, method, timeout)
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return call

    def _take(self, request_id: int, waiter: _Waiter) -> None:
        """Before a ``start`` call's ``Pending`` is resolved: drop it, free its slot
        (a ``call``'s future is dropped by its own coroutine)."""
        if type(waiter) is Pending:
            self._pending.pop(request_id, None)
            self._release_slot()

    async def _request(
        self,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        sub: Subscription | None = None,
    ) -> Any:
        if self._lost is not None:
            raise self._lost
        if self._free_slots and not self._slot_waiters:
            self._free_slots -= 1
        else:
            await self._wait_for_slot(method, timeout)
        try:
            request_id = next(self._ids)
            try:
                frame = self._conn.send_request(request_id, method, params)
            except ProtocolError as exc:
                raise ClientError("bad_request", str(exc)) from exc
            if self._lost is not None:
                raise self._lost
            future: asyncio.Future[Any] = self._loop.create_future()
            self._pending[request_id] = future
            if sub is not None:
                self._subscribing[request_id] = sub
            if timeout is not None:
                self._add_deadline(future, request_id, method, timeout)
            try:
                self._out.append(frame)
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    self._loop.call_soon(self._flush)
                if self._must_drain():
                    async with asyncio.timeout(timeout), self._write_lock:
                        self._flush()
                        await self._writer.drain()
                return await future
            except (ConnectionError, OSError) as exc:
                self._connection_lost(ConnectionLost(f"write failed: {exc}"))
                raise self._lost or ConnectionLost() from exc
            except TimeoutError as exc:
                raise ClientError("timeout", f"{method}: no reply within {timeout:g}s") from exc
            finally:
                self._pending.pop(request_id, None)
                self._subscribing.pop(request_id, None)
        finally:
            self._release_slot()

    async def _wait_for_slot(self, method: str, timeout: float | None) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release_slot()  # handed a slot just as we gave up: pass it on
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise ClientError("timeout", f"{method}: no reply within {timeout:g}s") from exc
            raise

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the waiter
                return
        self._free_slots += 1

    # -- reply deadlines: one heap and one timer for all calls, instead of an
    # asyncio.timeout scope (a context, a task lookup, a timer) per call.
    def _add_deadline(self, future: _Waiter, request_id: int, method: str, timeout: float) -> None:
        deadline = self._loop.time() + timeout
        heap = self._deadlines
        # The request id (unique) breaks ties between equal deadlines.
        heapq.heappush(heap, (deadline, request_id, future, method, timeout))
        if len(heap) > 2 * len(self._pending) + 64:
            # Answered calls leave their entries behind: drop them now and then.
            heap[:] = [entry for entry in heap if not entry[2].done()]
            heapq.heapify(heap)
        if self._sweep_at is None or deadline < self._sweep_at:
            if self._sweep_timer is not None:
                self._sweep_timer.cancel()
            self._sweep_at = deadline
            self._sweep_timer = self._loop.call_at(deadline, self._sweep_deadlines)

    def _sweep_deadlines(self) -> None:
        self._sweep_timer = self._sweep_at = None
        heap, now = self._deadlines, self._loop.time()
        while heap and heap[0][0] <= now:
            _, request_id, future, method, timeout = heapq.heappop(heap)
            if not future.done():
                self._take(request_id, future)
                _expire(future, method, timeout)
        while heap and heap[0][2].done():
            heapq.heappop(heap)
        if heap:
            if self._sweep_timer is not None:  # a Pending's callback made a call meanwhile
                self._sweep_timer.cancel()
            self._sweep_at = heap[0][0]
            self._sweep_timer = self._loop.call_at(self._sweep_at, self._sweep_deadlines)

    def _must_drain(self) -> bool:
        """Wait for the writer only when its buffer is full (or when it cannot say)."""
        transport = self._transport
        if transport is None:
            return True
        return bool(transport.get_write_buffer_size() > DRAIN_ABOVE)

    def _flush(self) -> None:
        """Write every queued frame at once: one send for a burst of calls."""
        self._flush_scheduled = False
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        if self._lost is not None:
            return
        try:
            self._writer.write(data)
        except (ConnectionError, OSError) as exc:
            self._connection_lost(ConnectionLost(f"write failed: {exc}"))

    def subscribe(self, topics: list[str]) -> Subscription:
        """An event stream for ``topics``; ``await`` it or iterate it (see ``Subscription``)."""
        return Subscription(self, topics)

    async def _register(self, sub: Subscription) -> None:
        await self._request("subscribe", {"topics": sub.topics}, DEFAULT_CALL_TIMEOUT, sub)

    async def close(self) -> None:
        """Close the connection; pending calls and subscriptions get ``ConnectionLost``."""
        self._connection_lost(ConnectionLost("client closed"))
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
        self._writer.close()
        wait_closed = getattr(self._writer, "wait_closed", None)
        if wait_closed is not None:
            with contextlib.suppress(Exception):
                await wait_closed()

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the reader task
    async def _read_loop(self) -> None:
        conn, pending = self._conn, self._pending
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                conn.receive_data(data)
                while (message := conn.next_reply()) is not NEED_DATA:
                    if type(message) is tuple:  # the usual reply: _route's checks in short
                        request_id, result = message
                        waiter = pending.get(request_id)
                        if type(waiter) is Pending and not waiter.done():  # a start() call
                            del pending[request_id]
                            self._release_slot()
                            waiter.set_result(result)
                            continue
                    self._route(message)
                if not data:
                    self._connection_lost(ConnectionLost())
                    return
        except ProtocolError as exc:
            self._connection_lost(ConnectionLost(f"bad frame from the agent: {exc}"))
        except (ConnectionError, OSError) as exc:
            self._connection_lost(ConnectionLost(f"connection to the agent failed: {exc}"))
        except ClientError as exc:
            self._connection_lost(exc)

    def _route(self, message: tuple[int, Any] | ErrorResponse | Event) -> None:
        """A reply ``(id, result)`` (``next_reply``), an error reply or an event."""
        if isinstance(message, Event):
            target = self._subs.get(message.sub)
            if target is not None:
                target._push({"event": message.event, "data": message.data})
            return
        if isinstance(message, ErrorResponse) and message.id is None:
            # The server hangs up after a connection-level error: fail everything with it.
            raise ClientError(message.code, message.message)
        request_id = message.id if isinstance(message, ErrorResponse) else message[0]
        assert request_id is not None
        future = self._pending.get(request_id)
        if future is None or future.done():
            return  # the call timed out and went away
        self._take(request_id, future)
        if isinstance(message, ErrorResponse):
            future.set_exception(ClientError(message.code, message.message))
            return
        assert type(message) is tuple
        result = message[1]
        sub = self._subscribing.pop(request_id, None)
        if sub is not None:
            sub_id = result.get("sub") if isinstance(result, dict) else None
            if type(sub_id) is not int:
                future.set_exception(ClientError("internal", f"bad subscribe reply {result!r}"))
                return
            sub.id = sub_id
            self._subs[sub_id] = sub
        future.set_result(result)

    def _connection_lost(self, error: ClientError) -> None:
        if self._lost is not None:
            return
        self._lost = error
        for request_id, future in list(self._pending.items()):
            if not future.done():
                self._take(request_id, future)
                future.set_exception(error)
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._slot_waiters.clear()
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._sweep_timer = self._sweep_at = None
        self._deadlines.clear()
        for sub in self._subs.values():
            sub._end(error)
        self._subs.clear()
