"""The control codec's hot paths (issue 14, session 7) give exactly what the general
ones give: ``ControlConnection.next_request`` is ``next_event`` without building the
``Request`` (the same fields, the same refusals, the same sticky ERROR state), and
``check_value``'s two-level fast path (``_flat``) accepts only what the full walk
accepts, at every depth limit."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control import codec
from agent.control.codec import NEED_DATA, SERVER, ControlConnection, Request, State
from agent.errors import ProtocolError


def _frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _walk(value: object, depth_limit: int) -> str:
    """The full walk's verdict (no fast path): "" or the refusal text."""
    try:
        if isinstance(value, dict | list | tuple):
            codec._check_nested(value, 1, depth_limit)
    except ProtocolError as exc:
        return str(exc)
    return ""


def _verdict(value: object, depth_limit: int) -> str:
    try:
        codec.check_value(value, depth_limit=depth_limit)
    except ProtocolError as exc:
        return str(exc)
    return ""


class _Key(str):
    """A str subclass: a valid key the fast path leaves to the walk."""


SAMPLES: list[Any] = [
    {"id": 1, "method": "kv.put", "params": {"ns": "a", "key": "k", "value": b"v", "rid": ""}},
    {"id": 1, "result": {"index": 3}},
    {"id": 1, "result": {"deep": {"er": 1}}},
    {"id": 1, "result": [1, {"a": 2}]},
    {1: "int key"},
    {"a": {2: "inner int key"}},
    {"a": {b"k": 1}},
    {_Key("k"): {_Key("j"): 1}},
    {"a": {"b": [{"c": {3: 4}}]}},
    {},
    {"a": {}},
]


@pytest.mark.parametrize("value", SAMPLES)
@pytest.mark.parametrize("depth_limit", [1, 2, 3, 32, 200])
def test_check_value_fast_path_agrees_with_the_walk(value: Any, depth_limit: int) -> None:
    assert _verdict(value, depth_limit) == _walk(value, depth_limit)


def test_the_usual_request_and_reply_take_the_fast_path() -> None:
    assert codec._flat(SAMPLES[0]) and codec._flat(SAMPLES[1])
    assert not codec._flat(SAMPLES[2]) and not codec._flat(SAMPLES[4])


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3),
                     st.binary(max_size=3))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=2), st.integers(), st.binary(max_size=2)),
                        inner, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(value=_values, depth_limit=st.integers(min_value=1, max_value=5))
def test_check_value_agrees_with_the_walk_on_any_value(value: Any, depth_limit: int) -> None:
    assert _verdict(value, depth_limit) == _walk(value, depth_limit)


GOOD = [
    {"id": 7, "method": "kv.put", "params": {"ns": "a", "key": "k", "value": b"v"}},
    {"id": 8, "method": "status", "params": {}},
]
BAD = [
    {"id": "7", "method": "kv.put", "params": {}},
    {"id": 7, "params": {}},
    {"id": 7, "method": "", "params": {}},
    {"id": 7, "method": "x" * 200, "params": {}},
    {"id": 7, "method": "kv.put", "params": []},
    {"id": True, "method": "kv.put", "params": {}},
    {"id": 7, "method": "kv.put", "params": {1: 2}},
]


def test_next_request_gives_next_event_s_fields() -> None:
    data = b"".join(_frame(obj) for obj in GOOD)
    general, fast = ControlConnection(SERVER), ControlConnection(SERVER)
    general.receive_data(data[:5])
    fast.receive_data(data[:5])
    assert general.next_event() is NEED_DATA and fast.next_request() is NEED_DATA
    general.receive_data(data[5:])
    fast.receive_data(data[5:])
    for _ in GOOD:
        message = general.next_event()
        assert isinstance(message, Request)
        assert fast.next_request() == (message.id, message.method, message.params)
    assert general.next_event() is NEED_DATA and fast.next_request() is NEED_DATA
    general.receive_data(b"")
    fast.receive_data(b"")
    assert general.next_event() is NEED_DATA and fast.next_request() is NEED_DATA
    assert general.state is fast.state is State.CLOSED


@pytest.mark.parametrize("obj", BAD)
def test_next_request_refuses_what_next_event_refuses(obj: Any) -> None:
    texts = []
    for fast in (False, True):
        conn = ControlConnection(SERVER)
        conn.receive_data(_frame(obj))
        with pytest.raises(ProtocolError) as caught:
            conn.next_request() if fast else conn.next_event()
        texts.append(str(caught.value))
        assert conn.state is State.ERROR
        with pytest.raises(ProtocolError):  # sticky
            conn.next_request()
    assert texts[0] == texts[1]


def test_next_request_refuses_a_truncated_stream() -> None:
    conn = ControlConnection(SERVER)
    conn.receive_data(_frame(GOOD[0])[:-1])
    conn.receive_data(b"")
    with pytest.raises(ProtocolError, match="stream ended inside a frame"):
        conn.next_request()
    assert conn.state is State.ERROR
