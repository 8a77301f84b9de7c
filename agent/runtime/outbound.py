"""Outbound peer streams: one pooled connection per destination and its writer.

The transport (``agent.runtime.transport``, whose docstring is the theory of
operation) keeps an :class:`OutboundPeer` per destination address: a bounded
queue that ``Transport.send_stream`` appends to, and a writer task
(:meth:`OutboundPeer.run`) that connects, reads the acceptor's CHALLENGE, sends
a sealed ``wire.Hello`` and then seals what is queued into batches as it writes
them, reconnecting with jittered exponential backoff when the connection breaks.
The writer reads its connection only to notice the peer closing it.

The writer reaches the transport through :class:`OutboundHost`, the few things
it needs (the envelope, the counters, who we are, and two callbacks), so this
module never sees the transport's datagram side or its peer table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections import deque
from typing import Protocol

from agent import wire
from agent.crypto import SealError
from agent.discovery import backoff_delay as capped_backoff
from agent.envelope import NO_COOKIE, Channel, Envelope
from agent.errors import ProtocolError
from agent.runtime.inbound import MAX_BATCH_MESSAGES, join_batch
from agent.runtime.transport_stats import TransportStats

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
BATCH_BYTES = 256 * 1024
"""Bytes of queued messages sealed together in one frame (a larger message goes alone)."""
READ_CHUNK = 256 * 1024
"""Bytes asked of the socket per read."""
TCP_INFO = getattr(socket, "TCP_INFO", None)
"""Linux's ``getsockopt`` option for ``struct tcp_info`` (None elsewhere: no evidence)."""
_TCP_INFO = struct.Struct("8B17I")
"""``struct tcp_info`` up to ``tcpi_rttvar`` (stable Linux ABI): 8 one-byte fields,
then ``tcpi_rto`` ... ``tcpi_rttvar`` as 32-bit words."""
_STATE, _UNACKED, _LAST_DATA_SENT, _LAST_ACK_RECV, _RTT = 0, 12, 17, 20, 23
"""Indexes in the unpacked tuple: ``tcpi_state`` (1 = ESTABLISHED), ``tcpi_unacked``
(segments), ``tcpi_last_data_sent`` and ``tcpi_last_ack_recv`` (ms ago), ``tcpi_rtt`` (µs)."""


