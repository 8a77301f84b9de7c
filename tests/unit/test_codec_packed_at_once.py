"""The control codec packs the usual request and reply at once (issue 14, session 8):
``send_response`` with a result, and ``send_request`` with params, that are maps of
str keys and scalars skip ``encode_frame``'s ``check_value`` (such a message passes
it at any depth limit), and ``decode_body`` asks ``_flat`` itself before the walk.
The bytes and the refusals are those of the general path, ``send(Response(...))``
and ``send(Request(...))``, for any result or params."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.control import codec
from agent.control.codec import CLIENT, SERVER, ControlConnection, Request, Response
from agent.errors import ProtocolError


def _outcome(make: Any) -> tuple[str, Any]:
    try:
        return "ok", make()
    except ProtocolError as exc:
        return "refused", str(exc)


class _Key(str):
    """A str subclass: valid, but not what the fast path takes."""


SAMPLES: list[Any] = [
    {"index": 3},
    {},
    {"ns": "a", "key": "k", "value": b"v" * 100, "rid": "r", "ttl": 1.5, "x": None, "y": True},
    {"big": 2**64},  # msgpack cannot pack it: the same refusal
    {"neg": -(2**63) - 1},
    {"bad": "\ud800"},  # a lone surrogate: not encodable as utf-8
    {1: "int key"},
    {b"k": 1},
    {_Key("k"): 1},
    {"nested": {"a": 1}},
    {"deep": {"a": {"b": [1, {"c": 2}]}}},
    {"list": [1, 2, 3]},
    {"value": b"x" * (codec.MAX_CONTROL_FRAME + 1)},  # too big a frame
    {"obj": object()},
    3,
    None,
    [1, 2],
    "text",
]


@pytest.mark.parametrize("value", SAMPLES)
def test_send_response_is_send_of_a_response(value: Any) -> None:
    conn, ref = ControlConnection(SERVER), ControlConnection(SERVER)
    assert _outcome(lambda: conn.send_response(7, value)) == _outcome(
        lambda: ref.send(Response(7, value)))


@pytest.mark.parametrize("value", [v for v in SAMPLES if isinstance(v, dict)])
def test_send_request_is_send_of_a_request(value: Any) -> None:
    conn, ref = ControlConnection(CLIENT), ControlConnection(CLIENT)
    assert _outcome(lambda: conn.send_request(7, "kv.put", value)) == _outcome(
        lambda: ref.send(Request(7, "kv.put", value)))


_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 3) | st.binary(max_size=2), inner,
                      max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.text(max_size=6) | st.binary(max_size=3), _values, max_size=5))
def test_both_fast_paths_agree_on_any_map(value: dict[Any, Any]) -> None:
    server, ref_server = ControlConnection(SERVER), ControlConnection(SERVER)
    assert _outcome(lambda: server.send_response(1, value)) == _outcome(
        lambda: ref_server.send(Response(1, value)))
    client, ref_client = ControlConnection(CLIENT), ControlConnection(CLIENT)
    assert _outcome(lambda: client.send_request(1, "m", value)) == _outcome(
        lambda: ref_client.send(Request(1, "m", value)))


def _decoded_by_walk(body: bytes) -> tuple[str, Any]:
    """``decode_body``'s verdict before the change: unpack, then ``check_value``."""
    try:
        obj = msgpack.unpackb(body, max_ext_len=0)
    except Exception as exc:  # as decode_body words it
        return "refused", f"undecodable frame: {type(exc).__name__}: {exc}"
    try:
        codec.check_value(obj)
    except ProtocolError as exc:
        return "refused", str(exc)
    return "ok", obj


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.text(max_size=6) | st.binary(max_size=3), _values, max_size=5))
def test_decode_body_checks_as_check_value(value: dict[Any, Any]) -> None:
    try:
        body = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError):
        assume(False)  # not a body anyone can send
    assert _outcome(lambda: codec.decode_body(body)) == _decoded_by_walk(body)


def test_a_deep_map_is_still_refused() -> None:
    deep: Any = 1
    for _ in range(codec.MAX_DEPTH + 1):
        deep = {"d": deep}
    body = msgpack.packb(deep, use_bin_type=True)
    with pytest.raises(ProtocolError, match="nesting deeper"):
        codec.decode_body(body)


def test_the_usual_messages_skip_encode_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench's request and reply are packed without ``encode_frame`` (and so
    without ``check_value``); fails where they still go through it."""
    def no(*_: object, **__: object) -> None:
        raise AssertionError("the general path was taken")

    server, client = ControlConnection(SERVER), ControlConnection(CLIENT)
    params = {"ns": "bench", "key": "w1-3", "value": b"v" * 100, "rid": "ab12"}
    expected_reply = ControlConnection(SERVER).send(Response(5, {"index": 9}))
    expected_request = ControlConnection(CLIENT).send(Request(5, "kv.put", params))
    monkeypatch.setattr(codec, "encode_frame", no)
    monkeypatch.setattr(codec, "check_value", no)
    assert server.send_response(5, {"index": 9}) == expected_reply
    assert client.send_request(5, "kv.put", params) == expected_request
    body = expected_request[4:]
    assert codec.decode_body(body)["params"] == params
