"""Control API codec: length-prefixed msgpack frames, sans-IO (h11-style).

Theory of operation
-------------------
The control socket carries a stream of *frames*: a 4-byte big-endian length,
then that many bytes holding one msgpack map.  A ``ControlConnection`` is a
pure state machine for one end of such a stream.  It never touches a socket:

* ``receive_data(data)`` appends bytes the caller read (``b""`` means EOF);
* ``next_event()`` returns the next complete message as a frozen dataclass
  (``Request``, ``Response``, ``ErrorResponse`` or ``Event``) or ``NEED_DATA``;
* ``send(message)`` returns the bytes to write for one outgoing message.

Roles decide direction: a ``SERVER`` receives requests and sends responses,
errors and events; a ``CLIENT`` the reverse.  Anything else on the wire is a
protocol violation and raises ``ProtocolError`` -- the only exception this
module raises.  A violation on the receiving side is sticky (state ``ERROR``):
the byte stream can no longer be trusted, so every later call raises too,
except that a server may still ``send`` one ``ErrorResponse`` with ``id=None``
to tell the peer why it is being disconnected.  A message we cannot encode
(unsupported type, too large) raises ``ProtocolError`` from ``send`` without
changing state: nothing was emitted, so the stream is still intact.

Bounds: the length prefix is checked against ``MAX_CONTROL_FRAME`` before a
single byte of the body is buffered, and the body is decoded with msgpack's
``max_*_len`` limits (each capped by the frame length, so a header claiming
four billion elements is refused before any allocation).  A container budget
(``MAX_CONTAINERS``) caps the number of lists and maps per frame and a depth
walk caps nesting (``MAX_DEPTH``).  Callers must drain ``next_event`` after
each ``receive_data`` so the buffer stays within one frame plus one read.
"""

from __future__ import annotations

import enum
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import msgpack

from agent.errors import ProtocolError
from agent.framing import FRAME_HEADER_SIZE, body_length, frame

# ---------------------------------------------------------------- limits
MAX_CONTROL_FRAME: Final = 8 * 1024 * 1024
"""Largest frame body in bytes (both directions)."""
MAX_STR_LEN: Final = MAX_CONTROL_FRAME
"""Longest msgpack str, in bytes."""
MAX_BIN_LEN: Final = MAX_CONTROL_FRAME
"""Longest msgpack bin, in bytes (task output chunks, KV values)."""
MAX_ARRAY_LEN: Final = 131_072
"""Most elements in one array."""
MAX_MAP_LEN: Final = 131_072
"""Most pairs in one map."""
MAX_CONTAINERS: Final = 262_144
"""Most arrays + maps in one frame: bounds the per-byte allocation blow-up."""
MAX_DEPTH: Final = 32
"""Deepest nesting of containers; the top-level map is depth 1."""
MAX_NAME_LEN: Final = 128
"""Longest method, event topic or error code."""

_HEADER: Final = struct.Struct(">I")
"""``agent.framing``'s header (4-byte big-endian body length), read inline on the
hot path; ``body_length`` still words every refusal."""

SMALL_FRAME: Final = 64 * 1024
"""Frames up to this size are copied out of the buffer (cheaper than a memoryview)."""

ERROR_CODES: Final = frozenset(
    {"bad_request", "not_found", "no_quorum", "not_leader", "internal", "unavailable", "disk_full"}
)
"""Error codes a server sends (docs/internals.md section 4)."""


