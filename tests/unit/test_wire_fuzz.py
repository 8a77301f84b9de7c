"""Hostile bytes into the decoder and the frame splitter: only ProtocolError,
bounded memory."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from collections.abc import Callable

import msgpack
import pytest
import support.wire_strategies  # noqa: F401  (registers the test-only types)
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import wire
from agent.errors import ProtocolError

wire.registry_loaded()
PEAK_LIMIT = 4 * 1024 * 1024


def peak_allocation(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def decode_quietly(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        wire.decode(data)


HEADER = b"\x93\x01\xcd\xea\x62"  # [1, 60002, <next item>] (Containers)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("array32 of 2**32-1", b"\xdd\xff\xff\xff\xff"),
        ("map32 of 2**32-1", b"\xdf\xff\xff\xff\xff"),
        ("str32 of 4 GB", b"\xdb\xff\xff\xff\xff"),
        ("bin32 of 4 GB", b"\xc6\xff\xff\xff\xff"),
        ("ext32 of 4 GB", b"\xc9\xff\xff\xff\xff\x01"),
        ("array32 inside a message", HEADER + b"\xdd\xff\xff\xff\xff"),
        ("map32 inside a message", HEADER + b"\xdf\xff\xff\xff\xff"),
        ("bin32 inside a message", b"\x94\x01\xcd\xea\x61\x01\xc6\xff\xff\xff\xff"),
        ("array16 claiming more than the input", b"\xdc\xff\xff" + b"\x00" * 100),
        ("nesting 10,000 deep", b"\x91" * 10_000 + b"\x00"),
        ("map nesting 10,000 deep", b"\x81\x00" * 10_000 + b"\x00"),
        ("nesting inside a message", HEADER + b"\x91" * 10_000 + b"\x00"),
        ("unknown type", msgpack.packb([1, 65000])),
        ("wrong version", msgpack.packb([99, 1, "a", "b"])),
        ("reserved byte 0xc1", b"\xc1"),
        ("truncated float", b"\x93\x01\x01\xcb\x00"),
    ],
)
def test_hostile_headers_raise_protocol_error_without_allocating(name: str, data: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.decode(data)
    assert peak_allocation(lambda: decode_quietly(data)) < PEAK_LIMIT, name


def test_a_million_item_array_within_limits_stays_bounded() -> None:
    # As many items as MAX_ARRAY_LEN allows, in a type slot that wants a tuple
    # of int: it is decoded (1 MB of input) but memory stays proportional.
    items = b"\xdd" + struct.pack(">I", 200_000) + b"\x01" * 200_000
    data = b"\x94\x01\xcd\xea\x64\x01" + items  # WithDefaults(a=1, b=<array>) -> wrong type
    assert peak_allocation(lambda: decode_quietly(data)) < PEAK_LIMIT


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=256))
def test_fuzzed_bytes_only_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        wire.decode(data)


@settings(max_examples=200, deadline=None)
@given(
    number=st.sampled_from(sorted(wire.registered())),
    fields=st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
            | st.text(max_size=8) | st.binary(max_size=8),
            lambda inner: st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=4) | st.integers(-1000, 1000), inner, max_size=4),
            max_leaves=12,
        ),
        max_size=12,
    ),
)
def test_well_formed_msgpack_with_wrong_shapes_only_raises_protocol_error(
    number: int, fields: list[object]
) -> None:
    data = msgpack.packb([wire.PROTOCOL_VERSION, number, *fields], use_bin_type=True)
    try:
        msg = wire.decode(data)
    except ProtocolError:
        return
    # If it decoded it must be the registered class and survive a round trip.
    assert type(msg) is wire.registered()[number]
    assert wire.decode(wire.encode(msg)) == msg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.lists(st.integers(1, 64), max_size=16))
def test_fuzzed_frame_stream_only_raises_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = wire.FrameDecoder(max_frame=1024)
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            for body in decoder.feed(data[pos : pos + cut]):
                assert len(body) <= 1024
            pos += cut
    except ProtocolError:
        pass
    assert decoder.buffered <= 1024 + wire.FRAME_HEADER_SIZE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.lists(st.integers(1, 97), max_size=30))
def test_frames_survive_any_split(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(wire.frame(b) for b in bodies)
    decoder = wire.FrameDecoder()
    out: list[bytes] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[pos : pos + cut])
        pos += cut
    assert out == bodies
    assert decoder.buffered == 0


def test_oversized_frame_is_refused_before_buffering() -> None:
    decoder = wire.FrameDecoder()
    header = struct.pack(">I", wire.MAX_FRAME_SIZE + 1)
    assert decoder.feed(header[:2]) == []
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(header[2:] + b"x" * 1000)
    assert decoder.buffered == 0
    with pytest.raises(ProtocolError):
        decoder.feed(b"more")


def test_max_size_frame_header_of_4gb_allocates_nothing() -> None:
    def run() -> None:
        with pytest.raises(ProtocolError):
            wire.FrameDecoder().feed(b"\xff\xff\xff\xff" + b"\x00" * 64)

    assert peak_allocation(run) < 64 * 1024


def test_truncated_frame_waits_for_the_rest() -> None:
    decoder = wire.FrameDecoder()
    framed = wire.frame(b"hello world")
    assert decoder.feed(framed[:7]) == []
    assert decoder.buffered == 7 - wire.FRAME_HEADER_SIZE  # header already parsed
    assert decoder.feed(framed[7:] + wire.frame(b"")) == [b"hello world", b""]


def test_frame_refuses_oversized_payload_locally() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.frame(b"\x00" * (wire.MAX_FRAME_SIZE + 1))
