"""Hypothesis strategies derived from a wire dataclass's type hints, plus
test-only message classes covering every field type the codec supports.

Importing this module registers the test-only classes (numbers 60000+) once
per process; the round-trip tests iterate over whatever is registered then.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from agent import wire

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1


def strategy_for_type(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy producing valid values of a supported wire field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(INT64_MIN, UINT64_MAX)
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is str:
        return st.text(max_size=24)
    if tp is bytes:
        return st.binary(max_size=48)
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return strategy_for_class(tp)
    if origin is typing.Union or origin is types.UnionType:
        (inner,) = [a for a in args if a is not type(None)]
        return st.none() | strategy_for_type(inner)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for_type(args[0]), max_size=4).map(tuple)
        return st.tuples(*[strategy_for_type(a) for a in args])
    if origin is dict:
        return st.dictionaries(strategy_for_type(args[0]), strategy_for_type(args[1]), max_size=4)
    raise AssertionError(f"no strategy for {tp!r}")


def strategy_for_class(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    return st.builds(cls, *[strategy_for_type(hints[name]) for name in fields])


# --------------------------------------------------------------------------- test-only messages


class Colour(enum.IntEnum):
    RED = 1
    GREEN = 2
    BLUE = 40


@dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: float


@dataclass(frozen=True, slots=True)
class Scalars:
    i: int
    f: float
    s: str
    b: bytes
    flag: bool
    colour: Colour


@dataclass(frozen=True, slots=True)
class Containers:
    ints: tuple[int, ...]
    names: dict[str, int]
    by_id: dict[int, str]
    maybe: int | None
    maybe_point: Point | None
    points: tuple[Point, ...]
    point_map: dict[str, Point]
    pair: tuple[str, int]
    nested: tuple[tuple[bytes, ...], ...]
    optional_items: tuple[str | None, ...]
    colours: tuple[Colour, ...]


@dataclass(frozen=True, slots=True)
class Outer:
    scalars: Scalars
    containers: Containers
    point: Point


@dataclass(frozen=True, slots=True)
class WithDefaults:
    a: int
    b: str = "dflt"
    c: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Empty:
    pass


TEST_TYPES: dict[int, type] = {
    60001: Scalars,
    60002: Containers,
    60003: Outer,
    60004: WithDefaults,
    60005: Empty,
    60006: Point,
}

for _number, _cls in TEST_TYPES.items():
    wire.register(_number, _cls)
