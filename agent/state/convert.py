"""Precompiled field converters for the command dataclasses.

Theory of operation: every committed entry is decoded on every replica, and on
the leader every proposed command is validated before it is appended, so this
runs once per write per node.  Resolving type hints and walking
``dataclasses.fields`` per entry (what a generic reflective decoder does) cost
more than the write itself; here each dataclass is compiled once into a
``DataclassConverter``: a tuple of ``(name, converter, required)`` per field,
where a converter is a closure specialised to its hint.

A converter takes a value and returns it converted (msgpack lists become
tuples, maps of a nested dataclass become instances, ints become floats where a
float is declared) or raises ``ProtocolError`` naming the field.  The same
converters validate the Python side before encoding: they also accept what a
caller hands a constructor (a tuple, a nested instance), which msgpack never
produces, so decoding stays exactly as strict.

Allowed hints: ``int``, ``float`` (finite), ``str``, ``bool``, ``bytes``,
``X | None``, ``tuple[X, ...]`` (``tuple[Any, ...]``: any items), ``dict[K, V]``
and nested frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar

from agent.errors import ProtocolError

Converter = Callable[[Any], Any]
"""Convert-or-raise for one field value."""


def bad_field(name: str, reason: str) -> ProtocolError:
    return ProtocolError(f"bad command field {name}: {reason}")


def _scalar(name: str, hint: type[Any]) -> Converter:
    expected = hint.__name__

    def scalar(value: Any) -> Any:
        # Exact type: bool is an int subclass and must never pass as one.
        if type(value) is hint:
            return value
        raise bad_field(name, f"expected {expected}, got {type(value).__name__}")

    return scalar


def _float(name: str) -> Converter:
    isfinite = math.isfinite

    def to_float(value: Any) -> float:
        kind = type(value)
        if kind is int:
            value = float(value)
        elif kind is not float:
            raise bad_field(name, f"expected float, got {kind.__name__}")
        if not isfinite(value):
            raise bad_field(name, "must be finite")
        return typing.cast(float, value)

    return to_float


def _optional(inner: Converter) -> Converter:
    def optional(value: Any) -> Any:
        return None if value is None else inner(value)

    return optional


def _tuple(name: str, item: Converter) -> Converter:
    def to_tuple(value: Any) -> tuple[Any, ...]:
        if type(value) is not list and type(value) is not tuple:
            raise bad_field(name, "expected a list")
        return tuple([item(v) for v in value])

    return to_tuple


def _any_tuple(name: str) -> Converter:
    def to_tuple(value: Any) -> tuple[Any, ...]:
        if type(value) is not list and type(value) is not tuple:
            raise bad_field(name, "expected a list")
        return tuple(value)

    return to_tuple


def _dict(name: str, key_hint: Any, item_hint: Any) -> Converter:
    key_conv = compile_converter(f"{name} key", key_hint)
    item_conv = compile_converter(f"{name}.<item>", item_hint)

    def to_dict(value: Any) -> dict[Any, Any]:
        if type(value) is not dict:
            raise bad_field(name, "expected a map")
        try:
            return {key_conv(k): item_conv(v) for k, v in value.items()}
        except ProtocolError:
            # Name the offending item: rebuild its converter only on this rare path.
            for k, v in value.items():
                key_conv(k)
                compile_converter(f"{name}.{k}", item_hint)(v)
            raise

    return to_dict


def compile_converter(name: str, hint: Any) -> Converter:
    """The converter for a field called ``name`` declared as ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _optional(compile_converter(name, inner))
    if origin is tuple and typing.get_args(hint)[0] is Any:
        return _any_tuple(name)  # items checked by their user (``KvPuts``)
    if origin is tuple:
        return _tuple(name, compile_converter(f"{name}[]", typing.get_args(hint)[0]))
    if origin is dict:
        key_hint, item_hint = typing.get_args(hint)
        return _dict(name, key_hint, item_hint)
    if dataclasses.is_dataclass(hint):
        nested = converter_for(typing.cast(type[Any], hint), f"{name}.")

        def to_nested(value: Any) -> Any:
            if type(value) is dict:
                return nested.build(value)
            if type(value) is nested.cls:
                nested.validate(value)
                return value
            raise bad_field(name, "expected a map")

        return to_nested
    if hint is float:
        return _float(name)
    if hint in (int, str, bool, bytes):
        return _scalar(name, hint)
    raise TypeError(f"unsupported hint {hint!r} for command field {name}")


