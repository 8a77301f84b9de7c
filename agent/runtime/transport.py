"""Sealed peer transport: one UDP socket and one TCP listener on the same port.

Theory of operation
-------------------
Datagrams (SWIM) are sealed with the cluster keyring and sent from the bound
UDP socket, so their source address *is* the sender's listen address; the
receiver opens them and calls ``on_datagram("host:port", payload)``.  A
payload over ``wire.MAX_DATAGRAM_SIZE`` is dropped and counted, never
fragmented.  Each datagram echoes the cookie its receiver granted us
(``agent.envelope``, "Datagrams"): one without it is refused and answered
with a grant, and the first datagrams to a new peer are sent again once its
grant is in (``agent.runtime.cookies``).

Streams (Raft, state sync, task output) go over one pooled outbound TCP
connection per destination address.  ``send_stream`` only appends to a
bounded per-peer queue (oldest dropped and counted when full, by count and by
bytes); a writer task per peer connects, sends a sealed ``wire.Hello`` naming
this node and its listen address, then seals queued payloads *as they are
written*, so sequence numbers reach each peer in order and a key rotation
applies to queued messages too.  Every frame is ``4-byte length | sealed
packet``, and a sealed packet carries a batch: whatever is queued, up to
``BATCH_BYTES``/``MAX_BATCH_MESSAGES``, as ``(4-byte length | payload)*``.
Batching pays the AEAD call, the replay check and the syscall once per batch
instead of once per message, so a pipelining sender (Raft AppendEntries) is
not held back by per-message sealing; a lone message is a batch of one.

The writer also reads its connection, only to notice the peer closing it
(the peer never answers on it: replies come back on the peer's own outbound
connection to our listen address, which is what the Hello is for).  The one
exception is the first frame: the acceptor writes a CHALLENGE, and every frame
of the connection, the Hello first, is sealed with it as its cookie, so frames
recorded from another connection are refused (``agent.envelope``, "Streams").

Reconnection backs off exponentially with "equal jitter": before attempt n
it waits uniformly in [d/2, d] with d = min(5 s, 50 ms * 2**n).  The attempt
count resets once a connection has stayed up for a second, so a peer that
accepts and immediately drops us is retried with growing delays too.  The
jitter keeps a restarted node from being hit by every peer at once.

Delivery is best effort, like UDP with ordering: messages queued while a
peer is down are delivered after it is back, but a message written just
before the connection died can be lost.  The protocols above (Raft, SWIM)
already retransmit.

Inbound connections must present a valid Hello within ``HELLO_TIMEOUT``;
each frame is opened (tag, key, replay checks) and failures are dropped and
counted; ``MAX_CONSECUTIVE_FAILURES`` in a row close the connection, as does
an oversized frame header.  Garbage on either port never raises out of the
transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from agent import wire
from agent.crypto import Keyring, SealError
from agent.discovery import backoff_delay as capped_backoff
from agent.envelope import (
    DATAGRAM_OVERHEAD,
    NO_COOKIE,
    Channel,
    CookieNeeded,
    Envelope,
    Grant,
)
from agent.errors import ConfigError, ProtocolError
from agent.runtime.cookies import CookieJar, GrantLimiter
from agent.runtime.inbound import (
    MAX_BATCH_MESSAGES,
    MAX_CONSECUTIVE_FAILURES,
    InboundStream,
    join_batch,
    split_batch,
)
from agent.runtime.peer_addr import format_addr, parse_addr
from agent.runtime.transport_stats import TransportStats

__all__ = [  # the batch format and its limits live with the inbound side
    "MAX_BATCH_MESSAGES",
    "MAX_CONSECUTIVE_FAILURES",
    "Transport",
    "TransportStats",
    "backoff_delay",
    "format_addr",
    "join_batch",
    "parse_addr",
    "split_batch",
]

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.05
"""Seconds: reconnection delay scale (first retry waits 25-50 ms)."""
BACKOFF_CAP = 5.0
"""Seconds: longest reconnection delay."""
STABLE_CONNECTION = 1.0
"""Seconds a connection must stay up before the backoff attempt count resets."""
CONNECT_TIMEOUT = 3.0
"""Seconds to wait for a TCP connect, and then for the peer's challenge frame."""
MAX_CHALLENGE_FRAME = 1024
"""Bytes a challenge frame may claim (a real one is 70): more is not a peer."""
HELLO_TIMEOUT = 10.0
"""Seconds an inbound connection has to present a valid Hello."""
MAX_PEER_QUEUE = 4096
"""Messages queued per destination before the oldest is dropped."""
MAX_PEER_QUEUE_BYTES = 64 * 1024 * 1024
"""Bytes queued per destination before the oldest messages are dropped."""
MAX_OUTBOUND_PEERS = 1024
"""Destinations with a pooled connection; the least recently used is evicted."""
MAX_INBOUND_CONNECTIONS = 1024
"""Inbound TCP connections served at once; more are closed on accept."""
MAX_STREAM_PAYLOAD = wire.MAX_FRAME_SIZE - DATAGRAM_OVERHEAD - 4
"""Largest payload ``send_stream`` accepts (a batch of one must fit in a frame)."""
BATCH_BYTES = 256 * 1024
"""Bytes of queued messages sealed together in one frame (a larger message goes alone)."""
READ_CHUNK = 256 * 1024
UDP_RECEIVE_BUFFER = 1024 * 1024

