"""One control client's session: reading, dispatch, replies and its subscriptions.

``ControlServer`` (``agent.control.server``, whose docstring is the theory of
operation) accepts connections and gives each a :class:`ControlSession` with two
coroutines: the reader, which feeds a sans-IO ``ControlConnection`` and dispatches
each request to its handler (a task, or a future its handler returns), and the
writer, the only coroutine that writes to the socket: queued replies first, then
the subscriptions' events round-robin.  A session reaches its server through
:class:`SessionHost`: the handlers, the declared topics, the idle timeout and the
per-topic subscription count.  Errors a handler raises become replies here
(:func:`error_reply`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from agent.control.codec import (
    NEED_DATA,
    SERVER,
    ControlConnection,
    ErrorResponse,
    Event,
    Message,
    Request,
    Response,
    State,
)
from agent.control.pending import Pending, as_future
from agent.errors import (
    ConfigError,
    DiskFullError,
    MeshError,
    NoQuorumError,
    NotLeaderError,
    ProtocolError,
    SchedulingError,
    TaskError,
)

logger = logging.getLogger("agent.control.server")  # one logger name for the server and its sessions

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
"""A method's handler: params in, result (or an error to raise) out."""

MAX_IN_FLIGHT: Final = 64
"""Requests one client may have running at once."""
SUBSCRIBER_QUEUE: Final = 10_000
"""Events buffered per subscription before the oldest are dropped."""
IDLE_TIMEOUT: Final = 60.0
"""Seconds a client may stay connected with nothing to do (no complete request,
none running, no reply pending, no subscription) before it is closed.  Why: a
client that connects and goes quiet (a hung script, a dead SSH forward, a
flood of them) would otherwise keep its slot forever, and ``MAX_CONNECTIONS``
of them lock out ``meshtui``.  60 s is far beyond the gap between a CLI's
connect and its request, yet a full table of idle clients drains within a
minute.  Subscribers (the TUI, ``meshtui watch``) are never idle."""
MAX_SUBSCRIPTIONS: Final = 32
"""Subscriptions one client may hold."""
READ_CHUNK: Final = 64 * 1024
"""Bytes read from a client per ``read`` call."""
DIRECT_WRITE_LIMIT: Final = 64 * 1024
"""Replies are written straight away while the transport buffers less than this."""
FLUSH_TIMEOUT: Final = 1.0
"""Seconds to spend flushing last replies (or the final error) before hanging up."""
EOF_GRACE: Final = 5.0
"""Seconds in-flight requests may still run after a client half-closes."""
BUILTIN_METHODS: Final = frozenset({"subscribe", "unsubscribe"})

_Call = tuple[int, str]
"""A running request's id and method (what its reply and an error's log line need)."""


class ControlError(MeshError):
    """Raise from a handler to answer with an explicit error ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _one_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def error_reply(exc: BaseException) -> tuple[str, str]:
    """Map a handler's exception to ``(code, message)`` (docs/internals.md section 4)."""
    if isinstance(exc, ControlError):
        return exc.code, exc.message
    if isinstance(exc, DiskFullError):
        return "disk_full", str(exc)
    if isinstance(exc, NoQuorumError):
        return "no_quorum", str(exc)
    if isinstance(exc, NotLeaderError):
        return "not_leader", str(exc)
    if isinstance(exc, TaskError):
        return "not_found", str(exc)
    if isinstance(exc, KeyError):
        return "not_found", f"not found: {exc.args[0]}" if exc.args else "not found"
    if isinstance(exc, ProtocolError | ConfigError | ValueError):
        return "bad_request", _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, SchedulingError):
        return "unavailable", str(exc)
    return "internal", _one_line(f"{type(exc).__name__}: {exc}")


@dataclass(slots=True)
class _Subscription:
    id: int
    topics: frozenset[str]
    """Plain topic names (what ``count_topics`` and ``offer`` look up)."""
    kinds: dict[str, frozenset[str]] = field(default_factory=dict)
    """Topic -> the event kinds wanted (``tasks:finished``); a topic not here wants all."""
    queue: deque[tuple[str, dict[str, Any]]] = field(default_factory=deque)
    dropped: int = 0