_PLAIN: tuple[type[Any], ...] = (str, bytes, int, bool)
"""Field types checked by exact type alone (``_scalar``'s rule)."""
_MISSING = object()


class DataclassConverter:
    """One dataclass, compiled: build from a plain map, validate, turn into a plain map."""

    __slots__ = ("cls", "fields", "names", "nested", "plain", "prefix")

    def __init__(self, cls: type[Any], prefix: str) -> None:
        hints = {
            k: v
            for k, v in typing.get_type_hints(cls).items()
            if typing.get_origin(v) is not ClassVar
        }
        self.cls = cls
        self.prefix = prefix
        self.fields: tuple[tuple[str, Converter, bool], ...] = tuple(
            (
                f.name,
                compile_converter(f"{prefix}{f.name}", hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
        self.names = frozenset(hints)
        # Every field a required plain scalar (the KV writes): ``build`` and
        # ``validate`` check each value's exact type inline, without a converter
        # call per field (this runs for every write on every node).
        plain = tuple((name, hints[name]) for name, _, required in self.fields if required)
        self.plain: tuple[tuple[str, type[Any]], ...] | None = (
            plain
            if len(plain) == len(self.fields) and all(kind in _PLAIN for _, kind in plain)
            else None
        )
        # Fields holding a nested dataclass must become maps before packing.
        self.nested: tuple[tuple[str, DataclassConverter], ...] = tuple(
            (name, converter_for(typing.cast(type[Any], hint), f"{prefix}{name}."))
            for name, hint in hints.items()
            if dataclasses.is_dataclass(hint)
        )

    def build(self, mapping: dict[Any, Any]) -> Any:
        """An instance from a decoded map; ``ProtocolError`` naming the first bad field."""
        plain = self.plain
        if plain is not None and len(mapping) == len(plain):
            args: list[Any] = []
            for name, kind in plain:
                value = mapping.get(name, _MISSING)
                if type(value) is not kind:
                    break  # missing, unknown or mistyped: the full path says which
                args.append(value)
            else:
                return self.cls(*args)
        if len(mapping) == len(self.fields):
            # The usual case, every field present (so none unknown): positional.
            try:
                return self.cls(*[convert(mapping[name]) for name, convert, _ in self.fields])
            except KeyError:
                pass  # same size but some names differ: the full path says which
        values: dict[str, Any] = {}
        for name, convert, required in self.fields:
            if name in mapping:
                values[name] = convert(mapping[name])
            elif required:
                raise bad_field(f"{self.prefix}{name}", "missing")
        if len(values) != len(mapping):
            unknown = set(mapping) - self.names
            raise bad_field(self.prefix + sorted(map(str, unknown))[0], "unknown field")
        return self.cls(**values)

    def validate(self, obj: Any) -> None:
        """Raise ``ProtocolError`` if ``obj``'s fields would not decode back."""
        plain = self.plain
        if plain is not None:
            for name, kind in plain:
                if type(getattr(obj, name)) is not kind:
                    break  # the converters below name the field and the reason
            else:
                return
        for name, convert, _ in self.fields:
            convert(getattr(obj, name))

    def to_plain(self, obj: Any, out: dict[str, Any]) -> dict[str, Any]:
        """Add ``obj``'s fields to ``out`` in declaration order (tuples pack as arrays)."""
        for name, _, _ in self.fields:
            out[name] = getattr(obj, name)
        for name, nested in self.nested:
            value = out[name]
            if type(value) is nested.cls:
                out[name] = nested.to_plain(value, {})
        return out


_CONVERTERS: dict[tuple[type[Any], str], DataclassConverter] = {}


def converter_for(cls: type[Any], prefix: str = "") -> DataclassConverter:
    """The compiled converter of ``cls`` (built on first use, then shared)."""
    key = (cls, prefix)
    conv = _CONVERTERS.get(key)
    if conv is None:
        conv = _CONVERTERS[key] = DataclassConverter(cls, prefix)
    return conv
