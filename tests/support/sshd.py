"""A real OpenSSH sshd for the tests that need one (loopback or namespaces; root only).

``loopback_sshd`` runs ``sshd -D`` on a free 127.0.0.1 port with a fresh host
key, key-only root login and a ``known_hosts`` that trusts it; the namespace
lab (``netns.harness.NetnsLab.start_sshd``) builds its config with the same
``sshd_config``.  Callers add what their test needs (streamlocal forwarding,
SFTP) as extra config lines.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.ports import free_port
from support.wait import wait_until

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin") or "/usr/sbin/sshd"
"""The OpenSSH server binary (it lives in sbin, often off a user's PATH)."""

PRIVSEP_DIR = Path("/run/sshd")
"""sshd refuses to start without its privilege-separation directory."""

START_TIMEOUT = 10.0
"""Seconds for sshd to accept a TCP connection after it was started."""

STOP_TIMEOUT = 5.0
"""Seconds for sshd to exit after SIGTERM before it is killed."""


def ssh_keygen(path: Path) -> str:
    """Make an unencrypted ed25519 key pair at ``path``; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30
    )
    return Path(f"{path}.pub").read_text().strip()


def sshd_config(listen: str, host_key: Path, authorized_keys: Path, extra: Iterable[str] = ()) -> str:
    """An sshd_config for key-only root login on ``listen`` (``addr:port``), no PAM, no pid file.

    ``StrictModes no``: the key files live in test temp directories whose
    modes sshd would otherwise refuse.
    """
    lines = [
        f"ListenAddress {listen}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PidFile none",
        "StrictModes no",
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        *extra,
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class LoopbackSshd:
    """A running sshd on 127.0.0.1 and the files a client needs to reach it."""

    root: Path
    """Temporary directory holding keys, config and ``sshd.log`` (removed at exit)."""
    port: int
    client_key: Path
    """Private key whose public half is the only authorized key."""
    known_hosts: Path
    """A known_hosts file trusting this sshd's host key at ``[127.0.0.1]:port``."""
    config: Path

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"


@contextmanager
def loopback_sshd(
    prefix: str, extra_config: Iterable[str] = (), *, readable_by_all: bool = False
) -> Iterator[LoopbackSshd]:
    """Run sshd on a free loopback port until the block exits; its log is printed at exit.

    ``readable_by_all`` opens the directory and ``authorized_keys`` to other
    users, for a test that logs in as an unprivileged user (sshd's child for
    that user must read them).
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        host_key, client_key = root / "host_ed25519", root / "client_ed25519"
        host_pub = ssh_keygen(host_key)
        authorized = root / "authorized_keys"
        authorized.write_text(ssh_keygen(client_key) + "\n")
        if readable_by_all:
            root.chmod(0o755)
            authorized.chmod(0o644)
        port = free_port()
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
        config = root / "sshd_config"
        config.write_text(sshd_config(f"127.0.0.1:{port}", host_key, authorized, extra_config))
        sshd = LoopbackSshd(root, port, client_key, known_hosts, config)
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with sshd.log.open("w") as log:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        try:
            wait_until(
                f"sshd to accept connections on 127.0.0.1:{port}",
                lambda: _accepts(port) or _exited(proc),
                START_TIMEOUT,
                detail=sshd.log.read_text,
            )
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {proc.returncode}: {sshd.log.read_text()}")
            yield sshd
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print(sshd.log.read_text())  # shown by pytest when a test failed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None
