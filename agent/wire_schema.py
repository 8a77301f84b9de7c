"""Schema compilation for :mod:`agent.wire`: one encoder/decoder per wire dataclass.

:func:`compile_class` turns a frozen dataclass into a :class:`Compiled`: per-field
converters that check every value against its declared type with exact type tests
(a ``bool`` is not an ``int``, an ``int`` is accepted for a ``float``, NaN is
rejected), a straight-line decoder generated once per class for arrays of the
known length, and a generic path for older or newer peers (fewer fields take
their defaults, extra trailing ones are ignored).  :mod:`agent.wire` holds the
registry, the message numbers and the msgpack edge; the rules of the encoded
form are written at the top of that module.  A value that fails validation
raises :class:`Bad`, which the wire module turns into ``ProtocolError``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 16
"""Deepest allowed schema nesting (dataclass, tuple, dict, optional levels)."""

FIXARRAY_MAX = 15
"""Longest msgpack array whose header is the single byte ``0x90 | length``."""


Conv = Callable[[Any], Any]


class Bad(Exception):
    """Internal: a value failed validation; turned into ProtocolError at the edge."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", repr(tp))


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _no_decoder(seq: Any) -> Any:
    raise AssertionError("decoder not generated yet")


@dataclass(slots=True)
class Compiled:
    """Encoder/decoder for one dataclass; built once, cached per class."""

    cls: type
    names: tuple[str, ...]
    required: int
    exact: tuple[type | None, ...]
    convs: tuple[Conv, ...]
    getter: Callable[[Any], tuple[Any, ...]]
    enc_convs: tuple[Conv | None, ...]
    needs_enc: bool
    decode_top: Conv = _no_decoder
    """Fields after the [version, type] header -> instance (generated)."""
    decode_nested: Conv = _no_decoder
    """An inline array of fields -> instance (generated)."""
    shared: int = -1
    """Index of a ``tuple[<dataclass>, ...]`` field whose packed form is memoized
    (see :func:`_encode_shared`), or -1."""
    shared_enc: Conv | None = None
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
            raise Bad(f"{self.cls.__name__}: {n} fields, need at least {self.required}")
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
            raise Bad(f"{self.cls.__name__}: {exc}") from exc


_compiled: dict[type, Compiled] = {}


def _generate_decoder(comp: Compiled, offset: int) -> Conv:
    """Straight-line decoder for arrays of exactly ``offset`` + field count items.

    Generated once per class (as attrs and dataclasses do) because a loop over
    per-field converters costs several times more per message, and Raft pushes
    tens of thousands of messages a second.  Only names from this module and
    the class's own converters are put in the generated code's namespace.
    """
    n = len(comp.names)
    ns: dict[str, Any] = {"cls": comp.cls, "_Bad": Bad, "slow": comp.from_seq}
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
              "        raise Bad(f'{cls.__name__}: {exc}') from exc"]
    exec("\n".join(lines), ns)  # the source above is built from field counts only
    decoder: Conv = ns["decode"]
    return decoder


def _conv_float(v: Any) -> float:
    if type(v) is int:
        return float(v)
    if type(v) is float:
        if math.isnan(v):
            raise Bad("NaN")
        return v
    raise Bad(f"expected float, got {type(v).__name__}")


def _exact_conv(tp: type) -> Conv:
    def conv(v: Any) -> Any:
        if type(v) is tp:
            return v
        raise Bad(f"expected {tp.__name__}, got {type(v).__name__}")

    return conv


def _compile_type(tp: Any, depth: int) -> tuple[type | None, Conv, Conv | None]:
    """Return (exact fast-path type or None, decode converter, encode converter or None).

    The fast path ``type(v) is exact`` accepts the value untouched; otherwise the
    decode converter validates/converts it or raises ``Bad``.
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


def _enum_conv(enum_cls: type[enum.IntEnum]) -> Conv:
    # A dict lookup, not ``enum_cls(v)``: the enum call costs a few times
    # more, and followers decode one per log entry.
    members = {int(m): m for m in enum_cls}

    def conv_enum(v: Any) -> Any:
        if type(v) is not int:
            raise Bad(f"expected {enum_cls.__name__}, got {type(v).__name__}")
        member = members.get(v)
        if member is None:
            raise Bad(f"{v} is not a {enum_cls.__name__}")
        return member

    return conv_enum


def _compile_nested(tp: type, depth: int) -> tuple[None, Conv, Conv | None]:
    """A dataclass inside a message: an inline array of its fields."""
    comp = compile_class(tp, depth + 1)

    def conv_dc(v: Any) -> Any:
        if type(v) is not tuple:
            raise Bad(f"expected {comp.cls.__name__} array, got {type(v).__name__}")
        return comp.decode_nested(v)

    return None, conv_dc, comp.to_list


def _compile_optional(
    tp: Any, args: tuple[Any, ...], depth: int
) -> tuple[type | None, Conv, Conv | None]:
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


def _compile_var_tuple(item_tp: Any, depth: int) -> tuple[None, Conv, Conv | None]:
    exact, inner, enc = _compile_type(item_tp, depth + 1)

    def conv_tuple(v: Any) -> Any:
        if type(v) is not tuple:
            raise Bad(f"expected array, got {type(v).__name__}")
        if exact is not None:
            for item in v:
                if type(item) is not exact:
                    break
            else:
                return v
        return tuple([inner(item) for item in v])

    enc_tuple = None if enc is None else (lambda v: [enc(item) for item in v])
    return None, conv_tuple, enc_tuple


def _compile_fixed_tuple(arg_tps: tuple[Any, ...], depth: int) -> tuple[None, Conv, Conv | None]:
    parts = [_compile_type(a, depth + 1) for a in arg_tps]
    convs = [p[1] for p in parts]
    encs = [p[2] for p in parts]
    size = len(parts)

    def conv_fixed(v: Any) -> Any:
        if type(v) is not tuple or len(v) != size:
            raise Bad(f"expected array of {size}")
        return tuple([c(item) for c, item in zip(convs, v, strict=True)])  # type: ignore[misc]

    enc_fixed = None
    if any(e is not None for e in encs):

        def enc_fixed(v: Any) -> Any:
            return [item if e is None else e(item) for e, item in zip(encs, v, strict=True)]

    return None, conv_fixed, enc_fixed


def _compile_dict(args: tuple[Any, ...], depth: int) -> tuple[None, Conv, Conv | None]:
    key_tp, val_tp = args
    assert key_tp in (str, int), f"dict keys must be str or int, not {key_tp!r}"
    v_exact, v_conv, v_enc = _compile_type(val_tp, depth + 1)

    def conv_dict(v: Any) -> Any:
        if type(v) is not dict:
            raise Bad(f"expected map, got {type(v).__name__}")
        out = {}
        for k, item in v.items():
            if type(k) is not key_tp:
                raise Bad(f"map key: expected {key_tp.__name__}, got {type(k).__name__}")
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
                and _is_dataclass_type(targs[0]) and len(names) + 2 <= FIXARRAY_MAX):
            return i
    return -1


def compile_class(cls: type, depth: int = 0) -> Compiled:
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
    comp = Compiled(
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
