"""Control API: the sans-IO codec, the Unix-socket server and the socket path.

``codec`` and ``paths`` import no asyncio, so the CLI's fast path can use them;
the server lives in ``agent.control.server`` (import it explicitly).
"""

from agent.control.codec import (
    CLIENT,
    ERROR_CODES,
    MAX_CONTROL_FRAME,
    NEED_DATA,
    SERVER,
    ControlConnection,
    ErrorResponse,
    Event,
    Request,
    Response,
)
from agent.control.paths import default_socket_path

__all__ = [
    "CLIENT",
    "ERROR_CODES",
    "MAX_CONTROL_FRAME",
    "NEED_DATA",
    "SERVER",
    "ControlConnection",
    "ErrorResponse",
    "Event",
    "Request",
    "Response",
    "default_socket_path",
]
