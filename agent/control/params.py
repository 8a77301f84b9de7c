"""Typed access to a control request's params, for handlers.

Handlers get the decoded params map as-is.  Reading it with ``params["x"]``
would turn a missing param into ``KeyError``, which the server answers
``not_found``; these helpers raise ``ProtocolError`` instead, which it answers
``bad_request`` with a message naming the param.  ``None`` counts as absent
when a default is given, so ``{"to": None}`` and ``{}`` read the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, overload

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
