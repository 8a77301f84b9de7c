"""Socket path precedence, client error codes, and the client's import weight."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.control.paths import default_socket_path
from meshtui.client import ClientError, ConnectionLost

PATH_TABLE = [
    # (env, euid, expected)
    ({}, 0, "/run/mesh-agent/agent.sock"),
    ({"XDG_RUNTIME_DIR": "/run/user/1000"}, 0, "/run/mesh-agent/agent.sock"),
    ({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/user/1000/mesh-agent/agent.sock"),
    ({}, 1000, "/tmp/mesh-agent-1000/agent.sock"),
    ({"XDG_RUNTIME_DIR": ""}, 1001, "/tmp/mesh-agent-1001/agent.sock"),
    ({"MESH_SOCKET": "/x/a.sock", "XDG_RUNTIME_DIR": "/run/user/1"}, 1, "/x/a.sock"),
    ({"MESH_SOCKET": "/x/a.sock"}, 0, "/x/a.sock"),
    ({"MESH_SOCKET": ""}, 0, "/run/mesh-agent/agent.sock"),
]


@pytest.mark.parametrize(("env", "euid", "expected"), PATH_TABLE)
def test_default_socket_path(env: dict[str, str], euid: int, expected: str) -> None:
    assert default_socket_path(env, euid) == expected


EXIT_TABLE = [
    ("not_found", 1),
    ("internal", 1),
    ("bad_request", 2),
    ("no_quorum", 3),
    ("not_leader", 3),
    ("unavailable", 4),
    ("timeout", 4),
    ("something_new", 1),
]


@pytest.mark.parametrize(("code", "exit_code"), EXIT_TABLE)
def test_exit_codes(code: str, exit_code: int) -> None:
    error = ClientError(code, "m")
    assert error.exit_code == exit_code
    assert (error.code, error.message) == (code, "m")


def test_connection_lost_is_an_unavailable_client_error() -> None:
    lost = ConnectionLost()
    assert isinstance(lost, ClientError)
    assert (lost.code, lost.exit_code) == ("unavailable", 4)


def test_client_and_paths_import_no_heavy_modules() -> None:
    code = (
        "import sys, meshtui.client, agent.control.paths;"
        "heavy = [m for m in ('textual', 'asyncssh', 'zeroconf') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_paths_import_no_asyncio() -> None:
    code = "import sys, agent.control.paths; print('asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
