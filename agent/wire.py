"""The one wire module: message numbers, a generic dataclass codec, limits, framing.

Theory of operation
-------------------
Every peer message is a frozen dataclass owned by the core that speaks it
(``agent/swim/messages.py``, ``agent/raft/messages.py``,
``agent/sched/messages.py``, and the runtime's ``agent/runtime/messages.py``).
The cores never import this module: each of their ``messages`` modules
exposes ``WIRE_TYPES: dict[int, type]`` and
:func:`registry_loaded` imports and registers them here, checking that every
number sits in its owner's range (:data:`MSG_RANGES`).  The transport's own
messages (range 1-9) live in this file; the per-class schema compilation (type
checks, generated decoders) lives in :mod:`agent.wire_schema`.

Encoded form, one msgpack array::

    [protocol_version, msg_type, field0, field1, ...]

Fields are positional in dataclass order.  A nested dataclass is an inline
array of its fields (no header), ``tuple[X, ...]`` an array (as is a
fixed-length ``tuple[X, Y]``), ``dict`` a map, an ``IntEnum`` its integer
value (a value the enum does not know is rejected), ``X | None`` nil or X.

Compatibility rule (fields are only ever appended, always with defaults):

* a message with *more* fields than we know came from a newer peer: the
  extra trailing fields are ignored;
* a message with *fewer* fields came from an older peer: the missing trailing
  fields take their dataclass defaults; if a missing field has no default the
  message is rejected.

Decoding trusts nothing.  msgpack runs with explicit length limits (each
also capped by the input length, since every item takes at least one byte),
so a header claiming 2**32 items is rejected before anything is allocated;
the C unpacker's fixed stack bounds nesting, and validation only descends as
deep as the declared schema (:data:`MAX_DEPTH`).  Every value is checked
against its declared type with exact type tests (a ``bool`` is not an
``int``, an ``int`` is accepted for a ``float``).  NaN floats are rejected
(they break ordering and equality); infinities pass.  The only exception
that leaves :func:`decode` or :class:`FrameDecoder` is ``ProtocolError``.

Encoding is for our own, well-typed messages and does not re-validate them:
a value msgpack cannot pack is a local bug and raises ``AssertionError``.
"""

from __future__ import annotations

import enum
import importlib
import operator
from dataclasses import dataclass
from typing import Any

import msgpack

from agent.errors import ProtocolError

# Stream framing (``4-byte length | body``) lives in agent.framing; re-exported.
from agent.framing import FRAME_HEADER_SIZE as FRAME_HEADER_SIZE
from agent.framing import MAX_FRAME_SIZE as MAX_FRAME_SIZE
from agent.framing import FrameDecoder as FrameDecoder
from agent.framing import frame as frame
from agent.wire_schema import MAX_DEPTH as MAX_DEPTH
from agent.wire_schema import Bad as _Bad
from agent.wire_schema import Compiled as _Compiled
from agent.wire_schema import compile_class as _compile_class

# --------------------------------------------------------------------------- versions and limits

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1
MAX_PROTOCOL_VERSION = 1


MAX_DATAGRAM_SIZE = 1400
"""Largest SWIM UDP payload in bytes *before* sealing.  Sealing adds
``agent.envelope.DATAGRAM_OVERHEAD`` (66) bytes, giving at most 1466 bytes on the
wire: under the 1472-byte UDP payload of a 1500-byte Ethernet MTU, so SWIM
packets are never fragmented."""

MAX_STR_LEN = 1024 * 1024
"""Longest msgpack str in bytes."""
MAX_BIN_LEN = MAX_FRAME_SIZE
"""Longest msgpack bin in bytes."""
MAX_ARRAY_LEN = 1_000_000
"""Most items in one msgpack array."""
MAX_MAP_LEN = 100_000
"""Most entries in one msgpack map."""

_MSGPACK_EXCEPTIONS = (ValueError, TypeError, UnicodeDecodeError, OverflowError, RecursionError)


