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

The writer and its reconnection live in ``agent.runtime.outbound``
(``OutboundPeer``).  Reconnection backs off exponentially with "equal jitter": before attempt n
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
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agent import wire
from agent.crypto import Keyring, SealError
from agent.envelope import (
    DATAGRAM_OVERHEAD,
    NO_COOKIE,
    Channel,
    CookieNeeded,
    Envelope,
    Grant,
)
from agent.errors import ConfigError
from agent.runtime.cookies import CookieJar, GrantLimiter
from agent.runtime.inbound import (
    MAX_BATCH_MESSAGES,
    MAX_CONSECUTIVE_FAILURES,
    InboundStream,
    join_batch,
    split_batch,
)
from agent.runtime.outbound import (
    BATCH_BYTES,
    OutboundPeer,
    backoff_delay,
    write_batch,
)
from agent.runtime.peer_addr import format_addr, parse_addr
from agent.runtime.transport_stats import TransportStats

__all__ = [  # the batch format and its limits live with the inbound side
    "MAX_BATCH_MESSAGES",
    "MAX_CONSECUTIVE_FAILURES",
    "Transport",
    "TransportStats",
    "backoff_delay",  # the reconnection backoff lives with the writer (outbound.py)
    "format_addr",
    "join_batch",
    "parse_addr",
    "split_batch",
]

log = logging.getLogger(__name__)

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
UDP_RECEIVE_BUFFER = 1024 * 1024

Callback = Callable[[str, bytes], None]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: Transport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._owner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from an earlier sendto (port unreachable, ...).
        self._owner.stats.dropped_send_error += 1


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
        self._peers: OrderedDict[str, OutboundPeer] = OrderedDict()
        self._inbound: set[InboundStream] = set()
        self._dispatching = False  # inside begin_dispatch() .. end_dispatch()
        self._burst_peers: list[OutboundPeer] = []
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
            write_batch(self, writer, [payload], peer.cookie)
            return True
        queue.append(payload)
        peer.queued_bytes += len(payload)
        while len(queue) > MAX_PEER_QUEUE or peer.queued_bytes > MAX_PEER_QUEUE_BYTES:
            peer.queued_bytes -= len(queue.popleft())
            self.stats.dropped_queue_full += 1
        peer.wakeup.set()
        return True

    def _add_peer(self, addr: str, host: str, port: int) -> OutboundPeer:
        capped = [a for a in self._peers if not self._cap_exempt(a)] if (
            len(self._peers) >= self._stream_cap) else []
        if len(capped) >= self._stream_cap:
            self.stats.streams_evicted += 1
            self.drop_peer(capped[0])  # least recently used first
        if len(self._peers) >= MAX_OUTBOUND_PEERS:
            self.drop_peer(next(iter(self._peers)))
        peer = OutboundPeer(addr, host, port)
        peer.task = asyncio.get_running_loop().create_task(
            peer.run(self, self._rng), name=f"transport-out-{addr}")
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

    def stream_round_trip(self, addr: str, within: float) -> float | None:
        """RTT (seconds) of our stream to ``addr`` if it made a round trip in the last
        ``within`` seconds (``OutboundPeer.round_trip``), else None."""
        peer = self._peers.get(addr)
        return peer.round_trip(within) if peer is not None else None

    def outbound(self) -> list[tuple[str, bool, int]]:
        """(address, connected, queued messages) per pooled destination."""
        return [(p.addr, p.writer is not None, len(p.queue)) for p in self._peers.values()]

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
            self.connection_lost(stream.peer)

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

    def connect_failed(self, addr: str) -> None:
        """Tell the owner a connect to ``addr`` failed (the writer backs off and retries)."""
        if self._on_connect_failed is not None:
            self._on_connect_failed(addr)

    def connection_lost(self, addr: str) -> None:
        """Tell the owner a connection with ``addr`` ended (not when we are closing)."""
        if self._closing or self._on_connection_lost is None:
            return
        try:
            self._on_connection_lost(addr)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("connection-lost callback failed for %s", addr)
