"""``ControlConnection._usual_request`` and ``_usual_reply`` (issue 14, session 9):
the one-call paths of ``next_request`` and ``next_reply`` give what the general
path gives, and leave everything else -- consumed nothing -- to it, so refusals
and the sticky ERROR state stay the general path's."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.codec import (
    CLIENT,
    NEED_DATA,
    SERVER,
    SMALL_FRAME,
    ControlConnection,
    Request,
    Response,
    State,
)
from agent.errors import ProtocolError


def _frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


USUAL = {"id": 7, "method": "kv.put",
         "params": {"ns": "a", "key": "k", "value": b"v" * 100, "rid": "r" * 32}}
UNUSUAL = [
    {"id": 7, "method": "kv.put", "params": {"ns": "a"}, "extra": 1},  # a fourth key
    {"id": 7, "method": "kv.put", "params": {"nested": {"a": 1}}},  # a map in params
    {"id": 7, "method": "kv.put", "params": {"list": [1]}},
    {"id": True, "method": "kv.put", "params": {}},  # bool is no id
    {"id": 7, "method": "x" * 200, "params": {}},
    {"id": 7, "method": "", "params": {}},
    {"id": 7, "method": "kv.put", "params": {1: 2}},
    {"id": 7, "method": "kv.put", "params": {b"k": 2}},
    {"id": 7, "method": "kv.put", "params": []},
    {"id": 7, "params": {}, "x": 1},
    [1, 2, 3],
]


def test_the_usual_request_takes_the_one_call_path() -> None:
    conn = ControlConnection(SERVER)
    conn.receive_data(_frame(USUAL) * 2)
    assert conn._usual_request() == (7, "kv.put", USUAL["params"])
    assert conn.buffered == len(_frame(USUAL))
    assert conn.next_request() == (7, "kv.put", USUAL["params"])
    assert conn.buffered == 0 and conn.next_request() is NEED_DATA


@pytest.mark.parametrize("obj", UNUSUAL)
def test_anything_else_is_left_to_the_general_path(obj: Any) -> None:
    conn = ControlConnection(SERVER)
    data = _frame(obj)
    conn.receive_data(data)
    assert conn._usual_request() is None
    assert conn.buffered == len(data)  # nothing consumed


def test_a_large_or_partial_frame_is_left_to_the_general_path() -> None:
    big = {"id": 1, "method": "kv.put", "params": {"value": b"x" * (SMALL_FRAME + 1)}}
    conn = ControlConnection(SERVER)
    conn.receive_data(_frame(big))
    assert conn._usual_request() is None
    assert conn.next_request() == (1, "kv.put", big["params"])
    conn.receive_data(_frame(USUAL)[:-1])
    assert conn._usual_request() is None and conn.next_request() is NEED_DATA


def test_undecodable_bytes_are_refused_by_the_general_path() -> None:
    conn = ControlConnection(SERVER)
    conn.receive_data(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    assert conn._usual_request() is None
    with pytest.raises(ProtocolError, match="undecodable"):
        conn.next_request()
    assert conn.state is State.ERROR


_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
_scalars = st.one_of(st.none(), st.booleans(), _ints, st.floats(allow_nan=False),
                     st.text(max_size=4), st.binary(max_size=4))
_param_values = st.one_of(_scalars, st.lists(_scalars, max_size=2),
                          st.dictionaries(st.text(max_size=2), _scalars, max_size=2))
_requests = st.fixed_dictionaries(
    {
        "id": st.one_of(_ints, st.booleans(), st.text(max_size=2)),
        "method": st.one_of(st.text(max_size=3), st.just("x" * 129)),
        "params": st.one_of(
            st.dictionaries(st.one_of(st.text(max_size=3), st.binary(max_size=2)),
                            _param_values, max_size=4),
            st.lists(_scalars, max_size=2)),
    },
    optional={"extra": _scalars},
)


def _general(data: bytes, cuts: list[int]) -> list[Any]:
    """What ``next_event`` makes of ``data`` fed in pieces: fields, refusals, states."""
    return _run(data, cuts, lambda conn: conn.next_event())


def _fast(data: bytes, cuts: list[int]) -> list[Any]:
    return _run(data, cuts, lambda conn: conn.next_request())


def _run(data: bytes, cuts: list[int], step: Any) -> list[Any]:
    conn = ControlConnection(SERVER)
    out: list[Any] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for lo, hi in itertools.pairwise(bounds):
        if lo == hi:
            continue
        conn.receive_data(data[lo:hi])
        while True:
            try:
                got = step(conn)
            except ProtocolError as exc:
                out.append(("refused", str(exc)))
                return [*out, conn.state]
            if got is NEED_DATA:
                break
            out.append((got.id, got.method, got.params) if isinstance(got, Request) else got)
    return [*out, conn.state]


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(_requests, min_size=1, max_size=4),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=3))
def test_next_request_agrees_with_next_event_on_any_stream(
    requests: list[dict[str, Any]], cuts: list[int]
) -> None:
    data = b"".join(_frame(r) for r in requests)
    assert _fast(data, cuts) == _general(data, cuts)


# ---------------------------------------------------------------- replies (a client's)
_replies = st.one_of(
    st.fixed_dictionaries(
        {"id": st.one_of(_ints, st.booleans(), st.none()),
         "result": st.one_of(_param_values, st.dictionaries(st.text(max_size=2), _param_values,
                                                            max_size=2))},
        optional={"extra": _scalars},
    ),
    st.fixed_dictionaries({"id": st.one_of(_ints, st.none()),
                           "error": st.fixed_dictionaries({"code": st.sampled_from(["no_quorum", ""]),
                                                           "message": st.text(max_size=3)})}),
    st.fixed_dictionaries({"event": st.text(max_size=3), "sub": _ints,
                           "data": st.dictionaries(st.text(max_size=2), _scalars, max_size=2)}),
)


def _client_run(data: bytes, cuts: list[int], fast: bool) -> list[Any]:
    conn = ControlConnection(CLIENT)
    out: list[Any] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for lo, hi in itertools.pairwise(bounds):
        if lo == hi:
            continue
        conn.receive_data(data[lo:hi])
        while True:
            try:
                got = conn.next_reply() if fast else conn.next_event()
            except ProtocolError as exc:
                out.append(("refused", str(exc)))
                return [*out, conn.state]
            if got is NEED_DATA:
                break
            out.append((got.id, got.result) if isinstance(got, Response) else got)
    return [*out, conn.state]


@settings(max_examples=200, deadline=None)
@given(replies=st.lists(_replies, min_size=1, max_size=4),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=3))
def test_next_reply_agrees_with_next_event_on_any_stream(
    replies: list[dict[str, Any]], cuts: list[int]
) -> None:
    data = b"".join(_frame(r) for r in replies)
    assert _client_run(data, cuts, True) == _client_run(data, cuts, False)


def test_the_usual_reply_takes_the_one_call_path() -> None:
    conn = ControlConnection(CLIENT)
    conn.receive_data(_frame({"id": 3, "result": {"index": 9}}) + _frame({"id": 4, "result": [1]}))
    assert conn._usual_reply() == (3, {"index": 9})
    assert conn._usual_reply() is None  # a list result: the general path's
    assert conn.next_reply() == (4, [1]) and conn.next_reply() is NEED_DATA