class MsgType(enum.IntEnum):
    """Transport-level message numbers (range 1-9).  Append-only: a number once
    used is never reused or renumbered.  Core message numbers live in each core's
    ``WIRE_TYPES`` within the ranges of :data:`MSG_RANGES`."""

    HELLO = 1


MSG_RANGES: dict[str, tuple[int, int]] = {
    "agent.wire": (1, 9),
    "agent.swim.messages": (10, 39),
    "agent.raft.messages": (40, 69),
    "agent.sched.messages": (70, 89),
    "agent.pbft.messages": (90, 109),
    "agent.runtime.messages": (110, 129),
    "agent.runtime.event_messages": (130, 139),
    "agent.runtime.replica_messages": (140, 149),
}
"""Owner module -> inclusive range of message numbers it may register."""

_CORE_MODULES = (
    "agent.swim.messages",
    "agent.raft.messages",
    "agent.sched.messages",
    "agent.pbft.messages",
    "agent.runtime.messages",
    "agent.runtime.event_messages",
    "agent.runtime.replica_messages",
)
"""The modules :func:`registry_loaded` imports: every core that has messages.  A
core is listed here once its ``messages`` module exists (with its range above)."""


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on every outbound TCP connection: who is talking and where
    to answer.  ``listen_addr`` ("host:port") is what the receiver passes to its
    stream callback as ``from_addr``."""

    node_id: str
    listen_addr: str


# --------------------------------------------------------------------------- registry

_by_number: dict[int, _Compiled] = {}
_by_class: dict[type, int] = {}
_loaded_modules: set[str] = set()
_scanned = False  # registry_loaded() has run once: decode() stops calling it


def register(msg_type: int, cls: type) -> None:
    """Map ``msg_type`` to ``cls``.  A duplicate number or class is a bug
    (``AssertionError``), as is a class whose field types the codec cannot carry."""
    assert type(msg_type) is int or isinstance(msg_type, enum.IntEnum), msg_type
    msg_type = int(msg_type)
    assert 1 <= msg_type <= 0xFFFF, f"message number {msg_type} out of range"
    assert msg_type not in _by_number, (
        f"message number {msg_type} already used by {_by_number[msg_type].cls.__name__}")
    assert cls not in _by_class, f"{cls.__name__} already registered as {_by_class[cls]}"
    comp = _compile_class(cls)
    _by_number[msg_type] = comp
    _by_class[cls] = msg_type


def registered() -> dict[int, type]:
    """A copy of the registry: number -> class (after :func:`registry_loaded`)."""
    return {n: c.cls for n, c in sorted(_by_number.items())}


def registry_loaded() -> dict[int, type]:
    """Import every core's ``messages`` module (:data:`_CORE_MODULES`) and register
    its ``WIRE_TYPES``; idempotent and cheap once everything is loaded.  A module
    that is missing or fails to import, or registers numbers outside its range,
    raises: the list names only cores that exist."""
    global _scanned
    for name in _CORE_MODULES:
        if name in _loaded_modules:
            continue
        module = importlib.import_module(name)
        wire_types = getattr(module, "WIRE_TYPES", None)
        assert isinstance(wire_types, dict), f"{name} must define WIRE_TYPES: dict[int, type]"
        lo, hi = MSG_RANGES[name]
        for number, cls in wire_types.items():
            assert lo <= int(number) <= hi, f"{name}: number {number} outside {lo}-{hi}"
            register(int(number), cls)
        _loaded_modules.add(name)
    _scanned = True
    return registered()


def msg_type_of(msg: object) -> int:
    """The registered number of ``msg``'s class (``AssertionError`` if unknown)."""
    number = _by_class.get(type(msg))
    if number is None:
        registry_loaded()
        number = _by_class.get(type(msg))
    assert number is not None, f"{type(msg).__name__} is not a registered wire message"
    return number


# --------------------------------------------------------------------------- codec




