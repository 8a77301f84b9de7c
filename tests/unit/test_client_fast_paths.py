"""The control client's hot path (issue 14, session 7) gives exactly what the general
one gives: ``ControlConnection.next_reply`` is a client's ``next_event`` without
building the ``Response`` -- ``(id, result)`` for every reply ``next_event`` reads as a
``Response``, the same ``ErrorResponse`` and ``Event`` otherwise, the same refusals
and the same sticky ERROR state."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control import codec
from agent.control.codec import (
    CLIENT,
    NEED_DATA,
    SERVER,
    ControlConnection,
    Response,
    State,
)
from agent.errors import ProtocolError


def _frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _general(message: Any) -> Any:
    """``next_event``'s message in ``next_reply``'s terms."""
    if type(message) is Response:
        return (message.id, message.result)
    return message


def _read_both(data: bytes) -> tuple[list[Any], list[Any]]:
    """Every message (or the refusal) each reader gives for ``data``, then EOF."""
    seen: list[list[Any]] = []
    for fast in (False, True):
        conn, out = ControlConnection(CLIENT), []
        try:
            conn.receive_data(data)
            conn.receive_data(b"")
            while (message := conn.next_reply() if fast else conn.next_event()) is not NEED_DATA:
                out.append(message if fast else _general(message))
            out.append(("state", conn.state))
        except ProtocolError as exc:
            out.append(("refused", str(exc), conn.state))
            try:  # sticky: the next read is refused too, with the same words
                conn.next_reply() if fast else conn.next_event()
            except ProtocolError as again:
                out.append(("again", str(again), conn.state))
        seen.append(out)
    return seen[0], seen[1]


REPLIES: list[Any] = [
    {"id": 1, "result": {"index": 3}},
    {"id": 2, "result": None},
    {"id": 3, "result": [1, {"a": b"x"}]},
    {"id": 4, "result": {"deep": {"er": {"still": 1.5}}}},
    {"id": 5, "result": {"index": 3}, "extra": "kept by next_event"},
    {"result": 1, "id": 6},
    {"id": 7, "error": {"code": "not_found", "message": "no such key"}},
    {"id": None, "error": {"code": "bad_request", "message": "bye"}},
    {"event": "tasks", "sub": 3, "data": {"task": "t1"}},
]

REFUSED: list[Any] = [
    {"id": True, "result": 1},
    {"id": "1", "result": 1},
    {"id": 1.0, "result": 1},
    {"id": None, "result": 1},
    {"result": 1},
    {"id": 1},
    {"id": 1, "result": 1, "error": {"code": "internal", "message": "x"}},
    {"id": 1, "error": "not a map"},
    {"id": 1, "error": {"code": "", "message": "x"}},
    {"id": 1, "error": {"code": "internal", "message": 3}},
    {"event": "tasks", "sub": "3", "data": {}},
    {"event": "tasks", "sub": 3, "data": []},
    {"id": 1, "result": {1: "int key"}},
    {"id": 1, "result": {"a": {2: "inner int key"}}},
    [1, 2],
    "not a map",
]


@pytest.mark.parametrize("obj", REPLIES + REFUSED)
def test_next_reply_reads_what_next_event_reads(obj: Any) -> None:
    general, fast = _read_both(_frame(obj))
    assert fast == general


def test_a_stream_of_replies_reads_the_same_and_truncation_is_refused_alike() -> None:
    data = b"".join(_frame(obj) for obj in REPLIES)
    general, fast = _read_both(data)
    assert fast == general and len(fast) == len(REPLIES) + 1
    assert fast[0] == (1, {"index": 3}) and fast[-1] == ("state", State.CLOSED)
    for cut in (1, 3, 5, len(data) - 1):
        general, fast = _read_both(data[:cut])
        assert fast == general and fast[-2][0] == "refused"  # ended inside a frame
    general, fast = _read_both(b"\x00\x00\x00\x00")  # an empty frame: refused alike
    assert fast == general and fast[0][0] == "refused"


def test_next_reply_is_a_clients_and_waits_for_whole_frames() -> None:
    with pytest.raises(ProtocolError, match="next_request"):
        ControlConnection(SERVER).next_reply()
    conn = ControlConnection(CLIENT)
    frame = _frame({"id": 9, "result": "ok"})
    conn.receive_data(frame[:4])
    assert conn.next_reply() is NEED_DATA and conn.state is State.OPEN
    conn.receive_data(frame[4:])
    assert conn.next_reply() == (9, "ok") and conn.next_reply() is NEED_DATA


_leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(
    allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(request_id=st.integers(0, 2**32), result=_values)
def test_next_reply_matches_next_event_on_hypothesis_results(request_id: int, result: Any) -> None:
    general, fast = _read_both(_frame({"id": request_id, "result": result}))
    assert fast == general
    assert fast[0] == (request_id, result)


async def test_a_start_calls_slot_is_free_in_its_callbacks_however_it_ends() -> None:
    """A reply, an error reply and a deadline each free the call's slot before its
    callbacks run (the client keeps no callback of its own on the ``Pending``): with
    every slot taken, each callback can start the next call at once."""
    import asyncio
    import os
    import shutil
    import tempfile

    from agent.control.pending import Pending
    from agent.control.server import ControlServer
    from meshtui.client import MAX_CLIENT_IN_FLIGHT, ClientError, ControlClient

    async def echo(params: dict[str, Any]) -> Any:
        return params

    async def refuse(params: dict[str, Any]) -> Any:
        raise ValueError("no")

    async def hang(params: dict[str, Any]) -> Any:
        await asyncio.sleep(60)

    directory = tempfile.mkdtemp(prefix="mt-fast-", dir="/tmp")
    srv = ControlServer(os.path.join(directory, "agent.sock"),
                        {"echo": echo, "refuse": refuse, "hang": hang}, set())
    await srv.start()
    try:
        async with await ControlClient.connect_unix(srv.path) as client:

            def follow(followers: list[Pending[Any]], done: Pending[Any]) -> None:
                followers.append(client.start("echo", {"next": True}))

            for method, timeout in (("echo", 10.0), ("refuse", 10.0), ("hang", 0.2)):
                followers: list[Pending[Any]] = []
                calls = [client.start(method, {}, timeout=timeout) for _ in range(MAX_CLIENT_IN_FLIGHT)]
                with pytest.raises(ClientError, match="busy"):
                    client.start("echo", {})
                for call in calls:
                    call.then(follow, followers)
                for call in calls:
                    await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), 10)
                ends = {type(c.exception()).__name__ if c.exception() else "ok" for c in calls}
                assert ends == ({"ok"} if method == "echo" else {"ClientError"})
                assert len(followers) == MAX_CLIENT_IN_FLIGHT
                if method != "hang":  # the server still runs the hung ones: not answered soon
                    assert [await f for f in followers] == [{"next": True}] * MAX_CLIENT_IN_FLIGHT
    finally:
        await srv.close()
        shutil.rmtree(directory, ignore_errors=True)


# -- decode_body passes msgpack only the caps that differ from its defaults (session 7)
def _explicit(body: bytes) -> Any:
    """decode_body's unpack before session 7: every option and cap spelled out."""
    size = len(body)
    return msgpack.unpackb(
        body, raw=False, use_list=True, strict_map_key=True, max_ext_len=0,
        max_str_len=size, max_bin_len=size,
        max_array_len=min(codec.MAX_ARRAY_LEN, size), max_map_len=min(codec.MAX_MAP_LEN, size // 2))


def _verdicts(body: bytes) -> tuple[Any, Any]:
    """(decode_body's, the explicit unpack's) answer: the value, or the refusal's words."""
    out = []
    for decode in (codec.decode_body, _explicit):
        try:
            value = decode(body)
            out.append(value)
        except ProtocolError as exc:  # msgpack's refusal (its words, its caps) or the codec's
            cause = exc.__cause__
            out.append(("refused", f"{type(cause).__name__}: {cause}" if cause else str(exc)))
        except Exception as exc:
            out.append(("refused", f"{type(exc).__name__}: {exc}"))
    return out[0], out[1]


def _same(body: bytes) -> None:
    ours, explicit = _verdicts(body)
    if type(explicit) is dict:  # decode_body also checks the map (check_value)
        try:
            codec.check_value(explicit)
        except ProtocolError as exc:
            explicit = ("refused", str(exc))
    elif type(explicit) is not tuple:
        explicit = ("refused", f"frame must hold a map, not {type(explicit).__name__}")
    assert ours == explicit, body[:40]


HOSTILE: list[bytes] = [
    b"\x81\xa1a\xdd\x00\x00\x00\x10",  # {"a": array claiming 16 elements} in 8 bytes
    b"\x81\xa1a\xdf\x00\x00\x00\x05",  # a map claiming 5 pairs
    b"\x81\xa1a\xdb\x00\x00\x00\x09abc",  # a str claiming 9 bytes
    b"\x81\xa1a\xc6\x00\x00\x00\x09abc",  # a bin claiming 9 bytes
    b"\x81\xa1a\xc7\x01\x05a",  # an ext
    b"\x81\xc4\x01kv",  # a bytes key
    b"\x81\x01\x02",  # an int key
    b"\x81\xa1a\xc4\x01\xff",  # a bin value
    b"\x81\xa1a\xa2\xff\xfe",  # invalid utf-8
    b"\x92\x01\x02",  # an array, not a map
    b"\x81\xa1a\x01\x02",  # extra data
]


@pytest.mark.parametrize("body", HOSTILE)
def test_decode_body_refuses_and_accepts_what_the_explicit_unpack_does(body: bytes) -> None:
    _same(body)


def test_decode_body_caps_arrays_at_max_array_len_above_it() -> None:
    """Between MAX_ARRAY_LEN and MAX_CONTAINERS bytes msgpack's default array cap
    (the body's length) is above MAX_ARRAY_LEN: that cap is still passed."""
    big = codec.MAX_ARRAY_LEN + 10
    for count in (codec.MAX_ARRAY_LEN, codec.MAX_ARRAY_LEN + 1):
        body = b"\x81\xa1a\xdd" + struct.pack(">I", count) + b"\xc0" * (big - 8)
        _same(body)
    assert codec.MAX_CONTAINERS // 2 <= codec.MAX_MAP_LEN  # maps: the default is the cap


@settings(max_examples=150, deadline=None)
@given(value=_values, junk=st.binary(max_size=6), cut=st.integers(0, 8))
def test_decode_body_matches_the_explicit_unpack_on_hypothesis_bodies(
    value: Any, junk: bytes, cut: int
) -> None:
    body: bytes = msgpack.packb({"v": value}, use_bin_type=True)
    _same(body)
    _same(body + junk)
    _same(body[: max(1, len(body) - cut)])
    _same(junk or b"\xc0")
