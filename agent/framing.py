"""Length-prefixed stream framing: ``4-byte big-endian length | body``.

The one definition of the framing, for the peer transport (bodies are sealed
packets) and the control socket (msgpack maps, ``agent/control/codec.py``):
``frame()`` writes a frame and ``body_length()`` reads and bounds-checks a
header.  ``FrameDecoder`` is the transport's sans-IO splitter: feed it bytes as
they arrive, get whole frames back.  The control codec pulls one frame at a
time from its own buffer (it decodes large bodies in place) with the same
``body_length``.  A header announcing more than the limit fails at once,
before any of the body is buffered.
"""

from __future__ import annotations

import struct

from agent.errors import ProtocolError

MAX_FRAME_SIZE = 16 * 1024 * 1024
"""Largest TCP frame body in bytes (a sealed packet).  Raft snapshots travel in
chunks below this (see :data:`MAX_STREAM_PAYLOAD` in the transport)."""

_LEN = struct.Struct(">I")
FRAME_HEADER_SIZE = _LEN.size


def frame(payload: bytes, max_frame: int = MAX_FRAME_SIZE) -> bytes:
    """Prefix ``payload`` with its 4-byte big-endian length; ``ProtocolError`` if it
    is longer than ``max_frame``."""
    if len(payload) > max_frame:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {max_frame}")
    return _LEN.pack(len(payload)) + payload


def body_length(
    buf: bytes | bytearray | memoryview, pos: int, max_frame: int, min_frame: int = 0
) -> int:
    """The body length announced by the header at ``buf[pos:]``, or -1 if the
    header is not all there yet; ``ProtocolError`` if it is outside
    ``min_frame..max_frame``."""
    if len(buf) - pos < FRAME_HEADER_SIZE:
        return -1
    (length,) = _LEN.unpack_from(buf, pos)
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds {max_frame}")
    if length < min_frame:
        raise ProtocolError(f"frame of {length} bytes is shorter than {min_frame}")
    return int(length)


class FrameDecoder:
    """Sans-IO splitter of a length-prefixed byte stream into frames.

    ``feed`` returns the complete frames so far.  A length over ``max_frame``
    raises ``ProtocolError`` as soon as the 4-byte header arrives, before any of
    the body is buffered; the decoder is then unusable (close the connection).
    """

    __slots__ = ("_broken", "_buf", "_max", "_need")

    def __init__(self, max_frame: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._need = -1  # body length of the frame being read, -1 = reading header
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken:
            raise ProtocolError("frame stream already failed")
        if self._need < 0 and not self._buf and len(data) >= FRAME_HEADER_SIZE:
            # Fast path (a quiet connection): one whole frame, nothing pending.
            (length,) = _LEN.unpack_from(data)
            if length <= self._max and len(data) == FRAME_HEADER_SIZE + length:
                return [data[FRAME_HEADER_SIZE:]]
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while True:
            if self._need < 0:
                try:
                    length = body_length(buf, pos, self._max)
                except ProtocolError:
                    self._broken = True
                    self._buf = bytearray()
                    raise
                if length < 0:
                    break
                pos += FRAME_HEADER_SIZE
                self._need = length
            if len(buf) - pos < self._need:
                break
            out.append(bytes(buf[pos : pos + self._need]))
            pos += self._need
            self._need = -1
        if pos:
            del buf[:pos]
        return out
