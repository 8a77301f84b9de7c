"""Where the control socket lives.

Kept free of asyncio and msgpack so ``meshtui`` can resolve the local socket
without paying for heavier imports.  Precedence (highest first): an explicit
``--socket`` (the caller simply does not call this), ``$MESH_SOCKET``, then
``/run/mesh-agent/agent.sock`` for root, ``$XDG_RUNTIME_DIR/mesh-agent/agent.sock``
for everyone else, and ``/tmp/mesh-agent-<uid>/agent.sock`` when
``XDG_RUNTIME_DIR`` is unset (the server checks that directory is ours).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

SOCKET_NAME: Final = "agent.sock"
ROOT_SOCKET_DIR: Final = "/run/mesh-agent"
ENV_SOCKET: Final = "MESH_SOCKET"


def default_socket_path(env: Mapping[str, str] | None = None, euid: int | None = None) -> str:
    """The control socket path when no ``--socket`` is given.

    ``env`` and ``euid`` default to the process's own; tests pass them in.
    """
    environ = os.environ if env is None else env
    uid = os.geteuid() if euid is None else euid
    override = environ.get(ENV_SOCKET, "")
    if override:
        return override
    if uid == 0:
        return os.path.join(ROOT_SOCKET_DIR, SOCKET_NAME)
    runtime_dir = environ.get("XDG_RUNTIME_DIR", "")
    if runtime_dir:
        return os.path.join(runtime_dir, "mesh-agent", SOCKET_NAME)
    return os.path.join("/tmp", f"mesh-agent-{uid}", SOCKET_NAME)
