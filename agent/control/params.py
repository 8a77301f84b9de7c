"""Typed access to a control request's params, for handlers.

Handlers get the decoded params map as-is.  Reading it with ``params["x"]``
would turn a missing param into ``KeyError``, which the server answers
``not_found``; these helpers raise ``ProtocolError`` instead, which it answers
``bad_request`` with a message naming the param.  ``None`` counts as absent
when a default is given, so ``{"to": None}`` and ``{}`` read the same.

``check_params`` checks a whole request against a ``Schema`` (param name ->
kind), strictly: a bool must be a bool (``"yes"`` or ``1`` is not true), an
int an int and not a bool, a str a str.  A float also takes an int (JSON-ish
clients write ``5`` for ``5.0``), never a bool.  The agent declares every
method's schema in one table (``agent.runtime.handlers.METHOD_PARAMS``) and
checks each request against it before its handler runs.  Params a schema
does not name are left alone, so a newer client's extra optional param does
not break an older agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar, overload

from agent.errors import ProtocolError

T = TypeVar("T")
D = TypeVar("D")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _check(name: str, value: object, kind: type[T]) -> T:
    # bool is an int subclass, but a JSON-ish true is never a count.
    if kind is int and type(value) is bool:
        raise ProtocolError(f"param '{name}' must be int, not bool")
    if kind is float and type(value) is int:
        return float(value)  # type: ignore[return-value]
    if not isinstance(value, kind):
        raise ProtocolError(f"param '{name}' must be {kind.__name__}, not {type(value).__name__}")
    return value


@overload
def param(params: Mapping[str, Any], name: str, kind: type[T]) -> T: ...
@overload
def param(params: Mapping[str, Any], name: str, kind: type[T], default: D) -> T | D: ...
def param(params: Mapping[str, Any], name: str, kind: type[Any], default: Any = MISSING) -> Any:
    """``params[name]`` checked to be a ``kind``; ``default`` if absent (or required)."""
    value = params.get(name)
    if value is None:
        if default is MISSING:
            raise ProtocolError(f"missing param '{name}'")
        return default
    return _check(name, value, kind)


@overload
def param_list(params: Mapping[str, Any], name: str, item: type[T]) -> list[T]: ...
@overload
def param_list(params: Mapping[str, Any], name: str, item: type[T], default: D) -> list[T] | D: ...
def param_list(
    params: Mapping[str, Any], name: str, item: type[Any], default: Any = MISSING
) -> Any:
    """``params[name]`` checked to be a list whose every element is an ``item``."""
    value = param(params, name, list, default)
    if value is default and default is not MISSING:
        return default
    return [_check(f"{name}[{i}]", element, item) for i, element in enumerate(value)]


# --------------------------------------------------------------- whole requests


@dataclass(frozen=True, slots=True)
class ListOf:
    """A list whose every element is an ``item``."""

    item: type


@dataclass(frozen=True, slots=True)
class MapOf:
    """A map from str to ``value``."""

    value: type


Kind: TypeAlias = "type | tuple[type, ...] | ListOf | MapOf"
"""What a param must be: a type, one of several types, a list of, a map of."""

Schema: TypeAlias = Mapping[str, Kind]


def _kind_name(kind: Kind) -> str:
    if isinstance(kind, ListOf):
        return f"list of {kind.item.__name__}"
    if isinstance(kind, MapOf):
        return f"map of str to {kind.value.__name__}"
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def _is(value: object, kind: type) -> bool:
    """Strict ``isinstance``: bool is no int or float, int is a float."""
    if type(value) is bool:
        return kind is bool
    if kind is float:
        return type(value) in (float, int)
    return isinstance(value, kind)


def _misfit(value: object, kind: Kind) -> tuple[str, object] | None:
    """None if ``value`` is a ``kind``; else (where inside it, what is there) that is not."""
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            return "", value
        for i, element in enumerate(value):
            if not _is(element, kind.item):
                return f"[{i}]", element
        return None
    if isinstance(kind, MapOf):
        if not isinstance(value, dict):
            return "", value
        for key, element in value.items():
            if not isinstance(key, str):
                return f"[{key!r}]", key
            if not _is(element, kind.value):
                return f"[{key!r}]", element
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return None if any(_is(value, k) for k in kinds) else ("", value)


def check_params(method: str, params: Mapping[str, Any], schema: Schema) -> None:
    """``ProtocolError`` (one line, naming method and param) if a param is not its kind.

    ``None`` is absent (the handler applies its default); unnamed params are
    ignored.  Called on every request: the common case, a value of exactly the
    declared type, costs one ``type() is`` per param.
    """
    for name, value in params.items():
        kind = schema.get(name)
        cls = type(value)
        if cls is kind or kind is None or value is None:
            continue
        if kind.__class__ is tuple and cls in kind:  # exact type, one of several
            continue
        misfit = _misfit(value, kind)
        if misfit is not None:
            where, bad = misfit
            raise ProtocolError(
                f"{method}: param '{name}{where}' must be {_kind_name(kind)}, "
                f"not {type(bad).__name__}"
            )
