"""The control codec: round trips, validation, the sticky ERROR state, and hostile bytes."""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.control import codec
from agent.control.codec import (
    CLIENT,
    MAX_CONTROL_FRAME,
    MAX_DEPTH,
    NEED_DATA,
    SERVER,
    ControlConnection,
    ErrorResponse,
    Event,
    Request,
    Response,
    State,
)
from agent.errors import ProtocolError


def frame(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def receive_all(conn: ControlConnection, data: bytes) -> list[Any]:
    conn.receive_data(data)
    out = []
    while (message := conn.next_event()) is not NEED_DATA:
        out.append(message)
    return out


# ---------------------------------------------------------------- round trips
PAYLOAD = {
    "argv": ["sh", "-c", "echo hi"],
    "value": b"\x00\xff raw bytes",
    "n": -(2**63),
    "big": 2**64 - 1,
    "f": 0.25,
    "none": None,
    "flag": True,
    "nested": {"a": [{"b": [1, 2, {"c": "ü"}]}]},
}

REQUESTS = [Request(1, "status", {}), Request(2**40, "kv.put", PAYLOAD)]
SERVER_MESSAGES = [
    Response(1, {"node": "n1"}),
    Response(7, None),
    Response(8, [1, b"x", "y"]),
    ErrorResponse(3, "not_found", "no task 'abc'"),
    ErrorResponse(None, "bad_request", "protocol error: junk"),
    Event("tasks", 4, {"kind": "submitted", "task": PAYLOAD}),
    Event("overflow", 1, {"dropped": 12}),
]


@pytest.mark.parametrize("request_", REQUESTS)
def test_request_round_trip(request_: Request) -> None:
    wire = ControlConnection(CLIENT).send(request_)
    assert receive_all(ControlConnection(SERVER), wire) == [request_]


@pytest.mark.parametrize("message", SERVER_MESSAGES)
def test_server_message_round_trip(message: Any) -> None:
    wire = ControlConnection(SERVER).send(message)
    got = receive_all(ControlConnection(CLIENT), wire)
    assert got == [message]
    # bytes stay bytes, str stay str
    if isinstance(message, Event) and "task" in message.data:
        assert type(got[0].data["task"]["value"]) is bytes


def test_byte_at_a_time_and_many_frames_per_chunk() -> None:
    sender = ControlConnection(SERVER)
    wire = b"".join(sender.send(m) for m in SERVER_MESSAGES)
    receiver = ControlConnection(CLIENT)
    got: list[Any] = []
    for i in range(len(wire)):
        got += receive_all(receiver, wire[i : i + 1])
    assert got == SERVER_MESSAGES
    assert receive_all(ControlConnection(CLIENT), wire) == SERVER_MESSAGES


def test_tuples_encode_as_arrays() -> None:
    wire = ControlConnection(SERVER).send(Response(1, {"items": (("k", b"v"),)}))
    assert receive_all(ControlConnection(CLIENT), wire) == [Response(1, {"items": [["k", b"v"]]})]


def test_unknown_top_level_keys_are_ignored_for_forward_compatibility() -> None:
    data = frame({"id": 5, "method": "status", "params": {}, "deadline": 3})
    assert receive_all(ControlConnection(SERVER), data) == [Request(5, "status", {})]


# ---------------------------------------------------------------- validation
BAD_FOR_SERVER = {
    "bool id": {"id": True, "method": "status", "params": {}},
    "str id": {"id": "1", "method": "status", "params": {}},
    "no id": {"method": "status", "params": {}},
    "no method": {"id": 1, "params": {}},
    "empty method": {"id": 1, "method": "", "params": {}},
    "long method": {"id": 1, "method": "m" * 129, "params": {}},
    "int method": {"id": 1, "method": 3, "params": {}},
    "params list": {"id": 1, "method": "status", "params": []},
    "no params": {"id": 1, "method": "status"},
    "a response": {"id": 1, "result": 1},
    "not a map": [1, "status", {}],
    "a string": "status",
    "int key": {1: 2, "id": 1, "method": "x", "params": {}},
    "nested int key": {"id": 1, "method": "x", "params": {"a": {3: 4}}},
}
BAD_FOR_CLIENT = {
    "result and error": {"id": 1, "result": 1, "error": {"code": "x", "message": ""}},
    "neither": {"id": 1},
    "error not a map": {"id": 1, "error": "boom"},
    "error without code": {"id": 1, "error": {"message": "m"}},
    "error message not str": {"id": 1, "error": {"code": "internal", "message": 3}},
    "result with nil id": {"id": None, "result": 1},
    "bool response id": {"id": False, "result": 1},
    "event sub bool": {"event": "tasks", "sub": True, "data": {}},
    "event data list": {"event": "tasks", "sub": 1, "data": []},
    "event without sub": {"event": "tasks", "data": {}},
    "event empty topic": {"event": "", "sub": 1, "data": {}},
    "a request": {"id": 1, "method": "status", "params": {}},
    "empty map": {},
}


@pytest.mark.parametrize("obj", BAD_FOR_SERVER.values(), ids=BAD_FOR_SERVER.keys())
def test_server_rejects(obj: Any) -> None:
    conn = ControlConnection(SERVER)
    conn.receive_data(frame(obj))
    with pytest.raises(ProtocolError):
        conn.next_event()
    assert conn.state is State.ERROR


@pytest.mark.parametrize("obj", BAD_FOR_CLIENT.values(), ids=BAD_FOR_CLIENT.keys())
def test_client_rejects(obj: Any) -> None:
    conn = ControlConnection(CLIENT)
    conn.receive_data(frame(obj))
    with pytest.raises(ProtocolError):
        conn.next_event()
    assert conn.state is State.ERROR


RAW_BAD = {
    "zero length": raw_frame(b""),
    "too long": struct.pack(">I", MAX_CONTROL_FRAME + 1),
    "4 GiB claim": b"\xff\xff\xff\xff",
    "reserved byte": raw_frame(b"\xc1"),
    "truncated body": raw_frame(b"\x82\xa2id\x01"),
    "extra data": raw_frame(msgpack.packb({"id": 1, "method": "m", "params": {}}) + b"\xc0"),
    "ext type": raw_frame(b"\x81\xa1x\xd4\x01\x00"),
    "timestamp ext": raw_frame(b"\x81\xa1x\xd6\xff\x00\x00\x00\x00"),
    "invalid utf-8": raw_frame(b"\x81\xa1x\xa2\xff\xfe"),
}


@pytest.mark.parametrize("data", RAW_BAD.values(), ids=RAW_BAD.keys())
def test_raw_garbage_is_a_protocol_error(data: bytes) -> None:
    conn = ControlConnection(SERVER)
    conn.receive_data(data)
    with pytest.raises(ProtocolError):
        conn.next_event()


def nested(depth: int) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for _ in range(depth - 1):
        obj = {"a": obj}
    return obj


def test_depth_limit() -> None:
    # The top-level map is depth 1, params depth 2, ... MAX_DEPTH is allowed.
    ok = {"id": 1, "method": "m", "params": nested(MAX_DEPTH - 1)}
    assert receive_all(ControlConnection(SERVER), frame(ok))[0].params == nested(MAX_DEPTH - 1)
    too_deep = {"id": 1, "method": "m", "params": nested(MAX_DEPTH)}
    conn = ControlConnection(SERVER)
    conn.receive_data(frame(too_deep))
    with pytest.raises(ProtocolError, match="nesting"):
        conn.next_event()
    with pytest.raises(ProtocolError, match="nesting"):
        ControlConnection(SERVER).send(Response(1, nested(MAX_DEPTH)))


def test_container_budget() -> None:
    # 5 arrays of 65,535 empty maps: within the per-array limit, over the per-frame budget.
    body = b"\x95" + (b"\xdc\xff\xff" + b"\x80" * 0xFFFF) * 5
    conn = ControlConnection(SERVER)
    conn.receive_data(raw_frame(b"\x83\xa2id\x01\xa6method\xa1m\xa6params\x81\xa1x" + body))
    with pytest.raises(ProtocolError, match="arrays/maps"):
        conn.next_event()


# ---------------------------------------------------------------- state machine
def test_error_state_sticks() -> None:
    conn = ControlConnection(SERVER)
    conn.receive_data(raw_frame(b"\xc1"))
    with pytest.raises(ProtocolError):
        conn.next_event()
    assert conn.state is State.ERROR
    with pytest.raises(ProtocolError):
        conn.next_event()
    with pytest.raises(ProtocolError):
        conn.receive_data(frame({"id": 1, "method": "m", "params": {}}))
    with pytest.raises(ProtocolError):
        conn.send(Response(1, None))
    # exactly one farewell may still be sent, and it must be the id-less error
    farewell = conn.send(ErrorResponse(None, "bad_request", "bye"))
    assert receive_all(ControlConnection(CLIENT), farewell) == [
        ErrorResponse(None, "bad_request", "bye")
    ]
    with pytest.raises(ProtocolError):
        conn.send(ErrorResponse(None, "bad_request", "again"))
    assert conn.state is State.ERROR


def test_client_in_error_state_cannot_send_anything() -> None:
    conn = ControlConnection(CLIENT)
    conn.receive_data(frame({"id": 1}))
    with pytest.raises(ProtocolError):
        conn.next_event()
    with pytest.raises(ProtocolError):
        conn.send(Request(2, "status", {}))


def test_roles_restrict_what_may_be_sent() -> None:
    with pytest.raises(ProtocolError):
        ControlConnection(SERVER).send(Request(1, "status", {}))
    for message in SERVER_MESSAGES:
        with pytest.raises(ProtocolError):
            ControlConnection(CLIENT).send(message)


@pytest.mark.parametrize(
    "message",
    [
        Response(1, object()),
        Response(1, {1: "int key"}),
        Response(1, 2**64),
        Response(1, b"x" * (MAX_CONTROL_FRAME + 1)),
        Response(True, 1),
        Event("tasks", 1, []),  # type: ignore[arg-type]
        ErrorResponse(1, "", "empty code"),
    ],
    ids=["object", "int key", "int overflow", "too large", "bool id", "list data", "empty code"],
)
def test_unsendable_message_raises_but_does_not_poison(message: Any) -> None:
    conn = ControlConnection(SERVER)
    with pytest.raises(ProtocolError):
        conn.send(message)
    assert conn.state is State.OPEN
    assert receive_all(ControlConnection(CLIENT), conn.send(Response(2, "ok"))) == [
        Response(2, "ok")
    ]


def test_eof_on_a_boundary_closes_and_mid_frame_is_an_error() -> None:
    conn = ControlConnection(CLIENT)
    assert receive_all(conn, ControlConnection(SERVER).send(Response(1, 1))) == [Response(1, 1)]
    conn.receive_data(b"")
    assert conn.next_event() is NEED_DATA
    assert conn.state is State.CLOSED
    with pytest.raises(ProtocolError):
        conn.receive_data(b"more")

    torn = ControlConnection(CLIENT)
    torn.receive_data(ControlConnection(SERVER).send(Response(1, 1))[:-1])
    assert torn.next_event() is NEED_DATA
    torn.receive_data(b"")
    with pytest.raises(ProtocolError, match="inside a frame"):
        torn.next_event()


# ---------------------------------------------------------------- hostile bytes
# Each of these claims far more than it carries.  None may allocate by the claim.
BOMBS = {
    "array32 4G": raw_frame(b"\x81\xa1x\xdd\xff\xff\xff\xff"),
    "map32 4G": raw_frame(b"\x81\xa1x\xdf\xff\xff\xff\xff"),
    "bin32 4G": raw_frame(b"\x81\xa1x\xc6\xff\xff\xff\xff"),
    "str32 4G": raw_frame(b"\x81\xa1x\xdb\xff\xff\xff\xff"),
    "array16 then nothing": raw_frame(b"\x81\xa1x\xdc\xff\xff"),
    "deep arrays": raw_frame(b"\x91" * 100_000 + b"\xc0"),
    "deep maps": raw_frame(b"\x81\xa1a" * 50_000 + b"\xc0"),
    "frame header 4G": b"\xff\xff\xff\xff" + b"\x00" * 1000,
    "frame header 8MiB+1": struct.pack(">I", MAX_CONTROL_FRAME + 1) + b"\x00" * 1000,
}


def decode_with_peak(data: bytes, role: codec.Role) -> tuple[Exception | None, int]:
    conn = ControlConnection(role)
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    error: Exception | None = None
    try:
        conn.receive_data(data)
        while conn.next_event() is not NEED_DATA:
            pass
    except ProtocolError as exc:
        error = exc
    peak = tracemalloc.get_traced_memory()[1] - base
    return error, peak


@pytest.fixture
def traced() -> Any:
    tracemalloc.start()
    yield
    tracemalloc.stop()


@pytest.mark.parametrize("data", BOMBS.values(), ids=BOMBS.keys())
def test_bombs_are_refused_without_allocating(traced: None, data: bytes) -> None:
    for role in (SERVER, CLIENT):
        error, peak = decode_with_peak(data, role)
        assert isinstance(error, ProtocolError)
        # The input itself is up to ~150 KB; decoding may copy it a few times,
        # never anything near the gigabytes claimed.
        assert peak < 8 * len(data) + 256 * 1024, f"peak {peak} bytes for {len(data)} input"


def fuzz_budget(size: int) -> int:
    """Peak bytes decoding ``size`` input bytes may allocate.

    The worst amplification is many tiny containers or short strings (~60-100
    Python bytes per input byte); the container budget and frame cap bound
    the absolute figure.  A claim-driven allocation would be gigabytes.
    """
    return 160 * size + 256 * 1024


frames = st.binary(max_size=2048).map(raw_frame)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
structured = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers(-(2**63), 2**64 - 1) | st.none() | st.text(max_size=3) | st.booleans(),
        "method": st.text(max_size=10) | st.integers(-1000, 1000),
        "params": msgpack_values,
        "result": msgpack_values,
        "error": msgpack_values,
        "event": st.text(max_size=10),
        "sub": st.integers(min_value=-5, max_value=5) | st.booleans(),
        "data": msgpack_values,
    },
).map(frame)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(structured))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.one_of(st.binary(max_size=4096), frames, structured, mutated()))
def test_fuzzed_bytes_only_raise_protocol_error_within_budget(traced: None, data: bytes) -> None:
    for role in (SERVER, CLIENT):
        conn = ControlConnection(role)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            conn.receive_data(data)
            while (message := conn.next_event()) is not NEED_DATA:
                assert isinstance(message, Request | Response | ErrorResponse | Event)
            conn.receive_data(b"")
            conn.next_event()
        except ProtocolError:
            assert conn.state is State.ERROR
        peak = tracemalloc.get_traced_memory()[1] - base
        assert peak < fuzz_budget(len(data)), f"peak {peak} for {len(data)} bytes"


