"""SSH helpers shared by the tests that start a real sshd (loopback or namespaces)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin") or "/usr/sbin/sshd"
"""The OpenSSH server binary (it lives in sbin, often off a user's PATH)."""


def ssh_keygen(path: Path) -> str:
    """Make an unencrypted ed25519 key pair at ``path``; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30
    )
    return Path(f"{path}.pub").read_text().strip()


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
