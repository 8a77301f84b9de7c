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

from agent.control.values import (  # noqa: F401  (re-exported: codec's names as before)
    _SCALARS,
    MAX_DEPTH,
    MAX_NAME_LEN,
    _check_iteratively,
    _check_name,
    _check_nested,
    _flat,
    _is_int,
    check_value,
)
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
# MAX_DEPTH (deepest nesting) and MAX_NAME_LEN (longest method, topic or error
# code): agent/control/values.py, with the checks that use them.

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
        usual = self._usual_request()
        if usual is not None:
            return usual
        try:
            obj = self._next_body()
            if obj is None:
                return NEED_DATA
            return _request_fields(obj)
        except ProtocolError:
            self.state = State.ERROR
            raise

    def _usual_request(self) -> tuple[int, str, dict[str, Any]] | None:
        """The next request's fields if it is the usual one -- a whole small frame
        holding exactly ``{"id": int, "method": str, "params": {str: scalar}}``
        -- consumed; else None, with nothing consumed, and ``next_request`` takes
        its general path (which decodes it again and says what is wrong, if
        anything).  One call instead of four (``_next_body``, ``decode_body``,
        ``_flat``, ``_request_fields``) for every request of a leader's write
        burst; such a map passes every check those make: its three keys are the
        str ones named, its values scalars or one map of str keys and scalars (a
        depth of 2), and the decode is ``decode_body``'s for a frame this small."""
        found = self._small_frame()
        if found is None:
            return None
        obj, end = found
        if len(obj) != 3:
            return None
        params, req_id, method = obj.get("params"), obj.get("id"), obj.get("method")
        if (
            type(params) is not dict
            or type(req_id) is not int
            or type(method) is not str
            or not 0 < len(method) <= MAX_NAME_LEN
        ):
            return None
        for key, value in params.items():
            if type(key) is not str or type(value) not in _SCALARS:
                return None
        if end == len(self._buffer):  # consumed (inline: once per request or reply)
            self._buffer.clear()
            self._pos = 0
        else:
            self._pos = end
        return req_id, method, params

    def _usual_reply(self) -> tuple[int, Any] | None:
        """``_usual_request``'s twin for a client: the next reply's ``(id, result)``
        if it is exactly ``{"id": int, "result": scalar or {str: scalar}}`` in a
        whole small frame, consumed; else None, nothing consumed (``next_reply``'s
        general path).  Such a map passes ``decode_body``'s checks (``_flat``)."""
        found = self._small_frame()
        if found is None:
            return None
        obj, end = found
        msg_id = obj.get("id")
        if len(obj) != 2 or type(msg_id) is not int or "result" not in obj:
            return None
        result = obj["result"]
        if type(result) is dict:
            for key, value in result.items():
                if type(key) is not str or type(value) not in _SCALARS:
                    return None
        elif type(result) not in _SCALARS:
            return None
        if end == len(self._buffer):  # consumed (inline: once per request or reply)
            self._buffer.clear()
            self._pos = 0
        else:
            self._pos = end
        return msg_id, result

    def _small_frame(self) -> tuple[dict[Any, Any], int] | None:
        """The next frame's map and where it ends, if a whole frame of at most
        ``SMALL_FRAME`` bytes is buffered and decodes (as ``decode_body`` would) to a
        map; else None.  Consumes nothing."""
        buf, pos = self._buffer, self._pos
        if len(buf) - pos < FRAME_HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(buf, pos)
        start = pos + FRAME_HEADER_SIZE
        end = start + length
        if not 0 < length <= SMALL_FRAME or len(buf) < end:
            return None
        try:
            obj = msgpack.unpackb(buf[start:end], max_ext_len=0)
        except Exception:  # the general path decodes it again and words the refusal
            return None
        return (obj, end) if type(obj) is dict else None

    def next_reply(self) -> tuple[int, Any] | ErrorResponse | Event | Literal[_Sentinel.NEED_DATA]:
        """A client's ``next_event`` without building a ``Response``: its
        ``(id, result)``; an error or event as ``next_event`` gives it (the same
        checks and errors), or ``NEED_DATA`` -- the hot path, one call per reply."""
        if self.role is not Role.CLIENT:
            raise ProtocolError("a server reads requests (next_request)")
        if self.state is State.ERROR:
            raise ProtocolError("connection is in the ERROR state")  # as next_event
        usual = self._usual_reply()
        if usual is not None:
            return usual
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
                if len(body) <= MAX_CONTROL_FRAME:  # frame(), inline: once per reply
                    return _HEADER.pack(len(body)) + body
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
            if len(body) <= MAX_CONTROL_FRAME:  # frame(), inline: once per request
                return _HEADER.pack(len(body)) + body
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
