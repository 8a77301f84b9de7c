"""Round trips and validation of the generic wire codec."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.wire_strategies import (
    Colour,
    Containers,
    Outer,
    Point,
    Scalars,
    WithDefaults,
    strategy_for_class,
)

from agent import wire
from agent.errors import ProtocolError

REGISTERED = wire.registry_loaded()


def raw(*items: object) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


def test_every_core_range_is_respected() -> None:
    for number, cls in REGISTERED.items():
        owner = cls.__module__
        if owner in wire.MSG_RANGES:
            lo, hi = wire.MSG_RANGES[owner]
            assert lo <= number <= hi, (number, cls)


@pytest.mark.parametrize(
    "cls", list(REGISTERED.values()), ids=[f"{n}-{c.__name__}" for n, c in REGISTERED.items()]
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_registered_type(cls: type, data: st.DataObject) -> None:
    msg = data.draw(strategy_for_class(cls))
    encoded = wire.encode(msg)
    decoded = wire.decode(encoded)
    assert type(decoded) is cls
    assert decoded == msg
    # Re-encoding is stable: the codec has one canonical form per value.
    assert wire.encode(decoded) == encoded


def test_encoded_form_is_positional_array() -> None:
    msg = Point(3, 1.5)
    assert msgpack.unpackb(wire.encode(msg)) == [wire.PROTOCOL_VERSION, 60006, 3, 1.5]
    hello = wire.Hello("abc", "127.0.0.1:7900")
    assert msgpack.unpackb(wire.encode(hello)) == [1, wire.MsgType.HELLO, "abc", "127.0.0.1:7900"]


def test_nested_values_come_back_with_their_types() -> None:
    c = Containers(
        ints=(1, 2), names={"a": 1}, by_id={7: "x"}, maybe=None, maybe_point=Point(1, 2.0),
        points=(Point(0, 0.5),), point_map={"p": Point(2, 3.0)}, pair=("k", 9),
        nested=((b"a", b"b"), ()), optional_items=("x", None), colours=(Colour.BLUE,),
    )
    msg = Outer(Scalars(1, 2.0, "s", b"b", True, Colour.GREEN), c, Point(5, 6.0))
    out = wire.decode(wire.encode(msg))
    assert out == msg
    assert isinstance(out, Outer)
    assert type(out.scalars.colour) is Colour
    assert type(out.containers.points[0]) is Point
    assert type(out.containers.ints) is tuple
    assert type(out.containers.colours[0]) is Colour


def test_newer_peer_extra_trailing_fields_are_ignored() -> None:
    assert wire.decode(raw(1, 60006, 1, 2.0, "from the future", [1, 2])) == Point(1, 2.0)


def test_older_peer_missing_fields_take_defaults() -> None:
    assert wire.decode(raw(1, 60004, 5)) == WithDefaults(5, "dflt", ())
    assert wire.decode(raw(1, 60004, 5, "x")) == WithDefaults(5, "x", ())


def test_missing_required_field_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="need at least 2"):
        wire.decode(raw(1, 60006, 1))


def test_int_is_accepted_for_float_but_comes_back_float() -> None:
    out = wire.decode(raw(1, 60006, 1, 2))
    assert out == Point(1, 2.0)
    assert isinstance(out, Point)
    assert type(out.y) is float


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (raw(1, 60006, True, 2.0), "bool is not an int"),
        (raw(1, 60006, 1.0, 2.0), "float is not an int"),
        (raw(1, 60006, "1", 2.0), "str is not an int"),
        (raw(1, 60006, 1, True), "bool is not a float"),
        (raw(1, 60006, 1, None), "None is not a float"),
        (raw(1, 60006, 1, math.nan), "NaN is refused"),
        (raw(1, 60001, 1, 1.0, b"bytes", b"b", True, 1), "bin is not str"),
        (raw(1, 60001, 1, 1.0, "s", "str", True, 1), "str is not bytes"),
        (raw(1, 60001, 1, 1.0, "s", b"b", 1, 1), "int is not bool"),
        (raw(1, 60001, 1, 1.0, "s", b"b", True, 3), "3 is not a Colour"),
        (raw(1, 60001, 1, 1.0, "s", b"b", True, "RED"), "enum by name"),
        (raw(1, 60003, [1], [], [1, 2.0]), "nested wrong arity"),
        (raw(1, 60003, 5, [], [1, 2.0]), "int where a dataclass goes"),
        (raw(1, 60004, 1, "b", {"a": 1}), "map where a tuple goes"),
        (raw(1, 60004, 1, "b", [1, "x"]), "wrong tuple item type"),
        (raw(1, 0), "unknown type 0"),
        (raw(1, 59999), "unknown type"),
        (raw(0, 60006, 1, 2.0), "version too old"),
        (raw(2, 60006, 1, 2.0), "version too new"),
        (raw(True, 60006, 1, 2.0), "bool version"),
        (raw(1, "60006", 1, 2.0), "str type number"),
        (raw(1), "header too short"),
        (msgpack.packb({"v": 1}), "not an array"),
        (msgpack.packb(7), "not an array"),
        (b"", "empty"),
        (raw(1, 60006, 1, 2.0) + b"\x00", "trailing bytes"),
        (raw(1, 60006, 1, 2.0)[:-1], "truncated"),
        (b"\x93\x01\xcd\xea\x66\xd6\xff\x00\x00\x00\x01", "ext type (timestamp)"),
    ],
)
def test_invalid_messages_raise_protocol_error(payload: bytes, why: str) -> None:
    with pytest.raises(ProtocolError):
        wire.decode(payload)


def containers_raw(**override: object) -> bytes:
    fields = {
        "ints": [], "names": {}, "by_id": {}, "maybe": None, "maybe_point": None, "points": [],
        "point_map": {}, "pair": ["a", 1], "nested": [], "optional_items": [], "colours": [],
    }
    fields.update(override)
    return raw(1, 60002, *fields.values())


def test_containers_baseline_decodes() -> None:
    assert isinstance(wire.decode(containers_raw()), Containers)


@pytest.mark.parametrize(
    "override",
    [
        {"names": {1: 1}},            # int key where str keys go
        {"by_id": {"1": "x"}},        # str key where int keys go
        {"by_id": {True: "x"}},       # bool key is not an int
        {"names": {"a": "1"}},        # wrong value type
        {"pair": ["a"]},              # fixed tuple too short
        {"pair": ["a", 1, 2]},        # fixed tuple too long
        {"pair": [1, "a"]},           # fixed tuple swapped
        {"maybe": 1.5},
        {"maybe_point": [1]},
        {"points": [[1, 1.0], 3]},
        {"nested": [[b"x", "y"]]},
        {"optional_items": [1]},
        {"colours": [99]},
        {"point_map": {"p": None}},
    ],
)
def test_container_type_confusion_is_rejected(override: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        wire.decode(containers_raw(**override))


def test_duplicate_registration_is_a_bug() -> None:
    @dataclass(frozen=True, slots=True)
    class Fresh:
        a: int

    with pytest.raises(AssertionError, match="already used"):
        wire.register(60006, Fresh)
    with pytest.raises(AssertionError, match="already registered"):
        wire.register(60100, Point)


@pytest.mark.parametrize("bad_type", [list[int], set[int], dict[bytes, int], int | str, object])
def test_unsupported_field_types_are_refused_at_registration(bad_type: object) -> None:
    cls = dataclasses.make_dataclass("Bad", [("a", bad_type)], frozen=True)
    with pytest.raises(AssertionError):
        wire.register(60200, cls)
    assert 60200 not in wire.registered()


def test_mutable_dataclass_is_refused() -> None:
    @dataclass
    class Mutable:
        a: int

    with pytest.raises(AssertionError, match="frozen"):
        wire.register(60201, Mutable)


def test_unregistered_message_cannot_be_encoded() -> None:
    @dataclass(frozen=True, slots=True)
    class Stray:
        a: int

    with pytest.raises(AssertionError, match="not a registered"):
        wire.encode(Stray(1))


def test_unencodable_value_is_a_local_bug() -> None:
    with pytest.raises(AssertionError, match="cannot encode"):
        wire.encode(Point(2**70, 1.0))


def test_registry_loaded_is_idempotent() -> None:
    assert wire.registry_loaded() == wire.registry_loaded()
    assert wire.registered()[1] is wire.Hello


def test_nested_arrays_follow_the_same_compatibility_rule() -> None:
    scalars = [1, 2.0, "s", b"b", True, 1]
    containers = [[], {}, {}, None, None, [], {}, ["a", 1], [], [], []]
    newer_point = [5, 6.0, "extra field from a newer peer"]
    out = wire.decode(raw(1, 60003, scalars, containers, newer_point))
    assert isinstance(out, Outer)
    assert out.point == Point(5, 6.0)
    with pytest.raises(ProtocolError, match="need at least 2"):
        wire.decode(raw(1, 60003, scalars, containers, [5]))


def test_generated_and_generic_decoders_agree() -> None:
    msg = WithDefaults(7, "x", (1, 2, 3))
    exact = wire.decode(wire.encode(msg))
    longer = wire.decode(raw(1, 60004, 7, "x", [1, 2, 3], "future"))
    assert exact == longer == msg


def _plain(msg: object) -> bytes:
    """What encode gave before the shared-field memo: packb of the whole list."""
    number = wire.msg_type_of(msg)
    values = wire._by_number[number].to_list(msg)
    return raw(wire.PROTOCOL_VERSION, number, *values)


# 60 examples: each draws one message of every class with a shared field, so
# about 60 x 10 messages (200 took 12 s of the suite; the suite is at its budget).
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_memoized_shared_field_encodes_byte_identically(data: st.DataObject) -> None:
    """Every registered class with a tuple-of-dataclass field (AppendEntries'
    entries, SWIM's gossip lists) encodes exactly as packb of the whole list,
    whether its items were packed afresh or taken from the memo."""
    shared = [cls for cls in wire.registered().values()
              if wire._compile_class(cls).shared >= 0]
    assert any(cls.__name__ == "AppendEntries" for cls in shared)
    for cls in shared:
        msg = data.draw(strategy_for_class(cls))
        first = wire.encode(msg)
        assert first == _plain(msg)
        assert wire.encode(msg) == first  # memo hit: same objects
        name = wire._compile_class(cls).names[wire._compile_class(cls).shared]
        again = dataclasses.replace(msg, **{name: tuple(getattr(msg, name))})  # type: ignore[type-var]
        assert wire.encode(again) == first  # a new tuple of the same items
        assert wire.decode(first) == msg


def test_append_entries_to_two_followers_share_the_packed_entries() -> None:
    from agent.raft.messages import AppendEntries, Entry, EntryKind

    entries = [Entry(3, i, EntryKind.NORMAL, bytes([i]) * 100) for i in range(1, 50)]
    to_b = AppendEntries("a", "b", 3, 0, 0, tuple(entries), 40)
    to_c = AppendEntries("a", "c", 3, 0, 0, tuple(entries), 40)
    assert wire.encode(to_b) == _plain(to_b)
    assert wire.encode(to_c) == _plain(to_c)
    # Equal but different Entry objects miss the memo and still encode right.
    other = AppendEntries("a", "b", 3, 0, 0, tuple(dataclasses.replace(e, data=b"x")
                                                   for e in entries), 41)
    assert wire.encode(other) == _plain(other)
    assert wire.decode(wire.encode(to_c)) == to_c
    heartbeat = AppendEntries("a", "b", 3, 49, 3, (), 49)
    assert wire.encode(heartbeat) == _plain(heartbeat)
