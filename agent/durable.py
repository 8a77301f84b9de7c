"""Replacing a small file so that a crash or a power cut leaves the old one or the new one.

Every small state file the agent rewrites whole -- its node id, the PBFT
replica's stable checkpoint and group, the replica journal when it compacts,
the metrics history -- goes through :func:`replace_file`, one recipe instead
of one per module:

1. write the bytes to ``<name>.tmp`` beside the target (same directory, so the
   rename below never crosses a file system), created with the file's final
   mode so a secret is never readable for a moment;
2. ``fsync`` it: the data is on disk before any name points at it;
3. ``rename`` it over the target: readers see the old file or the new one,
   never a mix;
4. ``fsync`` the directory: the rename itself survives a power cut.  Without
   this step a file system may come back with the old name after a crash even
   though the call returned -- for a node id that means a new identity.

If a step fails the temp file is removed and the ``OSError`` propagates; the
target is untouched.  A ``.tmp`` left by a crash in mid-write is simply
overwritten by the next call.

The Raft WAL and snapshots (``agent/raft/storage.py``) keep their own code: a
snapshot is a sequence of framed records written with a rotation around it,
not one blob.  The operator's key file (``agent/keyfile.py``) keeps its own
too, because creating one must refuse to overwrite an existing key
(``O_EXCL``); it uses :func:`sync_dir` from here.
"""

from __future__ import annotations

import contextlib
import os

TMP_SUFFIX = ".tmp"
"""Suffix of the temp file written beside the target."""


def sync_dir(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a directory, so entries just created or renamed in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` durably and atomically (the module doc's recipe).

    ``mode`` is the new file's permission bits (before the umask).  Raises
    ``OSError`` with the target unchanged and no temp file left behind."""
    target = os.fspath(path)
    tmp = target + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_dir(os.path.dirname(os.path.abspath(target)))