# ---------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class Request:
    """``{"id": int, "method": str, "params": map}`` -- client to server."""

    id: int
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    """``{"id": int, "result": any}`` -- server to client."""

    id: int
    result: Any


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """``{"id": int|nil, "error": {"code", "message"}}``.

    ``id`` is ``None`` only for a connection-level error (the server could not
    parse the request, so it has no id to answer); the server then hangs up.
    """

    id: int | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Event:
    """``{"event": topic, "sub": int, "data": map}`` -- pushed after ``subscribe``."""

    event: str
    sub: int
    data: dict[str, Any]


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event()`` needs more bytes before it can return a message."""

Message: TypeAlias = Request | Response | ErrorResponse | Event
NextEvent: TypeAlias = Message | Literal[_Sentinel.NEED_DATA]


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"  # the peer sent EOF on a frame boundary
    ERROR = "error"


SERVER: Final = Role.SERVER
CLIENT: Final = Role.CLIENT


# ---------------------------------------------------------------- value checks
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


def decode_body(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode one frame body to a map, enforcing every named limit."""
    size = len(body)
    try:
        if size <= MAX_CONTAINERS:
            # Every array or map takes at least one byte, so a frame this small
            # cannot exceed the container budget: skip the per-container hook
            # (a Python call per map, most of the decode time of a request).
            # msgpack's unpackb (>= 1.0) already reads str (raw=False), lists and
            # str or bytes keys only (strict_map_key), and caps every str, bin and array at
            # the body's length and every map at half of it -- min(MAX_*, size)
            # here, since MAX_STR_LEN and MAX_BIN_LEN are larger and size // 2 <=
            # MAX_MAP_LEN -- so only the other caps are passed: each keyword costs
            # (about 0.4 us a frame for the seven left out).
            if size <= MAX_ARRAY_LEN:
                obj = msgpack.unpackb(body, max_ext_len=0)
            else:
                obj = msgpack.unpackb(body, max_ext_len=0, max_array_len=MAX_ARRAY_LEN)
        else:
            obj = _unpack_counted(body, size)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types; the boundary has one
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from exc
    if type(obj) is not dict:
        raise ProtocolError(f"frame must hold a map, not {type(obj).__name__}")
    if not _flat(obj):  # check_value's own first test, without a call to reach it
        check_value(obj)
    return obj


