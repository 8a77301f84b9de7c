"""Inbound peer streams: one ``asyncio.Protocol`` per accepted TCP connection.

Theory of operation
-------------------
A peer connects to our listen port; we write one CHALLENGE frame (8 random
bytes, sealed) and nothing else, ever.  The peer sends sealed frames
(``4-byte length | sealed packet``), each sealed with that challenge as its
cookie and carrying a batch ``(4-byte length | payload)*`` (:func:`join_batch`).
A frame with another cookie was recorded from another connection: it is
refused as a replay, as is one whose sequence does not grow
(``agent.envelope``, "Streams").  The first batch must be a lone
``wire.Hello`` naming the peer's listen address, within ``hello_timeout``
seconds; every later message is delivered as coming from that address.

Everything happens in ``data_received``, in the event loop's own callback:
frames are split, opened (tag, key and replay checks), unbatched and delivered
there and then.  A stream reader task would cost one more trip round the event
loop per message (the loop wakes the reader's future, then the task), which
is most of a round trip's cost on loopback.  Processing inline also bounds
memory: nothing is read from the socket while we are busy with what came.

Hostile input never raises out of here: an oversized frame header, a batch
that does not parse, a first message that is not a Hello, or
``MAX_CONSECUTIVE_FAILURES`` frames in a row that fail to open close the
connection, and each case is counted in the transport's stats.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Protocol, cast

from agent import wire
from agent.crypto import SealError
from agent.envelope import Envelope, StreamGate
from agent.errors import ConfigError, ProtocolError
from agent.runtime.peer_addr import parse_addr
from agent.runtime.transport_stats import TransportStats

MAX_BATCH_MESSAGES = 4096
"""Most messages in one sealed frame; the receiver refuses batches with more."""
MAX_CONSECUTIVE_FAILURES = 8
"""Frames in a row that fail to open before an inbound connection is closed."""

_LEN = struct.Struct(">I")


def join_batch(payloads: list[bytes]) -> bytes:
    """``(4-byte length | payload)*`` for one sealed frame."""
    pack = _LEN.pack
    if len(payloads) == 1:  # the common case at low load: no generator
        return pack(len(payloads[0])) + payloads[0]
    return b"".join([part for p in payloads for part in (pack(len(p)), p)])


def split_batch(data: bytes) -> list[bytes]:
    """Inverse of :func:`join_batch`; ``ProtocolError`` on any inconsistency."""
    out: list[bytes] = []
    pos, end = 0, len(data)
    unpack_from = _LEN.unpack_from
    while pos < end:
        if end - pos < 4 or len(out) >= MAX_BATCH_MESSAGES:
            raise ProtocolError("malformed stream batch")
        (length,) = unpack_from(data, pos)
        pos += 4
        if length > end - pos:
            raise ProtocolError("stream batch item overruns its frame")
        out.append(data[pos : pos + length])
        pos += length
    return out


def accept_hello(payload: bytes) -> str | None:
    """The listen address a Hello names, or None if ``payload`` is not a usable one."""
    try:
        hello = wire.decode(payload)
    except ProtocolError:
        return None
    if not isinstance(hello, wire.Hello):
        return None
    try:
        parse_addr(hello.listen_addr)
    except ConfigError:
        return None
    return hello.listen_addr


class StreamOwner(Protocol):
    """What an inbound stream uses of the transport that accepted it."""

    @property
    def closing(self) -> bool: ...

    @property
    def stats(self) -> TransportStats: ...

    @property
    def envelope(self) -> Envelope: ...

    def admit_inbound(self, stream: InboundStream) -> bool: ...

    def inbound_closed(self, stream: InboundStream) -> None: ...

    def begin_dispatch(self) -> None: ...

    def end_dispatch(self) -> None: ...

    def deliver_stream(self, from_addr: str, payload: bytes) -> None: ...


class InboundStream(asyncio.Protocol):
    """One accepted connection; registered in ``owner.inbound`` while it is open."""

    def __init__(self, owner: StreamOwner, hello_timeout: float) -> None:
        self._owner = owner
        self._hello_timeout = hello_timeout
        self._decoder = wire.FrameDecoder(wire.MAX_FRAME_SIZE)
        self._transport: asyncio.Transport | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self._gate: StreamGate | None = None
        self.peer: str | None = None
        """The sender's listen address, once its Hello is in."""

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self._owner
        # A stream transport; not an isinstance check: uvloop's TCPTransport
        # implements asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        if owner.closing or not owner.admit_inbound(self):
            owner.stats.dropped_too_many_connections += 1
            transport.close()
            return
        self._transport = transport
        owner.stats.connections_in += 1
        self._gate = StreamGate()
        transport.write(wire.frame(owner.envelope.seal_challenge(self._gate)))
        self._hello_timer = asyncio.get_running_loop().call_later(self._hello_timeout, self._no_hello)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        owner = self._owner
        stats = owner.stats
        try:
            frames = self._decoder.feed(data)
        except ProtocolError:
            stats.dropped_bad_frame += 1
            self.close()
            return
        # What the messages of this read make us send is one burst per peer
        # (sealed as one batch), as it would be within one loop iteration.
        owner.begin_dispatch()
        try:
            self._handle_frames(frames)
        finally:
            owner.end_dispatch()

    def _handle_frames(self, frames: list[bytes]) -> None:
        assert self._transport is not None and self._gate is not None
        owner = self._owner
        stats = owner.stats
        open_ = owner.envelope.open_stream
        gate = self._gate
        for packet in frames:
            try:
                payload = open_(packet, gate)
            except SealError:
                self._failures += 1
                if self._failures >= MAX_CONSECUTIVE_FAILURES:
                    stats.closed_bad_peer += 1
                    self.close()
                    return
                continue
            self._failures = 0
            try:
                messages = split_batch(payload)
            except ProtocolError:
                stats.seal.dropped_malformed += 1
                self.close()  # an authenticated peer sending nonsense: hang up
                return
            stats.stream_frames_in += 1
            stats.stream_bytes_in += len(packet) + wire.FRAME_HEADER_SIZE
            peer = self.peer
            if peer is None:
                peer = accept_hello(messages[0]) if len(messages) == 1 else None
                if peer is None:
                    stats.dropped_no_hello += 1
                    self.close()
                    return
                self.peer = peer
                if self._hello_timer is not None:
                    self._hello_timer.cancel()
                continue
            stats.stream_msgs_in += len(messages)
            deliver = owner.deliver_stream
            for message in messages:
                deliver(peer, message)
            if self._transport.is_closing():
                return  # the transport is shutting down under us

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._transport is None:
            return  # refused in connection_made
        self._transport = None
        self._owner.inbound_closed(self)

    # -- helpers ---------------------------------------------------------------

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _no_hello(self) -> None:
        if self.peer is None and self._transport is not None:
            self._owner.stats.dropped_no_hello += 1
            self.close()