def backoff_delay(attempt: int, rng: random.Random,
                  base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before reconnection ``attempt`` (0-based): equal jitter
    under the capped exponential ceiling discovery's re-joins use too."""
    ceiling = capped_backoff(attempt, base, cap)
    return ceiling / 2 + rng.random() * ceiling / 2


class OutboundHost(Protocol):
    """What a writer needs of its transport."""

    stats: TransportStats
    envelope: Envelope
    node_id: str

    @property
    def listen_addr(self) -> str: ...

    @property
    def closing(self) -> bool: ...

    def connect_failed(self, addr: str) -> None:
        """A connect to ``addr`` failed (refused, unreachable or timed out)."""

    def connection_lost(self, addr: str) -> None:
        """A connection with ``addr`` ended."""


def write_batch(host: OutboundHost, writer: asyncio.StreamWriter, batch: list[bytes],
                cookie: bytes) -> None:
    """Seal ``batch`` into one frame and hand it to the connection."""
    data = wire.frame(host.envelope.seal(Channel.STREAM, join_batch(batch), cookie))
    writer.transport.write(data)  # what StreamWriter.write does, one call less
    stats = host.stats
    stats.stream_msgs_out += len(batch)
    stats.stream_frames_out += 1
    stats.stream_bytes_out += len(data)


class OutboundPeer:
    """Outbound state for one destination address, and its writer."""

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

    def round_trip(self, within: float) -> float | None:
        """The connection's smoothed RTT (seconds) if it made a round trip in the last
        ``within`` seconds, else None.

        A round trip: data went out within ``within`` and the peer's kernel has
        acknowledged all of it (nothing unacknowledged), so an ACK crossed back in
        that time too -- the direct path worked both ways, which is what a link
        probe shows (``agent.links.state``: a busy peer is spared its LinkPing).
        Unacknowledged data, no data sent lately, no connection or not Linux: None,
        and the probe goes out as before.  One ``getsockopt`` (about 2 µs)."""
        writer = self.writer
        if writer is None or TCP_INFO is None:
            return None
        sock = writer.get_extra_info("socket")
        try:
            info = _TCP_INFO.unpack_from(sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO,
                                                         _TCP_INFO.size))
        except (OSError, AttributeError, struct.error):
            return None
        window_ms = within * 1000.0
        if (info[_STATE] != 1 or info[_UNACKED] != 0
                or info[_LAST_DATA_SENT] > window_ms or info[_LAST_ACK_RECV] > window_ms):
            return None
        return float(info[_RTT]) / 1e6

    async def run(self, owner: OutboundHost, rng: random.Random) -> None:
        """Connect when something is queued, write until the connection breaks, repeat."""
        while not owner.closing:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            try:
                # Not wait_for: on 3.11 it can swallow a cancellation (CPython gh-86296).
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError):
                owner.stats.connect_failures += 1
                owner.connect_failed(self.addr)
                await asyncio.sleep(backoff_delay(self.attempt, rng))
                self.attempt += 1
                continue
            owner.stats.connects += 1
            started = time.monotonic()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    challenge = await self._read_challenge(owner, reader)
            except (OSError, ConnectionError, TimeoutError, ProtocolError, SealError):
                owner.stats.bad_challenges += 1
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                await asyncio.sleep(backoff_delay(self.attempt, rng))
                self.attempt += 1
                continue
            try:
                await self._pump(owner, reader, writer, challenge)
            except Exception:
                # A bug must not silently kill this peer's writer (its queue
                # would never drain): log it and go round again, backing off.
                log.exception("stream writer to %s failed", self.addr)
                started = float("inf")  # always back off after a failure
            if time.monotonic() - started >= STABLE_CONNECTION:
                self.attempt = 0
            else:
                await asyncio.sleep(backoff_delay(self.attempt, rng))
                self.attempt += 1

    @staticmethod
    async def _read_challenge(owner: OutboundHost, reader: asyncio.StreamReader) -> bytes:
        """The cookie of the CHALLENGE frame an accepting peer writes first."""
        decoder = wire.FrameDecoder(MAX_CHALLENGE_FRAME)
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                raise ConnectionError("closed before its challenge")
            frames = decoder.feed(data)
            if frames:
                return owner.envelope.open_challenge(frames[0])

    async def _pump(self, owner: OutboundHost, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, cookie: bytes) -> None:
        """Write the queue to one connection until it breaks; every frame is
        sealed with the connection's challenge ``cookie``."""
        self.broken = False
        watcher = asyncio.get_running_loop().create_task(self._watch_eof(reader))
        try:
            self.cookie = cookie
            hello = wire.encode(wire.Hello(owner.node_id, owner.listen_addr))
            writer.write(wire.frame(owner.envelope.seal(Channel.STREAM, join_batch([hello]), cookie)))
            self.writer = writer
            while not self.broken:
                queue = self.queue
                while queue and not self.broken:
                    batch = [queue.popleft()]
                    size = len(batch[0])
                    while (queue and size + len(queue[0]) <= BATCH_BYTES
                           and len(batch) < MAX_BATCH_MESSAGES):
                        payload = queue.popleft()
                        batch.append(payload)
                        size += len(payload)
                    self.queued_bytes -= size
                    write_batch(owner, writer, batch, cookie)
                    if writer.transport.get_write_buffer_size() > BATCH_BYTES:
                        await writer.drain()
                await writer.drain()
                if not queue and not self.broken:
                    self.wakeup.clear()
                    await self.wakeup.wait()
        except (OSError, ConnectionError):
            pass
        finally:
            self.writer = None
            owner.connection_lost(self.addr)
            watcher.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _watch_eof(self, reader: asyncio.StreamReader) -> None:
        """The peer never writes on our outbound connection: any read end means it is gone."""
        with contextlib.suppress(OSError, ConnectionError):
            while await reader.read(READ_CHUNK):
                pass
        self.broken = True
        self.wakeup.set()