Callback = Callable[[str, bytes], None]


def backoff_delay(attempt: int, rng: random.Random,
                  base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before reconnection ``attempt`` (0-based): equal jitter
    under the capped exponential ceiling discovery's re-joins use too."""
    ceiling = capped_backoff(attempt, base, cap)
    return ceiling / 2 + rng.random() * ceiling / 2


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: Transport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._owner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from an earlier sendto (port unreachable, ...).
        self._owner.stats.dropped_send_error += 1


class _Peer:
    """Outbound state for one destination address."""

    __slots__ = ("addr", "attempt", "broken", "burst", "cookie", "host", "last_used", "port",
                 "queue", "queued_bytes", "task", "wakeup", "writer")

    def __init__(self, addr: str, host: str, port: int) -> None:
        self.addr = addr
        self.host = host
        self.port = port
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.broken = False
        self.burst = False  # a message went out directly in this event / loop iteration
        self.writer: asyncio.StreamWriter | None = None  # set while connected
        self.cookie = NO_COOKIE  # the connection's challenge, while connected
        self.attempt = 0
        self.task: asyncio.Task[None] | None = None
        self.last_used = time.monotonic()

    def end_burst(self) -> None:
        self.burst = False


class Transport:
    """Sealed UDP datagrams and TCP streams on one port (see module docstring).

    Replay protection needs nothing from the caller: each Transport draws a
    random boot id, and freshness is proved with the receivers' cookies, so it
    holds across restarts, data dirs restored from copies and clock changes.
    ``on_datagram`` and ``on_stream_message`` are called synchronously with
    ``(from_addr, payload)``; an exception in them is logged and counted,
    never propagated.
    """

    def __init__(
        self,
        bind_host: str,
        port: int,
        keyring: Keyring,
        node_id: str,
        on_datagram: Callback,
        on_stream_message: Callback,
        stats: TransportStats | None = None,
        *,
        advertise: str | None = None,
        rng: random.Random | None = None,
        on_connection_lost: Callable[[str], None] | None = None,
        on_connect_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.bind_host = bind_host
        self.port = port
        self.node_id = node_id
        self.stats = stats if stats is not None else TransportStats()
        self.envelope = Envelope(keyring, node_id, stats=self.stats.seal)
        self._cookies = CookieJar()
        self._grants = GrantLimiter()
        self._advertise = advertise
        self._on_datagram = on_datagram
        self._on_stream = on_stream_message
        self._on_connection_lost = on_connection_lost
        self._on_connect_failed = on_connect_failed
        self._stream_cap = MAX_OUTBOUND_PEERS
        self._cap_exempt: Callable[[str], bool] = lambda _addr: False
        self._rng = rng if rng is not None else random.Random()
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._inbound: set[InboundStream] = set()
        self._dispatching = False  # inside begin_dispatch() .. end_dispatch()
        self._burst_peers: list[_Peer] = []
        self._closing = False

    @property
    def listen_addr(self) -> str:
        """The address peers answer to (``advertise`` or bind host + bound port)."""
        return self._advertise or format_addr(self.bind_host, self.port)

    @property
    def advertise(self) -> str | None:
        """The "host:port" sent in Hello frames (peers answer streams to it);
        may be set after ``start()`` once a port-0 bind has picked the port."""
        return self._advertise

    @advertise.setter
    def advertise(self, addr: str | None) -> None:
        if addr is not None:
            parse_addr(addr)  # ConfigError if malformed
        self._advertise = addr

    @property
    def keyring(self) -> Keyring:
        return self.envelope.keyring

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind TCP then UDP on the same port (port 0: TCP picks, UDP follows)."""
        loop = asyncio.get_running_loop()
        for _ in range(50):
            # HELLO_TIMEOUT is read per connection (tests shorten it).
            server = await loop.create_server(
                lambda: InboundStream(self, HELLO_TIMEOUT), self.bind_host, self.port,
                reuse_address=True)
            port = server.sockets[0].getsockname()[1]
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(self.bind_host, port))
            except OSError:
                server.close()
                await server.wait_closed()
                if self.port != 0:
                    raise
                continue  # the UDP twin of a random TCP port was taken; pick again
            break
        else:
            raise OSError(f"no port free for both TCP and UDP on {self.bind_host}")
        sock = udp.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        self._server, self._udp, self.port = server, udp, port  # type: ignore[assignment]

    async def close(self) -> None:
        """Stop listening, drop queued messages, close every connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        for stream in list(self._inbound):
            stream.close()
        tasks = [p.task for p in self._peers.values() if p.task is not None]
        for peer in self._peers.values():
            peer.broken = True  # a writer that missed its cancellation still ends
            peer.wakeup.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._peers.clear()
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ datagrams

    def send_datagram(self, addr: str, payload: bytes) -> bool:
        """Seal and send one datagram; False if it was dropped (and counted).
        After ``close()`` every send is a silent no-op returning False."""
        if self._closing:
            return False
        assert self._udp is not None, "transport not started"
        if len(payload) > wire.MAX_DATAGRAM_SIZE:
            self.stats.dropped_oversize += 1
            return False
        try:
            host, port = parse_addr(addr)
        except ConfigError:
            self.stats.dropped_bad_addr += 1
            return False
        envelope = self.envelope
        cookie = self._cookies.cookie_for(addr)
        packet = envelope.seal(Channel.DATAGRAM, payload, cookie or NO_COOKIE)
        self._cookies.sent(addr, envelope.sequences[Channel.DATAGRAM], payload, cookie is None,
                           time.monotonic())
        try:
            self._udp.sendto(packet, (host, port))
        except (OSError, ValueError):
            self.stats.dropped_send_error += 1
            return False
        self.stats.datagrams_out += 1
        self.stats.datagram_bytes_out += len(packet)
        return True

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """A datagram on our UDP socket (from ``_UdpProtocol``): open, answer, deliver."""
        if len(data) > wire.MAX_DATAGRAM_SIZE + DATAGRAM_OVERHEAD:
            self.stats.dropped_oversize += 1
            return
        try:
            payload = self.envelope.open_datagram(data)
        except CookieNeeded as refused:
            self._answer_refused(refused, addr)
            return
        except SealError:
            return  # counted by the envelope
        if isinstance(payload, Grant):
            self._take_grant(payload, addr)
            return
        self.stats.datagrams_in += 1
        self.stats.datagram_bytes_in += len(data)
        self.begin_dispatch()
        try:
            self._deliver(self._on_datagram, format_addr(str(addr[0]), int(addr[1])), payload)
        finally:
            self.end_dispatch()

    def _answer_refused(self, refused: CookieNeeded, addr: tuple[Any, ...]) -> None:
        """Grant the sender of a refused datagram its cookie (rate limited)."""
        assert self._udp is not None
        if self._closing or not self._grants.allow(f"{addr[0]}:{addr[1]}", time.monotonic()):
            self.stats.grants_suppressed += 1
            return
        try:
            self._udp.sendto(self.envelope.seal_grant(refused, self.listen_addr), addr)
        except (OSError, ValueError):
            self.stats.dropped_send_error += 1
            return
        self.stats.grants_out += 1

    def _take_grant(self, grant: Grant, addr: tuple[Any, ...]) -> None:
        """A peer granted us a cookie: file it, resend what it refused for want of one."""
        self.stats.grants_in += 1
        from_addr = format_addr(str(addr[0]), int(addr[1]))
        for to, payload in self._cookies.learn(from_addr, grant, time.monotonic()):
            if self.send_datagram(to, payload):
                self.stats.datagrams_resent += 1

    def _deliver(self, callback: Callback, from_addr: str, payload: bytes) -> None:
        try:
            callback(from_addr, payload)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("transport callback failed for a message from %s", from_addr)

    # ------------------------------------------------------------------ outbound streams

    def send_stream(self, addr: str, payload: bytes) -> bool:
        """Queue ``payload`` for the pooled connection to ``addr``; False if dropped."""
        if self._closing:
            return False
        assert self._server is not None, "transport not started"
        if len(payload) > MAX_STREAM_PAYLOAD:
            self.stats.dropped_oversize += 1
            log.warning("stream message of %d bytes to %s dropped: over %d",
                        len(payload), addr, MAX_STREAM_PAYLOAD)
            return False
        peer = self._peers.get(addr)
        if peer is None:
            try:
                host, port = parse_addr(addr)
            except ConfigError:
                self.stats.dropped_bad_addr += 1
                return False
            peer = self._add_peer(addr, host, port)
        else:
            self._peers.move_to_end(addr)
        peer.last_used = time.monotonic()
        queue = peer.queue
        writer = peer.writer
        if (not queue and not peer.burst and writer is not None and not peer.broken
                and writer.transport.get_write_buffer_size() <= BATCH_BYTES):
            # Idle connection: write now rather than wake the writer task (a
            # loop hop each way matters for request/response latency).  Later
            # messages of the same burst are queued and go out as one batch.  A
            # burst is what one inbound message's handling sends (ended by
            # end_dispatch, no loop callback per message), else one loop iteration.
            peer.burst = True
            if self._dispatching:
                self._burst_peers.append(peer)
            else:
                asyncio.get_running_loop().call_soon(peer.end_burst)
            self._write_batch(writer, [payload], peer.cookie)
            return True
        queue.append(payload)
        peer.queued_bytes += len(payload)
        while len(queue) > MAX_PEER_QUEUE or peer.queued_bytes > MAX_PEER_QUEUE_BYTES:
            peer.queued_bytes -= len(queue.popleft())
            self.stats.dropped_queue_full += 1
        peer.wakeup.set()
        return True

    def _add_peer(self, addr: str, host: str, port: int) -> _Peer:
        capped = [a for a in self._peers if not self._cap_exempt(a)] if (
            len(self._peers) >= self._stream_cap) else []
        if len(capped) >= self._stream_cap:
            self.stats.streams_evicted += 1
            self.drop_peer(capped[0])  # least recently used first
        if len(self._peers) >= MAX_OUTBOUND_PEERS:
            self.drop_peer(next(iter(self._peers)))
        peer = _Peer(addr, host, port)
        peer.task = asyncio.get_running_loop().create_task(
            self._run_peer(peer), name=f"transport-out-{addr}")
        self._peers[addr] = peer
        return peer

    def set_stream_cap(self, cap: int, exempt: Callable[[str], bool]) -> None:
        """Keep at most ``cap`` outbound streams to addresses ``exempt`` does not
        name (the leader's replication streams are exempt); the least recently
        used one is closed to make room."""
        self._stream_cap = max(1, cap)
        self._cap_exempt = exempt

    def drop_peer(self, addr: str) -> None:
        """Close the pooled stream to ``addr`` and drop what is queued for it
        (counted); the next message to ``addr`` opens a new connection."""
        peer = self._peers.pop(addr, None)
        if peer is None:
            return
        self.stats.dropped_queue_full += len(peer.queue)
        peer.queue.clear()
        peer.broken = True
        peer.wakeup.set()
        if peer.task is not None:
            peer.task.cancel()

    def close_idle(self, now: float, idle: float) -> int:
        """Close outbound streams unused for ``idle`` seconds; how many were closed."""
        stale = [a for a, p in self._peers.items() if now - p.last_used >= idle and not p.queue]
        for addr in stale:
            self.drop_peer(addr)
        self.stats.streams_idle_closed += len(stale)
        return len(stale)

    def queued(self, addr: str) -> int:
        """Messages waiting in the outbound queue to ``addr``."""
        peer = self._peers.get(addr)
        return len(peer.queue) if peer is not None else 0

    def outbound(self) -> list[tuple[str, bool, int]]:
        """(address, connected, queued messages) per pooled destination."""
        return [(p.addr, p.writer is not None, len(p.queue)) for p in self._peers.values()]

    async def _run_peer(self, peer: _Peer) -> None:
        while not self._closing:
            while not peer.queue:
                peer.wakeup.clear()
                await peer.wakeup.wait()
            try:
                # Not wait_for: on 3.11 it can swallow a cancellation (CPython gh-86296).
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await asyncio.open_connection(peer.host, peer.port)
            except (OSError, TimeoutError):
                self.stats.connect_failures += 1
                if self._on_connect_failed is not None:
                    self._on_connect_failed(peer.addr)
                await asyncio.sleep(backoff_delay(peer.attempt, self._rng))
                peer.attempt += 1
                continue
            self.stats.connects += 1
            started = time.monotonic()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    challenge = await self._read_challenge(reader)
            except (OSError, ConnectionError, TimeoutError, ProtocolError, SealError):
                self.stats.bad_challenges += 1
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                await asyncio.sleep(backoff_delay(peer.attempt, self._rng))
                peer.attempt += 1
                continue
            try:
                await self._pump(peer, reader, writer, challenge)
            except Exception:
                # A bug must not silently kill this peer's writer (its queue
                # would never drain): log it and go round again, backing off.
                log.exception("stream writer to %s failed", peer.addr)
                started = float("inf")  # always back off after a failure
            if time.monotonic() - started >= STABLE_CONNECTION:
                peer.attempt = 0
            else:
                await asyncio.sleep(backoff_delay(peer.attempt, self._rng))
                peer.attempt += 1

    async def _read_challenge(self, reader: asyncio.StreamReader) -> bytes:
        """The cookie of the CHALLENGE frame an accepting peer writes first."""
        decoder = wire.FrameDecoder(MAX_CHALLENGE_FRAME)
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                raise ConnectionError("closed before its challenge")
            frames = decoder.feed(data)
            if frames:
                return self.envelope.open_challenge(frames[0])

    async def _pump(self, peer: _Peer, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, cookie: bytes) -> None:
        """Write the queue to one connection until it breaks; every frame is
        sealed with the connection's challenge ``cookie``."""
        peer.broken = False
        watcher = asyncio.get_running_loop().create_task(self._watch_eof(peer, reader))
        try:
            peer.cookie = cookie
            hello = wire.encode(wire.Hello(self.node_id, self.listen_addr))
            writer.write(wire.frame(self.envelope.seal(Channel.STREAM, join_batch([hello]), cookie)))
            peer.writer = writer
            while not peer.broken:
                queue = peer.queue
                while queue and not peer.broken:
                    batch = [queue.popleft()]
                    size = len(batch[0])
                    while (queue and size + len(queue[0]) <= BATCH_BYTES
                           and len(batch) < MAX_BATCH_MESSAGES):
                        payload = queue.popleft()
                        batch.append(payload)
                        size += len(payload)
                    peer.queued_bytes -= size
                    self._write_batch(writer, batch, cookie)
                    if writer.transport.get_write_buffer_size() > BATCH_BYTES:
                        await writer.drain()
                await writer.drain()
                if not queue and not peer.broken:
                    peer.wakeup.clear()
                    await peer.wakeup.wait()
        except (OSError, ConnectionError):
            pass
        finally:
            peer.writer = None
            self._connection_lost(peer.addr)
            watcher.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    def _write_batch(self, writer: asyncio.StreamWriter, batch: list[bytes], cookie: bytes) -> None:
        """Seal ``batch`` into one frame and hand it to the connection."""
        data = wire.frame(self.envelope.seal(Channel.STREAM, join_batch(batch), cookie))
        writer.transport.write(data)  # what StreamWriter.write does, one call less
        stats = self.stats
        stats.stream_msgs_out += len(batch)
        stats.stream_frames_out += 1
        stats.stream_bytes_out += len(data)

    async def _watch_eof(self, peer: _Peer, reader: asyncio.StreamReader) -> None:
        """The peer never writes on our outbound connection: any read end means it is gone."""
        with contextlib.suppress(OSError, ConnectionError):
            while await reader.read(READ_CHUNK):
                pass
        peer.broken = True
        peer.wakeup.set()

    # ------------------------------------------------------------------ inbound streams
    # (the protocol itself is agent.runtime.inbound.InboundStream)

    @property
    def closing(self) -> bool:
        return self._closing

    def admit_inbound(self, stream: InboundStream) -> bool:
        """Register a new inbound connection; False when there are too many."""
        if len(self._inbound) >= MAX_INBOUND_CONNECTIONS:
            return False
        self._inbound.add(stream)
        return True

    def inbound_closed(self, stream: InboundStream) -> None:
        self._inbound.discard(stream)
        if stream.peer is not None:
            self._connection_lost(stream.peer)

    def begin_dispatch(self) -> None:
        """Inbound messages are being handed to the owner: what they make us send
        is one burst per peer until :meth:`end_dispatch`."""
        self._dispatching = True

    def end_dispatch(self) -> None:
        self._dispatching = False
        for peer in self._burst_peers:
            peer.burst = False
        self._burst_peers.clear()

    def deliver_stream(self, from_addr: str, payload: bytes) -> None:
        self._deliver(self._on_stream, from_addr, payload)

    def _connection_lost(self, addr: str) -> None:
        """Tell the owner a connection with ``addr`` ended (not when we are closing)."""
        if self._closing or self._on_connection_lost is None:
            return
        try:
            self._on_connection_lost(addr)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("connection-lost callback failed for %s", addr)
