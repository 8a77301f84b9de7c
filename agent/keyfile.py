"""Key files on disk: private to their owner, or refused.

Anyone who can read the cluster key can join the mesh and command every
agent, and anyone who can write it can swap it.  So, as ssh does with private
keys, a key file with any group or other permission bit is refused at load
with one line that says how to fix it, and every key file meshtui writes is
born 0600: created with that mode (never chmod-ed after the key is in it, which
would leave a window in which it is readable).

The mode is checked with ``fstat`` on the descriptor the key is read from, so
the file checked is the file read (no swap between a ``stat`` and an ``open``).
"""

from __future__ import annotations

import contextlib
import os
import stat

from agent.durable import sync_dir
from agent.errors import ConfigError

KEY_FILE_MODE = 0o600
"""Mode every key file is written with: owner read/write, nobody else."""

MAX_KEY_FILE = 64 * 1024
"""Bytes read from a key file at most (a key is 45): a wrong path to a huge file
fails fast instead of filling memory."""


def check_private(path: str, st: os.stat_result, field: str = "key_file") -> None:
    """``ConfigError`` if group or others have any permission on the file ``st`` describes."""
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    if mode & 0o044:
        access = "readable"
    elif mode & 0o022:
        access = "writable"
    else:
        access = "accessible"
    raise ConfigError(
        field,
        f"key file {path} is {access} by group or others (mode {mode:04o}); "
        f"run: chmod 600 {path}",
    )


def read_key_text(path: str | os.PathLike[str], field: str = "key_file") -> str:
    """The text of a key file that only its owner may access; ``ConfigError`` naming it otherwise."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(field, f"cannot read {name}: {exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(field, f"cannot read {name}: not a regular file")
        check_private(name, st, field)
        data = os.read(fd, MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(field, f"cannot read {name}: {exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE:
        raise ConfigError(field, f"cannot read {name}: larger than {MAX_KEY_FILE} bytes")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ConfigError(field, f"cannot read {name}: {exc}") from None


def write_key_file(
    path: str | os.PathLike[str], text: str, *, overwrite: bool = False, field: str = "key_file"
) -> None:
    """Write ``text`` (plus a newline) to a new file of mode 0600, synced.

    Without ``overwrite`` an existing file is refused (``O_EXCL``): a key
    generated over the cluster's key would lock every agent out.  With it the
    key goes to a fresh 0600 temp file renamed over ``path``, so readers see
    the old key or the new one, never a mix, and never a readable file.
    """
    name = os.fspath(path)
    target = f"{name}.tmp" if overwrite else name
    if overwrite:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)  # left by a crash: it may have the wrong mode
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, KEY_FILE_MODE)
    except FileExistsError:
        raise ConfigError(field, f"{name} already exists; not overwriting a key file") from None
    except OSError as exc:
        raise ConfigError(field, f"cannot create {name}: {exc.strerror}") from None
    try:
        try:
            os.write(fd, (text.strip() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(target, name)
        sync_dir(os.path.dirname(os.path.abspath(name)))
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise ConfigError(field, f"cannot write {name}: {exc.strerror}") from None

