"""Blocking one-shot control calls and the client error type (no asyncio).

``call_sync(path, method, params, timeout)`` sends one request over a blocking
Unix socket.  Scriptable ``meshtui`` commands use only this module, so they
never import asyncio, textual, asyncssh or zeroconf and start fast.
``meshtui.client`` (the asyncio client) re-exports everything here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any, Final

from agent.control.codec import (
    CLIENT,
    NEED_DATA,
    ControlConnection,
    ErrorResponse,
    Request,
    Response,
    State,
)
from agent.errors import MeshError, ProtocolError

DEFAULT_CALL_TIMEOUT: Final = 10.0
"""Seconds ``call`` waits for a reply."""
CONNECT_TIMEOUT: Final = 5.0
"""Seconds ``connect_unix`` waits for the socket."""
MAX_CLIENT_IN_FLIGHT: Final = 64
"""Calls one client has outstanding at once (matches the server's bound)."""
SUBSCRIPTION_QUEUE: Final = 10_000
"""Events buffered per subscription before the oldest are dropped."""
READ_CHUNK: Final = 64 * 1024

EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_QUORUM: Final = 3
EXIT_CONNECT: Final = 4
EXIT_DISK_FULL: Final = 5

_EXIT_CODES: Final[Mapping[str, int]] = {
    "not_found": EXIT_NOT_FOUND,
    "bad_request": EXIT_USAGE,
    "no_quorum": EXIT_NO_QUORUM,
    # A follower that cannot reach the leader is, to a script, the same as no quorum.
    "not_leader": EXIT_NO_QUORUM,
    "unavailable": EXIT_CONNECT,
    "timeout": EXIT_CONNECT,
    "internal": EXIT_NOT_FOUND,
    # A node's disk is full and no healthy majority could take the write instead.
    "disk_full": EXIT_DISK_FULL,
}


class ClientError(MeshError):
    """An error reply (``code`` from docs/internals.md section 4) or a transport failure.

    Client-side codes besides the server's: ``timeout`` (no reply in time) and
    ``unavailable`` (cannot connect, or the connection was lost).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def exit_code(self) -> int:
        """The ``meshtui`` exit status for this error (1 for codes it does not know)."""
        return _EXIT_CODES.get(self.code, EXIT_NOT_FOUND)


class ConnectionLost(ClientError):
    """The agent closed the connection (or sent bytes we cannot parse)."""

    def __init__(self, message: str = "connection to the agent was lost") -> None:
        super().__init__("unavailable", message)


def _connect_failure(path: str, exc: OSError) -> ClientError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        hint = "no agent is running there"
    elif isinstance(exc, PermissionError):
        hint = "permission denied (is your user in the socket's group?)"
    else:
        hint = reason
    return ClientError("unavailable", f"cannot connect to {path}: {hint} ({reason})")


# ---------------------------------------------------------------- sync one-shot
def call_sync(
    target_path: str, method: str, params: Mapping[str, Any], timeout: float = DEFAULT_CALL_TIMEOUT
) -> Any:
    """One request over a blocking Unix socket; returns the result or raises ``ClientError``."""
    deadline = time.monotonic() + timeout
    conn = ControlConnection(CLIENT)
    try:
        frame = conn.send(Request(1, method, dict(params)))
    except ProtocolError as exc:
        raise ClientError("bad_request", str(exc)) from exc
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(target_path)
        except TimeoutError as exc:
            raise ClientError("timeout", f"connecting to {target_path} timed out") from exc
        except OSError as exc:
            raise _connect_failure(target_path, exc) from exc
        try:
            sock.sendall(frame)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                conn.receive_data(sock.recv(READ_CHUNK))
                while (message := conn.next_event()) is not NEED_DATA:
                    if isinstance(message, Response) and message.id == 1:
                        return message.result
                    if isinstance(message, ErrorResponse) and message.id in (1, None):
                        raise ClientError(message.code, message.message)
                if conn.state is State.CLOSED:
                    raise ConnectionLost(f"{target_path} closed the connection before replying")
        except TimeoutError as exc:
            raise ClientError("timeout", f"{method}: no reply within {timeout:g}s") from exc
        except ProtocolError as exc:
            raise ConnectionLost(f"bad reply from {target_path}: {exc}") from exc
        except OSError as exc:
            raise ConnectionLost(f"{target_path}: {exc}") from exc
