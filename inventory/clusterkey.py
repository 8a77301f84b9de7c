"""The cluster key deploy writes to every host, kept on the operator's machine.

Where it lives: the host's ``mesh_cluster_key_file`` variable if set (so
clusters in one inventory can have different keys), else ``<inventory>.key``
next to the inventory file.  If that file does not exist, deploy generates a
key once (``agent.crypto.generate_key``: 32 random bytes, base64) and writes
it with mode 0600, created exclusively so two deploys cannot race to
different keys.  Keep it out of version control as you would an SSH key.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.crypto import decode_key, generate_key, key_id
from agent.errors import ConfigError
from inventory.hostvars import Host
from inventory.loader import Inventory


def key_path_for(inv: Inventory, host: Host) -> str:
    if host.cluster_key_file:
        path = Path(host.cluster_key_file).expanduser()
        if not path.is_absolute():
            path = Path(inv.path).resolve().parent / path
        return str(path)
    return inv.default_key_path


def read_key(path: str) -> str:
    """The base64 key in ``path``; ``ConfigError`` if missing, malformed or world-readable."""
    try:
        info = os.stat(path)
        text = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError("mesh_cluster_key_file", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("mesh_cluster_key_file", f"{path}: cannot read: {exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            "mesh_cluster_key_file",
            f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it",
        )
    decode_key(text, field=f"mesh_cluster_key_file {path}")
    return text


def write_key(path: str, key_text: str) -> None:
    """Replace the key file atomically, mode 0600."""
    decode_key(key_text)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key_text.strip() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_key(path: str) -> str:
    if not os.path.exists(path):
        text = generate_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_key(path)
        except OSError as exc:
            raise ConfigError("mesh_cluster_key_file", f"cannot create {path}: {exc}") from None
        try:
            os.write(fd, (text + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return text
    return read_key(path)


def key_id_of(key_text: str) -> str:
    return key_id(decode_key(key_text)).hex()
