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
messages (range 1-9) live in this file.

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

import dataclasses
import enum
import importlib
import math
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from agent.errors import ProtocolError

# Stream framing (``4-byte length | body``) lives in agent.framing; re-exported.
from agent.framing import FRAME_HEADER_SIZE as FRAME_HEADER_SIZE
from agent.framing import MAX_FRAME_SIZE as MAX_FRAME_SIZE
from agent.framing import FrameDecoder as FrameDecoder
from agent.framing import frame as frame

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
MAX_DEPTH = 16
"""Deepest allowed schema nesting (dataclass, tuple, dict, optional levels)."""

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


# --------------------------------------------------------------------------- schema compilation

_Conv = Callable[[Any], Any]


class _Bad(Exception):
    """Internal: a value failed validation; turned into ProtocolError at the edge."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", repr(tp))


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _no_decoder(seq: Any) -> Any:
    raise AssertionError("decoder not generated yet")


@dataclass(slots=True)
class _Compiled:
    """Encoder/decoder for one dataclass; built once, cached per class."""

    cls: type
    names: tuple[str, ...]
    required: int
    exact: tuple[type | None, ...]
    convs: tuple[_Conv, ...]
    getter: Callable[[Any], tuple[Any, ...]]
    enc_convs: tuple[_Conv | None, ...]
    needs_enc: bool
    decode_top: _Conv = _no_decoder
    """Fields after the [version, type] header -> instance (generated)."""
    decode_nested: _Conv = _no_decoder
    """An inline array of fields -> instance (generated)."""
    shared: int = -1
    """Index of a ``tuple[<dataclass>, ...]`` field whose packed form is memoized
    (see :func:`_encode_shared`), or -1."""
    shared_enc: _Conv | None = None
    memo: tuple[tuple[Any, ...], bytes] = ((), b"\x90")
    """(items, their packed array): the last value of the shared field encoded;
    one tuple so a reader never pairs one value's items with another's bytes."""

    def to_list(self, obj: Any) -> list[Any]:
        values = list(self.getter(obj)) if len(self.names) != 1 else [self.getter(obj)]
        if self.needs_enc:
            for i, conv in enumerate(self.enc_convs):
                if conv is not None:
                    values[i] = conv(values[i])
        return values

    def from_seq(self, seq: Any, start: int) -> Any:
        """Generic path, for arrays that are not exactly the known length
        (older or newer peers); the generated decoders handle the rest."""
        n = len(seq) - start
        if n < self.required:
            raise _Bad(f"{self.cls.__name__}: {n} fields, need at least {self.required}")
        args = []
        i = start
        for exact, conv in zip(self.exact, self.convs, strict=False):
            if i >= len(seq):
                break
            v = seq[i]
            i += 1
            if exact is not None and type(v) is exact:
                args.append(v)
            else:
                args.append(conv(v))
        try:
            return self.cls(*args)
        except Exception as exc:  # __post_init__ validation of peer data
            raise _Bad(f"{self.cls.__name__}: {exc}") from exc


_compiled: dict[type, _Compiled] = {}


def _generate_decoder(comp: _Compiled, offset: int) -> _Conv:
    """Straight-line decoder for arrays of exactly ``offset`` + field count items.

    Generated once per class (as attrs and dataclasses do) because a loop over
    per-field converters costs several times more per message, and Raft pushes
    tens of thousands of messages a second.  Only names from this module and
    the class's own converters are put in the generated code's namespace.
    """
    n = len(comp.names)
    ns: dict[str, Any] = {"cls": comp.cls, "_Bad": _Bad, "slow": comp.from_seq}
    lines = ["def decode(seq):", f"    if len(seq) != {n + offset}:",
             f"        return slow(seq, {offset})"]
    if n:
        targets = ["_"] * offset + [f"v{i}" for i in range(n)]
        lines.append(f"    {', '.join(targets)}, = seq")
    for i, (exact, conv) in enumerate(zip(comp.exact, comp.convs, strict=True)):
        ns[f"C{i}"] = conv
        if exact is not None:
            ns[f"E{i}"] = exact
            lines.append(f"    if type(v{i}) is not E{i}: v{i} = C{i}(v{i})")
        else:
            lines.append(f"    v{i} = C{i}(v{i})")
    args = ", ".join(f"v{i}" for i in range(n))
    lines += ["    try:", f"        return cls({args})", "    except Exception as exc:",
              "        raise _Bad(f'{cls.__name__}: {exc}') from exc"]
    exec("\n".join(lines), ns)  # the source above is built from field counts only
    decoder: _Conv = ns["decode"]
    return decoder


def _conv_float(v: Any) -> float:
    if type(v) is int:
        return float(v)
    if type(v) is float:
        if math.isnan(v):
            raise _Bad("NaN")
        return v
    raise _Bad(f"expected float, got {type(v).__name__}")


def _exact_conv(tp: type) -> _Conv:
    def conv(v: Any) -> Any:
        if type(v) is tp:
            return v
        raise _Bad(f"expected {tp.__name__}, got {type(v).__name__}")

    return conv


def _compile_type(tp: Any, depth: int) -> tuple[type | None, _Conv, _Conv | None]:
    """Return (exact fast-path type or None, decode converter, encode converter or None).

    The fast path ``type(v) is exact`` accepts the value untouched; otherwise the
    decode converter validates/converts it or raises ``_Bad``.
    """
    assert depth <= MAX_DEPTH, f"schema nested deeper than MAX_DEPTH={MAX_DEPTH}"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is bool or tp is int or tp is str or tp is bytes:
        return tp, _exact_conv(tp), None
    if tp is float:
        return None, _conv_float, None
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return None, _enum_conv(tp), None
    if _is_dataclass_type(tp):
        return _compile_nested(tp, depth)
    if origin is typing.Union or origin is types.UnionType:
        return _compile_optional(tp, args, depth)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _compile_var_tuple(args[0], depth)
        return _compile_fixed_tuple(args, depth)
    if origin is dict:
        return _compile_dict(args, depth)
    raise AssertionError(f"unsupported wire field type: {tp!r}")


def _enum_conv(enum_cls: type[enum.IntEnum]) -> _Conv:
    # A dict lookup, not ``enum_cls(v)``: the enum call costs a few times
    # more, and followers decode one per log entry.
    members = {int(m): m for m in enum_cls}

    def conv_enum(v: Any) -> Any:
        if type(v) is not int:
            raise _Bad(f"expected {enum_cls.__name__}, got {type(v).__name__}")
        member = members.get(v)
        if member is None:
            raise _Bad(f"{v} is not a {enum_cls.__name__}")
        return member

    return conv_enum


def _compile_nested(tp: type, depth: int) -> tuple[None, _Conv, _Conv | None]:
    """A dataclass inside a message: an inline array of its fields."""
    comp = _compile_class(tp, depth + 1)

    def conv_dc(v: Any) -> Any:
        if type(v) is not tuple:
            raise _Bad(f"expected {comp.cls.__name__} array, got {type(v).__name__}")
        return comp.decode_nested(v)

    return None, conv_dc, comp.to_list


def _compile_optional(
    tp: Any, args: tuple[Any, ...], depth: int
) -> tuple[type | None, _Conv, _Conv | None]:
    """``X | None``: nil or X (the only unions the codec carries)."""
    non_none = [a for a in args if a is not type(None)]
    assert len(non_none) == 1 and len(args) == 2, f"only X | None unions are supported: {tp}"
    exact, inner, enc = _compile_type(non_none[0], depth + 1)

    def conv_opt(v: Any) -> Any:
        if v is None:
            return None
        if exact is not None and type(v) is exact:
            return v
        return inner(v)

    enc_opt = None if enc is None else (lambda v: None if v is None else enc(v))
    return exact, conv_opt, enc_opt


def _compile_var_tuple(item_tp: Any, depth: int) -> tuple[None, _Conv, _Conv | None]:
    exact, inner, enc = _compile_type(item_tp, depth + 1)

    def conv_tuple(v: Any) -> Any:
        if type(v) is not tuple:
            raise _Bad(f"expected array, got {type(v).__name__}")
        if exact is not None:
            for item in v:
                if type(item) is not exact:
                    break
            else:
                return v
        return tuple([inner(item) for item in v])

    enc_tuple = None if enc is None else (lambda v: [enc(item) for item in v])
    return None, conv_tuple, enc_tuple


def _compile_fixed_tuple(arg_tps: tuple[Any, ...], depth: int) -> tuple[None, _Conv, _Conv | None]:
    parts = [_compile_type(a, depth + 1) for a in arg_tps]
    convs = [p[1] for p in parts]
    encs = [p[2] for p in parts]
    size = len(parts)

    def conv_fixed(v: Any) -> Any:
        if type(v) is not tuple or len(v) != size:
            raise _Bad(f"expected array of {size}")
        return tuple([c(item) for c, item in zip(convs, v, strict=True)])  # type: ignore[misc]

    enc_fixed = None
    if any(e is not None for e in encs):

        def enc_fixed(v: Any) -> Any:
            return [item if e is None else e(item) for e, item in zip(encs, v, strict=True)]

    return None, conv_fixed, enc_fixed


def _compile_dict(args: tuple[Any, ...], depth: int) -> tuple[None, _Conv, _Conv | None]:
    key_tp, val_tp = args
    assert key_tp in (str, int), f"dict keys must be str or int, not {key_tp!r}"
    v_exact, v_conv, v_enc = _compile_type(val_tp, depth + 1)

    def conv_dict(v: Any) -> Any:
        if type(v) is not dict:
            raise _Bad(f"expected map, got {type(v).__name__}")
        out = {}
        for k, item in v.items():
            if type(k) is not key_tp:
                raise _Bad(f"map key: expected {key_tp.__name__}, got {type(k).__name__}")
            out[k] = item if v_exact is not None and type(item) is v_exact else v_conv(item)
        return out

    enc_dict = None if v_enc is None else (lambda v: {k: v_enc(item) for k, item in v.items()})
    return None, conv_dict, enc_dict


def _required_fields(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> int:
    """How many leading fields have no default (none may follow a defaulted one)."""
    required = 0
    for i, f in enumerate(fields):
        has_default = (f.default is not dataclasses.MISSING
                       or f.default_factory is not dataclasses.MISSING)
        if not has_default:
            assert required == i, f"{cls.__name__}: field {f.name} without default after defaults"
            required = i + 1
    return required


def _shared_field(names: tuple[str, ...], hints: dict[str, Any]) -> int:
    """The first ``tuple[<dataclass>, ...]`` field whose packed form is worth
    memoizing (see :func:`_encode_shared`), or -1."""
    for i, name in enumerate(names):
        tp = hints[name]
        targs = typing.get_args(tp)
        if (typing.get_origin(tp) is tuple and len(targs) == 2 and targs[1] is Ellipsis
                and _is_dataclass_type(targs[0]) and len(names) + 2 <= _FIXARRAY_MAX):
            return i
    return -1


def _compile_class(cls: type, depth: int = 0) -> _Compiled:
    cached = _compiled.get(cls)
    if cached is not None:
        return cached
    assert _is_dataclass_type(cls), f"{cls!r} is not a dataclass"
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen, f"{cls.__name__} must be a frozen dataclass"
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    assert all(f.init for f in fields), f"{cls.__name__}: init=False fields cannot travel"
    names = tuple(f.name for f in fields)
    compiled = [_compile_type(hints[n], depth) for n in names]
    enc_convs = tuple(c[2] for c in compiled)
    getter: Callable[[Any], Any]
    getter = operator.attrgetter(*names) if names else (lambda obj: ())
    comp = _Compiled(
        cls=cls,
        names=names,
        required=_required_fields(cls, fields),
        exact=tuple(c[0] for c in compiled),
        convs=tuple(c[1] for c in compiled),
        getter=getter,
        enc_convs=enc_convs,
        needs_enc=any(e is not None for e in enc_convs),
    )
    shared = _shared_field(names, hints)
    if shared >= 0:
        comp.shared, comp.shared_enc = shared, enc_convs[shared]
    comp.decode_top = _generate_decoder(comp, 2)
    comp.decode_nested = _generate_decoder(comp, 0)
    _compiled[cls] = comp
    return comp


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


_FIXARRAY_MAX = 15
"""Longest msgpack array whose header is the single byte ``0x90 | length``."""


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
