"""Control API value checks: what every request and reply must be (depth, str map
keys, names), split from ``codec.py`` (which re-exports these names) so the
codec stays one concern: frames and messages.

``check_value`` is the full walk; ``_flat`` the one-call test that passes the
usual two-level request or reply at once.  Pure functions of their argument;
the only exception raised is ``ProtocolError``.
"""

from __future__ import annotations

from typing import Any, Final

from agent.errors import ProtocolError

MAX_DEPTH: Final = 32
"""Deepest nesting of containers; the top-level map is depth 1."""
MAX_NAME_LEN: Final = 128
"""Longest method, event topic or error code."""


def _is_int(value: object) -> bool:
    # bool is an int subclass; msgpack true/false must never pass as an id.
    return type(value) is int


_CONTAINERS: Final = (dict, list, tuple)
"""Built once: ``dict | list | tuple`` in an isinstance call builds a union per call."""
_SCALARS: Final = frozenset({str, bytes, int, float, bool, type(None)})
"""Exact types that are never containers: one set lookup instead of an isinstance
of three classes for every value of every request and reply."""


def check_value(value: object, *, depth_limit: int = MAX_DEPTH) -> None:
    """Raise ``ProtocolError`` unless ``value`` nests at most ``depth_limit`` deep
    and every map key is a ``str`` (the control API's only key type).

    Recursive only to a depth of ``depth_limit`` (32 by default), where it stops
    with an error: hostile input cannot exhaust the Python stack.  A deeper
    limit uses an explicit stack.
    """
    if type(value) is dict and depth_limit >= 2 and _flat(value):
        return
    if type(value) in _SCALARS or not isinstance(value, _CONTAINERS):
        return
    if depth_limit > _RECURSION_LIMIT:
        _check_iteratively(value, depth_limit)
        return
    _check_nested(value, 1, depth_limit)


_RECURSION_LIMIT: Final = 100


def _flat(value: dict[Any, Any]) -> bool:
    """Is ``value`` a map of str keys whose values are scalars or maps of str keys
    and scalars (two levels: a request, a reply, their params and results, most of
    the time)?  Then it passes ``check_value`` at any ``depth_limit`` of 2 or more,
    checked here in one call instead of one per map; False: walk it as usual."""
    for key, child in value.items():
        if type(key) is not str:
            return False
        kind = type(child)
        if kind in _SCALARS:
            continue
        if kind is not dict:
            return False
        for inner_key, inner in child.items():
            if type(inner_key) is not str or type(inner) not in _SCALARS:
                return False
    return True


def _check_nested(item: object, depth: int, limit: int) -> None:
    # Every request and reply goes through here: a call per container is
    # cheaper than pushing and popping (item, depth) pairs for each.
    if depth > limit:
        raise ProtocolError(f"nesting deeper than {limit}")
    if isinstance(item, dict):
        for key, child in item.items():
            if type(key) is not str and not isinstance(key, str):
                raise ProtocolError(f"map key must be str, not {type(key).__name__}")
            if type(child) not in _SCALARS and isinstance(child, _CONTAINERS):
                _check_nested(child, depth + 1, limit)
    else:
        for child in item:  # type: ignore[attr-defined]
            if type(child) not in _SCALARS and isinstance(child, _CONTAINERS):
                _check_nested(child, depth + 1, limit)


def _check_iteratively(value: object, depth_limit: int) -> None:
    stack: list[tuple[object, int]] = [(value, 1)]
    push, pop = stack.append, stack.pop
    while stack:
        item, depth = pop()
        if depth > depth_limit:
            raise ProtocolError(f"nesting deeper than {depth_limit}")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ProtocolError(f"map key must be str, not {type(key).__name__}")
                if isinstance(child, _CONTAINERS):
                    push((child, depth + 1))
        else:
            for child in item:  # type: ignore[attr-defined]
                if isinstance(child, _CONTAINERS):
                    push((child, depth + 1))


def _check_name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{kind} must be a non-empty str")
    if len(value) > MAX_NAME_LEN:
        raise ProtocolError(f"{kind} longer than {MAX_NAME_LEN} characters")
    return value