def parse_topics(
    names: list[str], declared: frozenset[str]
) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """``subscribe``'s topic list -> (plain topics, kind filters); ProtocolError if unknown.

    A name is a topic (``tasks``: every event) or ``topic:kind`` (``tasks:finished``:
    only events whose ``data.kind`` is that), as the server declares them.  A plain
    topic beside a filtered one of the same topic wins (all kinds).  An unknown name
    is refused with one line naming it (and, for a kind, the kinds there are).
    """
    unknown = sorted(set(names) - declared)
    if unknown:
        topic, colon, kind = unknown[0].partition(":")
        if not colon or topic not in declared:
            raise ProtocolError(f"unknown topic '{unknown[0]}'")
        kinds = sorted(n.partition(":")[2] for n in declared if n.startswith(topic + ":"))
        if not kinds:
            raise ProtocolError(f"topic '{topic}' takes no kind filter (subscribe to '{topic}')")
        raise ProtocolError(f"unknown kind '{kind}' of topic '{topic}' (kinds: {', '.join(kinds)})")
    whole: set[str] = set()
    wanted: dict[str, set[str]] = {}
    for name in names:
        topic, _, kind = name.partition(":")
        if kind:
            wanted.setdefault(topic, set()).add(kind)
        else:
            whole.add(topic)
    filters = {t: frozenset(k) for t, k in wanted.items() if t not in whole}
    return frozenset(whole | wanted.keys()), filters


class SessionHost(Protocol):
    """What a session needs of its server."""

    idle_timeout: float
    handlers: Mapping[str, Handler]
    topics: frozenset[str]
    """Declared names: topics (``tasks``) and ``topic:kind`` filters (``tasks:finished``)."""

    def count_topics(self, topics: frozenset[str], delta: int) -> None:
        """A client (un)subscribed ``topics`` (``delta`` +1/-1)."""