def _encode_shared(comp: _Compiled, number: int, msg: object) -> bytes:
    """Encode ``msg`` reusing the packed form of its ``comp.shared`` field when
    that field holds the very same objects as last time.

    A Raft leader sends each follower its own ``AppendEntries`` whose entries
    are, in the steady state, the same ``Entry`` objects (one log slice per
    follower): packing them once per Ready instead of once per follower saves
    most of the encoding.  ``Entry`` and the other wire dataclasses are frozen,
    so identical objects pack identically.  The result is byte for byte what
    ``packb`` of the whole list gives: msgpack packs array items independently,
    so the packed field is spliced between the packed fields around it, and the
    outer header (a one-byte fixarray, as the message has at most 13 fields) is
    rewritten for the full length."""
    k = comp.shared
    values = list(comp.getter(msg))
    items = values[k]
    memo_items, packed = comp.memo
    if items is not memo_items and (
        len(items) != len(memo_items) or not all(map(operator.is_, items, memo_items))
    ):
        enc = comp.shared_enc
        packed = msgpack.packb(items if enc is None else enc(items), use_bin_type=True)
        comp.memo = (items, packed)
    if comp.needs_enc:
        for i, conv in enumerate(comp.enc_convs):
            if conv is not None and i != k:
                values[i] = conv(values[i])
    head = msgpack.packb([PROTOCOL_VERSION, number, *values[:k]], use_bin_type=True)
    tail = msgpack.packb(values[k + 1:], use_bin_type=True)
    return b"".join((bytes((0x90 | (len(values) + 2),)), head[1:], packed, tail[1:]))


def encode(msg: object) -> bytes:
    """``msg`` (a registered dataclass) -> msgpack bytes."""
    number = _by_class.get(type(msg))
    if number is None:
        number = msg_type_of(msg)
    comp = _by_number[number]
    if comp.shared >= 0:
        try:
            return _encode_shared(comp, number, msg)
        except (TypeError, ValueError, OverflowError) as exc:
            raise AssertionError(f"cannot encode {type(msg).__name__}: {exc}") from exc
    values = comp.to_list(msg)
    try:
        return msgpack.packb([PROTOCOL_VERSION, number, *values], use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise AssertionError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def _unpack(data: bytes) -> Any:
    # Every item takes at least one byte (a map entry two), so the input
    # length bounds each count too: small messages get tight limits.
    n = len(data)
    try:
        if n <= MAX_MAP_LEN:
            return msgpack.unpackb(data, use_list=False, raw=False, strict_map_key=False,
                                   max_str_len=n, max_bin_len=n, max_array_len=n,
                                   max_map_len=n // 2, max_ext_len=0)
        return msgpack.unpackb(
            data,
            use_list=False,
            raw=False,
            strict_map_key=False,
            max_str_len=min(MAX_STR_LEN, n),
            max_bin_len=min(MAX_BIN_LEN, n),
            max_array_len=min(MAX_ARRAY_LEN, n),
            max_map_len=min(MAX_MAP_LEN, n // 2),
            max_ext_len=0,
        )
    except _MSGPACK_EXCEPTIONS as exc:
        raise ProtocolError(f"malformed msgpack: {exc or type(exc).__name__}") from None
    except Exception as exc:  # msgpack's own ExtraData/FormatError/StackError
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__} {exc}") from None


def decode(data: bytes) -> object:
    """msgpack bytes -> message; raises only ``ProtocolError``."""
    obj = _unpack(data)
    if type(obj) is not tuple or len(obj) < 2:
        raise ProtocolError("message is not an array [version, type, ...]")
    version, number = obj[0], obj[1]
    if type(version) is not int or type(number) is not int:
        raise ProtocolError("message header must be two integers")
    if not MIN_PROTOCOL_VERSION <= version <= MAX_PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    comp = _by_number.get(number)
    if comp is None:
        # Hostile peers can send unknown numbers at will: look for the core
        # modules once, never an import attempt per packet.
        if not _scanned:
            registry_loaded()
            comp = _by_number.get(number)
        if comp is None:
            raise ProtocolError(f"unknown message type {number}")
    try:
        return comp.decode_top(obj)
    except _Bad as exc:
        raise ProtocolError(f"invalid message {number}: {exc}") from None
    except RecursionError:
        raise ProtocolError(f"invalid message {number}: nested too deep") from None


register(MsgType.HELLO, Hello)