@settings(max_examples=200, deadline=None)
@given(
    params=st.dictionaries(st.text(max_size=8), msgpack_values, max_size=5),
    ident=st.integers(0, 2**63),
)
def test_any_plain_value_round_trips(params: dict[str, Any], ident: int) -> None:
    sent = Request(ident, "kv.put", params)
    got = receive_all(ControlConnection(SERVER), ControlConnection(CLIENT).send(sent))
    # NaN != NaN: compare the packed forms instead of the objects
    assert len(got) == 1
    assert msgpack.packb(got[0].params) == msgpack.packb(params)
    assert got[0].id == ident


def test_send_response_is_send_of_a_response() -> None:
    conn = ControlConnection(SERVER)
    for result in ({"index": 7}, None, [1, {"a": b"x"}], "text"):
        assert conn.send_response(3, result) == conn.send(Response(3, result))
    with pytest.raises(ProtocolError):
        conn.send_response(True, {})  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        conn.send_response(1, {1: "int key"})


def test_many_frames_in_one_read_then_a_split_frame() -> None:
    client, server = ControlConnection(CLIENT), ControlConnection(SERVER)
    frames = b"".join(client.send(Request(i, "m", {"n": i})) for i in range(50))
    server.receive_data(frames + frames[:7])
    got = []
    while (message := server.next_event()) is not NEED_DATA:
        got.append(message)
    assert [m.id for m in got] == list(range(50)) and server.buffered == 7
    server.receive_data(frames[7 : len(frames) // 50])
    message = server.next_event()
    assert isinstance(message, Request) and message.id == 0 and server.buffered == 0


def test_send_request_is_send_of_a_request() -> None:
    conn = ControlConnection(CLIENT)
    assert conn.send_request(4, "kv.put", {"k": b"v"}) == conn.send(Request(4, "kv.put", {"k": b"v"}))
    for bad in ((True, "m", {}), (1, "", {}), (1, "m" * 129, {}), (1, "m", [])):
        with pytest.raises(ProtocolError):
            conn.send_request(*bad)  # type: ignore[arg-type]