class ControlSession:
    """One connected client: reader, writer, in-flight handlers, subscriptions."""

    def __init__(
        self, server: SessionHost, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.conn = ControlConnection(SERVER)
        # Free request slots; only the reader waits for one (``_slot_freed``).
        # A plain counter, not a Semaphore: taking a free slot must not cost a
        # coroutine per request.
        self.free_slots = MAX_IN_FLIGHT
        self.slot_waiter: asyncio.Future[None] | None = None
        self.handler_tasks: set[asyncio.Task[None]] = set()
        # Requests answered by a future or a ``Pending`` (see ``ControlServer``),
        # not by a task.
        self.handler_futures: set[asyncio.Future[Any] | Pending[Any]] = set()
        # (frame, holds_slot): a reply frees its request's slot once written.
        self.replies: deque[tuple[bytes, bool]] = deque()
        self.subs: dict[int, _Subscription] = {}
        self.next_sub_id = 1
        self.rr = 0
        self.wake = asyncio.Event()
        self.closing = False
        self.broken = False
        # Replies finished in one loop iteration leave in one write (one send
        # syscall instead of one each); see ``_reply``.
        self.loop = asyncio.get_running_loop()
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.batch_slots = 0
        self.flush_scheduled = False
        self.batch_room = DIRECT_WRITE_LIMIT  # bytes the batch may take (_queue_frame)
        # Idle clock (see IDLE_TIMEOUT): when the last complete request arrived,
        # checked by one timer per client instead of a timeout on every read.
        self.last_request = self.loop.time()
        self.idle_timer: asyncio.TimerHandle | None = None

    # -- idle clients
    def _busy(self) -> bool:
        """Running requests, unsent replies or a subscription: not idle."""
        return bool(self.subs or self.replies or self.free_slots < MAX_IN_FLIGHT)

    def _arm_idle_timer(self, delay: float) -> None:
        self.idle_timer = self.loop.call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.closing:
            return
        timeout = self.server.idle_timeout
        now = self.loop.time()
        if self._busy():
            # Work in progress counts as activity; when it ends,
            # ``_release_slots`` restarts the clock.
            self.last_request = now
            self._arm_idle_timer(timeout)
            return
        idle = now - self.last_request
        if idle < timeout:
            self._arm_idle_timer(timeout - idle)
            return
        logger.debug("closing a control client idle for %.1f s", idle)
        with contextlib.suppress(ProtocolError, ConnectionError, OSError):
            farewell = ErrorResponse(
                None, "unavailable", f"closed after {timeout:g} s without a request"
            )
            self.writer.write(self.conn.send(farewell))
        # The transport flushes the farewell, then the reader sees end of stream.
        self.writer.close()

    # -- reading and dispatch
    async def run(self) -> None:
        writer_task = asyncio.create_task(self._write_loop())
        flush = False  # True when there are replies worth delivering before hanging up
        self._arm_idle_timer(self.server.idle_timeout)
        try:
            while True:
                data = await self.reader.read(READ_CHUNK)
                self.conn.receive_data(data)
                complete = False  # a read ending a request restarts the idle clock
                # (id, method, params): no Request built per request (the hot path)
                while (request := self.conn.next_request()) is not NEED_DATA:
                    complete = True
                    while not self.free_slots:
                        self.slot_waiter = self.loop.create_future()
                        await self.slot_waiter
                    self.free_slots -= 1
                    self._dispatch(*request)
                if complete:  # once per read, not per request
                    self.last_request = self.loop.time()
                if not data:
                    break
            # End of stream: the client may only have half-closed (a script
            # piping one request), so let in-flight requests answer first.
            flush = True
            running = {*self.handler_tasks, *map(_waitable, self.handler_futures)}
            if running:
                await asyncio.wait(running, timeout=EOF_GRACE)
        except ProtocolError as exc:
            logger.info("control client sent garbage, closing: %s", exc)
            for task in self.handler_tasks:
                task.cancel()
            self._reply(ErrorResponse(None, "bad_request", f"protocol error: {exc}"), False)
            flush = True
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                if self.idle_timer is not None:
                    self.idle_timer.cancel()
                for task in self.handler_tasks:
                    task.cancel()
                self.closing = True
                self.wake.set()
                if flush:
                    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                        await asyncio.wait_for(asyncio.shield(writer_task), FLUSH_TIMEOUT)
            finally:
                writer_task.cancel()
                self.writer.close()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await writer_task
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    def _release_slots(self, count: int = 1) -> None:
        self.free_slots += count
        if self.free_slots == MAX_IN_FLIGHT:
            # The last running request has been answered: the client's idle
            # clock starts now, so it gets a full timeout to send its next
            # request (the idle check only saw "busy" some time before).
            self.last_request = self.loop.time()
        waiter = self.slot_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _dispatch(self, request_id: int, method: str, params: dict[str, Any]) -> None:
        """Start one request (``ControlConnection.next_request``'s fields); its slot
        is already taken."""
        if method in BUILTIN_METHODS:
            self._builtin(Request(request_id, method, params))
            return
        handler = self.server.handlers.get(method)
        if handler is None:
            self._reply(ErrorResponse(request_id, "bad_request", f"unknown method '{method}'"))
            return
        try:
            # A coroutine function runs nothing here; a future-returning one
            # has validated its params and started the work.
            awaitable = handler(params)
        except Exception as exc:
            self._reply_error((request_id, method), exc)
            return
        if type(awaitable) is Pending:
            # Resolved by a direct call (a leader's write from its apply loop):
            # the reply is queued in that same pass, no loop handle per request.
            self.handler_futures.add(awaitable)
            awaitable.then(self._pending_done, (request_id, method))
            return
        if isinstance(awaitable, asyncio.Future):
            self.handler_futures.add(awaitable)
            awaitable.add_done_callback(lambda fut: self._future_done((request_id, method), fut))
            return
        task = asyncio.create_task(self._run_handler(awaitable, (request_id, method)))
        self.handler_tasks.add(task)
        task.add_done_callback(self.handler_tasks.discard)

    async def _run_handler(self, awaitable: Awaitable[Any], call: _Call) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            self._release_slots()
            raise
        except Exception as exc:
            self._reply_error(call, exc)
            return
        self._reply_result(call[0], result)

    def _future_done(self, call: _Call, fut: asyncio.Future[Any] | Pending[Any]) -> None:
        self.handler_futures.discard(fut)
        if self.closing:
            self._release_slots()
            return
        if fut.cancelled():
            self._reply_error(call, NoQuorumError("the request was cancelled"))
            return
        exc = fut.exception()
        if exc is not None:
            self._reply_error(call, exc)
            return
        self._reply_result(call[0], fut.result())

    def _pending_done(self, call: _Call, pending: Pending[Any]) -> None:
        """``_future_done`` for a ``Pending`` (never cancelled), the reply made here:
        one call less per write of a leader's burst, the same replies."""
        self.handler_futures.discard(pending)
        if self.closing:
            self._release_slots()
            return
        exc = pending.exception()
        if exc is not None:
            self._reply_error(call, exc)
            return
        try:
            frame = self.conn.send_response(call[0], pending.result())
        except ProtocolError:
            self._reply(Response(call[0], pending.result()))  # _reply_result's error path
            return
        self._queue_frame(frame, True)

    def _reply_error(self, call: _Call, exc: BaseException) -> None:
        code, message = error_reply(exc)
        if code == "internal":
            logger.error(
                "control method %s failed", call[1], exc_info=(type(exc), exc, exc.__traceback__)
            )
        self._reply(ErrorResponse(call[0], code, message))

    def _builtin(self, request: Request) -> None:
        try:
            if request.method == "subscribe":
                result: dict[str, Any] = {"sub": self._subscribe(request.params)}
            else:
                self._unsubscribe(request.params)
                result = {}
        except ProtocolError as exc:
            self._reply(ErrorResponse(request.id, "bad_request", str(exc)))
            return
        self._reply(Response(request.id, result))

    def _subscribe(self, params: dict[str, Any]) -> int:
        topics = params.get("topics")
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise ProtocolError("subscribe needs topics: a list of str")
        plain, kinds = parse_topics(topics, self.server.topics)
        if len(self.subs) >= MAX_SUBSCRIPTIONS:
            raise ProtocolError(f"more than {MAX_SUBSCRIPTIONS} subscriptions")
        sub_id = self.next_sub_id
        self.next_sub_id += 1
        self.subs[sub_id] = sub = _Subscription(sub_id, plain, kinds)
        self.server.count_topics(sub.topics, 1)
        return sub_id

    def _unsubscribe(self, params: dict[str, Any]) -> None:
        sub_id = params.get("sub")
        if type(sub_id) is not int or sub_id not in self.subs:
            raise ProtocolError(f"no subscription {sub_id!r}")
        self.server.count_topics(self.subs.pop(sub_id).topics, -1)

    # -- writing
    def _reply_result(self, request_id: int, result: Any) -> None:
        """The success reply, without building a ``Response`` (the hot path)."""
        try:
            frame = self.conn.send_response(request_id, result)
        except ProtocolError:
            self._reply(Response(request_id, result))  # the error handling below
            return
        self._queue_frame(frame, True)

    def _reply(self, message: Message, holds_slot: bool = True) -> None:
        try:
            frame = self.conn.send(message)
        except ProtocolError as exc:
            if self.conn.state is State.ERROR:  # hanging up: the farewell has been queued
                if holds_slot:
                    self._release_slots()
                return
            assert isinstance(message, Response)
            logger.error("control reply to request %d not encodable: %s", message.id, exc)
            frame = self.conn.send(
                ErrorResponse(message.id, "internal", f"result not encodable: {exc}")
            )
        self._queue_frame(frame, holds_slot)

    def _queue_frame(self, frame: bytes, holds_slot: bool) -> None:
        # Fast path: with nothing queued and room in the transport buffer, the
        # frame joins this loop iteration's batch, written by ``_flush_batch``
        # without a hop through the writer task.  Many handlers finish in the
        # same iteration (one commit answers a whole group), so this is one
        # send for all of them.  A client that does not read fills the buffer,
        # and replies then queue and hold their slots.
        # Within a pass, after the first frame of its batch, only the batch's own
        # bytes are counted against the room the transport had then: nothing but
        # the writer task writes meanwhile (an event, at most), and a transport
        # closing or a broken stream makes ``_flush_batch`` write nothing.
        if self.flush_scheduled and not self.replies and self.batch_bytes < self.batch_room:
            self.batch.append(frame)
            self.batch_bytes += len(frame)
            if holds_slot:
                self.batch_slots += 1
            return
        transport = self.writer.transport
        if (
            not self.replies
            and not self.broken
            and not transport.is_closing()
            and transport.get_write_buffer_size() + self.batch_bytes < DIRECT_WRITE_LIMIT
        ):
            self.batch.append(frame)
            self.batch_bytes += len(frame)
            if holds_slot:
                self.batch_slots += 1
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.batch_room = DIRECT_WRITE_LIMIT - transport.get_write_buffer_size()
                self.loop.call_soon(self._flush_batch)
            return
        self.replies.append((frame, holds_slot))
        self.wake.set()

    def _flush_batch(self) -> None:
        """Write the batched replies in one go and free their slots."""
        self.flush_scheduled = False
        if not self.batch:
            return
        data = self.batch[0] if len(self.batch) == 1 else b"".join(self.batch)
        slots = self.batch_slots
        self.batch.clear()
        self.batch_bytes = self.batch_slots = 0
        if not self.broken and not self.writer.transport.is_closing():
            self.writer.write(data)
        if slots:
            self._release_slots(slots)

    def offer(self, topic: str, data: dict[str, Any]) -> None:
        """Queue an event for every subscription of this client that wants ``topic``
        (and, with a kind filter, ``data["kind"]``): an unwanted event is dropped
        here, before it is queued or encoded."""
        queued = False
        for sub in self.subs.values():
            if topic not in sub.topics:
                continue
            if sub.kinds:
                kinds = sub.kinds.get(topic)
                if kinds is not None and data.get("kind") not in kinds:
                    continue
            if len(sub.queue) >= SUBSCRIBER_QUEUE:
                sub.queue.popleft()
                sub.dropped += 1
            sub.queue.append((topic, data))
            queued = True
        if queued:
            self.wake.set()

    def _next_event_frame(self) -> bytes | None:
        subs = list(self.subs.values())
        for step in range(len(subs)):
            sub = subs[(self.rr + step) % len(subs)]
            if sub.dropped:
                self.rr = (self.rr + step + 1) % len(subs)
                dropped, sub.dropped = sub.dropped, 0
                return self.conn.send(Event("overflow", sub.id, {"dropped": dropped}))
            while sub.queue:
                topic, data = sub.queue.popleft()
                try:
                    frame = self.conn.send(Event(topic, sub.id, data))
                except ProtocolError as exc:
                    logger.error("dropping unencodable %s event: %s", topic, exc)
                    continue
                self.rr = (self.rr + step + 1) % len(subs)
                return frame
        return None

    async def _write_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while True:
                # Batched replies go first: a subscribe reply must precede its events.
                self._flush_batch()
                if self.replies:
                    frame, holds_slot = self.replies.popleft()
                    await self._write(frame)
                    if holds_slot:
                        self._release_slots()
                    continue
                if self.conn.state is State.ERROR or self.broken:
                    break
                event_frame = self._next_event_frame()
                if event_frame is None:
                    break
                await self._write(event_frame)
            if self.closing:
                return

    async def _write(self, frame: bytes) -> None:
        # Once the socket fails, keep consuming replies without writing them:
        # each one frees a slot, so a reader waiting for a slot cannot hang.
        if self.broken:
            return
        try:
            self.writer.write(frame)
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.broken = True
            for sub in self.subs.values():
                sub.queue.clear()
            self.writer.transport.abort()


def _waitable(item: asyncio.Future[Any] | Pending[Any]) -> asyncio.Future[Any]:
    """A loop future for ``asyncio.wait`` (a ``Pending`` is not one)."""
    return as_future(item) if isinstance(item, Pending) else item