def _unpack_counted(body: bytes | bytearray | memoryview, size: int) -> Any:
    budget = [MAX_CONTAINERS]

    def count_container(obj: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise ProtocolError(f"more than {MAX_CONTAINERS} arrays/maps in one frame")
        return obj

    return msgpack.unpackb(
        body,
        raw=False,
        use_list=True,
        strict_map_key=True,
        max_ext_len=0,
        max_str_len=min(MAX_STR_LEN, size),
        max_bin_len=min(MAX_BIN_LEN, size),
        max_array_len=min(MAX_ARRAY_LEN, size),
        max_map_len=min(MAX_MAP_LEN, size // 2),
        list_hook=count_container,
        object_hook=count_container,
    )


_PACKER: Final = msgpack.Packer(use_bin_type=True)
_PACKER_THREAD: Final = threading.get_ident()


def _pack(obj: Any) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True)``: on the thread that imported this
    module (the event loop's) through one kept ``Packer``, sparing the Packer
    ``packb`` builds per call (~0.4 us, on every request and reply); a Packer
    resets its buffer when a pack fails.  Other threads pack on their own."""
    if threading.get_ident() == _PACKER_THREAD:
        data: bytes = _PACKER.pack(obj)
        return data
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def encode_frame(obj: Mapping[str, Any]) -> bytes:
    """Length prefix + msgpack body for one map; ``ProtocolError`` if it cannot be sent."""
    check_value(obj)
    try:
        body: bytes = _pack(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode message: {exc}") from exc
    return frame(body, MAX_CONTROL_FRAME)


def _to_wire(message: Message) -> dict[str, Any]:
    if isinstance(message, Request):
        return {"id": message.id, "method": message.method, "params": message.params}
    if isinstance(message, Response):
        return {"id": message.id, "result": message.result}
    if isinstance(message, ErrorResponse):
        return {"id": message.id, "error": {"code": message.code, "message": message.message}}
    return {"event": message.event, "sub": message.sub, "data": message.data}


def _validate_outgoing(message: Message) -> None:
    """Send-side checks mirror the receive side so we never emit what a peer must refuse."""
    if isinstance(message, Request):
        if not _is_int(message.id):
            raise ProtocolError("request id must be an int")
        _check_name("method", message.method)
        if not isinstance(message.params, dict):
            raise ProtocolError("params must be a map")
    elif isinstance(message, Response):
        if not _is_int(message.id):
            raise ProtocolError("response id must be an int")
    elif isinstance(message, ErrorResponse):
        if message.id is not None and not _is_int(message.id):
            raise ProtocolError("error id must be an int or None")
        _check_name("error code", message.code)
        if not isinstance(message.message, str):
            raise ProtocolError("error message must be a str")
    elif isinstance(message, Event):
        _check_name("event", message.event)
        if not _is_int(message.sub):
            raise ProtocolError("event sub must be an int")
        if not isinstance(message.data, dict):
            raise ProtocolError("event data must be a map")
    else:
        raise ProtocolError(f"not a control message: {type(message).__name__}")


def _parse_request(obj: dict[str, Any]) -> Request:
    return Request(*_request_fields(obj))


def _request_fields(obj: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    if "method" not in obj:
        raise ProtocolError("request without method")
    req_id, method, params = obj.get("id"), obj["method"], obj.get("params")
    if type(req_id) is not int:  # _is_int, inline: once per request
        raise ProtocolError("request id must be an int")
    if type(method) is not str or not 0 < len(method) <= MAX_NAME_LEN:
        _check_name("method", method)
    if not isinstance(params, dict):
        raise ProtocolError("request params must be a map")
    return req_id, method, params


def _parse_to_client(obj: dict[str, Any]) -> Response | ErrorResponse | Event:
    if "event" in obj:
        topic, sub, data = obj["event"], obj.get("sub"), obj.get("data")
        _check_name("event", topic)
        if not _is_int(sub):
            raise ProtocolError("event sub must be an int")
        if not isinstance(data, dict):
            raise ProtocolError("event data must be a map")
        assert isinstance(sub, int)
        return Event(topic, sub, data)
    if "id" not in obj:
        raise ProtocolError("message is neither a response nor an event")
    msg_id = obj["id"]
    has_result, has_error = "result" in obj, "error" in obj
    if has_result == has_error:
        raise ProtocolError("response needs exactly one of result and error")
    if has_result:
        if type(msg_id) is not int:  # _is_int, inline: once per reply
            raise ProtocolError("response id must be an int")
        return Response(msg_id, obj["result"])
    if msg_id is not None and not _is_int(msg_id):
        raise ProtocolError("error id must be an int or nil")
    error = obj["error"]
    if not isinstance(error, dict):
        raise ProtocolError("error must be a map")
    code, text = error.get("code"), error.get("message")
    _check_name("error code", code)
    if not isinstance(text, str):
        raise ProtocolError("error message must be a str")
    assert isinstance(code, str)
    return ErrorResponse(msg_id, code, text)


# ---------------------------------------------------------------- connection
class ControlConnection:
    """One end of a control stream; see the module docstring."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.OPEN
        self._buffer = bytearray()
        self._pos = 0  # start of the first unconsumed byte in _buffer
        self._eof = False
        self._farewell_sent = False

    # -- receiving
    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the stream; ``b""`` marks end of stream."""
        if self.state is State.ERROR:
            raise ProtocolError("connection is in the ERROR state")
        if self._eof and data:
            raise ProtocolError("data after end of stream")
        if not data:
            self._eof = True
            return
        if self._pos:
            # Drop consumed frames once per read, not once per frame.
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_event(self) -> NextEvent:
        """The next complete message, or ``NEED_DATA``.

        At end of stream on a frame boundary the state becomes ``CLOSED`` and
        ``NEED_DATA`` keeps being returned; end of stream mid-frame is an error.
        """
        if self.state is State.ERROR:
            raise ProtocolError("connection is in the ERROR state")
        try:
            return self._next_event()
        except ProtocolError:
            self.state = State.ERROR
            raise

    def _next_event(self) -> NextEvent:
        obj = self._next_body()
        if obj is None:
            return NEED_DATA
        if self.role is Role.SERVER:
            return _parse_request(obj)
        return _parse_to_client(obj)

    def _next_body(self) -> dict[str, Any] | None:
        """The next complete frame's map, or None (``_starved``: more bytes needed)."""
        buf, pos = self._buffer, self._pos
        if len(buf) - pos < FRAME_HEADER_SIZE:
            self._starved()
            return None
        (length,) = _HEADER.unpack_from(buf, pos)
        if not 0 < length <= MAX_CONTROL_FRAME:
            body_length(buf, pos, MAX_CONTROL_FRAME, min_frame=1)  # raises, saying why
        start = pos + FRAME_HEADER_SIZE
        end = start + length
        if len(buf) < end:
            self._starved()
            return None
        if length <= SMALL_FRAME:
            obj = decode_body(buf[start:end])  # msgpack reads the bytearray copy as is
        else:
            # Decode in place: a memoryview avoids copying a frame of up to 8 MiB.
            with memoryview(buf) as view, view[start:end] as body:
                obj = decode_body(body)
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return obj

    def next_request(self) -> tuple[int, str, dict[str, Any]] | Literal[_Sentinel.NEED_DATA]:
        """A server's ``next_event`` without building the ``Request``: its
        ``(id, method, params)`` (the same checks and errors), or ``NEED_DATA``
        -- the hot path, one call per request."""
        if self.role is not Role.SERVER:
            raise ProtocolError("a client reads replies (next_reply)")
        if self.state is State.ERROR:
            raise ProtocolError("connection is in the ERROR state")  # as next_event
        try:
            obj = self._next_body()
            if obj is None:
                return NEED_DATA
            return _request_fields(obj)
        except ProtocolError:
            self.state = State.ERROR
            raise

    def next_reply(self) -> tuple[int, Any] | ErrorResponse | Event | Literal[_Sentinel.NEED_DATA]:
        """A client's ``next_event`` without building a ``Response``: its
        ``(id, result)``; an error or event as ``next_event`` gives it (the same
        checks and errors), or ``NEED_DATA`` -- the hot path, one call per reply."""
        if self.role is not Role.CLIENT:
            raise ProtocolError("a server reads requests (next_request)")
        if self.state is State.ERROR:
            raise ProtocolError("connection is in the ERROR state")  # as next_event
        try:
            obj = self._next_body()
            if obj is None:
                return NEED_DATA
            # {"id": int, "result": ...} and nothing else: the usual reply.
            if len(obj) == 2 and "result" in obj and type(msg_id := obj.get("id")) is int:
                return msg_id, obj["result"]
            message = _parse_to_client(obj)
        except ProtocolError:
            self.state = State.ERROR
            raise
        if isinstance(message, Response):
            return message.id, message.result
        return message

    def _starved(self) -> NextEvent:
        if self._eof:
            if self.buffered:
                raise ProtocolError(f"stream ended inside a frame ({self.buffered} bytes)")
            self.state = State.CLOSED
        return NEED_DATA

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buffer) - self._pos

    # -- sending
    def send_response(self, request_id: int, result: Any) -> bytes:
        """``send(Response(request_id, result))`` without building the message:
        a server's hot path, one call per reply."""
        if self.state is State.ERROR or self.role is not Role.SERVER or not _is_int(request_id):
            return self.send(Response(request_id, result))  # raises the usual error
        if type(result) is dict:
            for key, child in result.items():
                if type(key) is not str or type(child) not in _SCALARS:
                    break
            else:
                # str keys and scalars ({"index": i}) pass check_value: packed at once
                try:
                    body: bytes = _pack({"id": request_id, "result": result})
                except (TypeError, ValueError, OverflowError) as exc:
                    raise ProtocolError(f"cannot encode message: {exc}") from exc
                return frame(body, MAX_CONTROL_FRAME)
        return encode_frame({"id": request_id, "result": result})

    def send_request(self, request_id: int, method: str, params: dict[str, Any]) -> bytes:
        """``send(Request(request_id, method, params))`` without building the
        message: a client's hot path, one call per request."""
        if (
            self.state is State.ERROR
            or self.role is not Role.CLIENT
            or not _is_int(request_id)
            or type(params) is not dict
            or type(method) is not str
            or not 0 < len(method) <= MAX_NAME_LEN
        ):
            return self.send(Request(request_id, method, params))  # raises the usual error
        for key, child in params.items():
            if type(key) is not str or type(child) not in _SCALARS:
                break
        else:
            # Params of str keys and scalars: the request passes check_value (as
            # _flat would say), so it is packed at once (send_response's twin).
            try:
                body: bytes = _pack({"id": request_id, "method": method, "params": params})
            except (TypeError, ValueError, OverflowError) as exc:
                raise ProtocolError(f"cannot encode message: {exc}") from exc
            return frame(body, MAX_CONTROL_FRAME)
        return encode_frame({"id": request_id, "method": method, "params": params})

    def send(self, message: Message) -> bytes:
        """The bytes to write for ``message``; ``ProtocolError`` if it may not be sent."""
        if self.state is State.ERROR:
            farewell = (
                self.role is Role.SERVER
                and isinstance(message, ErrorResponse)
                and message.id is None
                and not self._farewell_sent
            )
            if not farewell:
                raise ProtocolError("connection is in the ERROR state")
            self._farewell_sent = True
        allowed: tuple[type, ...] = (
            (Response, ErrorResponse, Event) if self.role is Role.SERVER else (Request,)
        )
        if not isinstance(message, allowed):
            raise ProtocolError(f"a {self.role.value} may not send {type(message).__name__}")
        _validate_outgoing(message)
        return encode_frame(_to_wire(message))
