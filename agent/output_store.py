"""Where task output lives on disk: one layout, one set of checks, for every copy.

``<root>/<task id>/<epoch>.<stream>`` -- the executor's captures (root
``<data_dir>/tasks``) and the replicas other hosts push here (root
``<data_dir>/replicas``) use the same layout and the same rules, so a task id
that one accepts the other accepts too.  A task id is a safe file name
(``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``: no ``/``, no leading dot), a stream is
``out`` or ``err``; anything else is a ``TaskError`` naming it, before any path
is built.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from agent.errors import TaskError

Stream = Literal["out", "err"]
STREAMS: tuple[Stream, ...] = ("out", "err")

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_task_id(task_id: str) -> None:
    """``TaskError`` unless ``task_id`` is usable as one directory name."""
    if not _SAFE_ID.match(task_id):
        raise TaskError(f"invalid task id {task_id!r}")


def check_stream(stream: str) -> Stream:
    if stream not in STREAMS:
        raise TaskError(f"unknown stream {stream!r} (out or err)")
    return stream  # type: ignore[return-value]


class OutputStore:
    """Output files below one root directory (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def task_dir(self, task_id: str) -> Path:
        check_task_id(task_id)
        return self.root / task_id

    def path(self, task_id: str, epoch: int, stream: str) -> Path:
        return self.task_dir(task_id) / f"{int(epoch)}.{check_stream(stream)}"

    def read(self, task_id: str, epoch: int, stream: str, offset: int, limit: int) -> tuple[bytes, int, int]:
        """``(data, new offset, file size)`` from ``offset``; ``FileNotFoundError`` if
        there is no such output here."""
        path = self.path(task_id, epoch, stream)
        offset = max(0, offset)
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(offset)
            data = handle.read(max(0, limit))
        return data, offset + len(data), size

    def write_at(self, task_id: str, epoch: int, stream: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` (a replica's chunk), creating the file 0600."""
        path = self.path(task_id, epoch, stream)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, max(0, offset))
        finally:
            os.close(fd)


# ---------------------------------------------------------------- artifacts

MAX_ARTIFACT_NAME = 200
"""Characters of an artifact path (relative to the task's working directory)."""


def artifact_refusal(name: str) -> str | None:
    """Why ``name`` cannot name an artifact (one line), or None if it can.

    An artifact is a relative path below the task's working directory: not
    empty, not absolute, no ``..`` or ``.`` component, no empty component, no
    NUL or control character, at most ``MAX_ARTIFACT_NAME`` characters.  (A
    symbolic link on the way is refused when the file is read: ``O_NOFOLLOW``.)
    """
    if not name or len(name) > MAX_ARTIFACT_NAME:
        return f"artifact path must be 1-{MAX_ARTIFACT_NAME} characters"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return f"artifact {name!r}: control characters are not allowed"
    if name.startswith("/"):
        return f"artifact {name!r} is absolute; give a path inside the task's working directory"
    parts = name.split("/")
    if ".." in parts:
        return f"artifact {name!r} leaves the task's working directory"
    if any(part in ("", ".") for part in parts):
        return f"artifact {name!r}: empty or '.' path component"
    return None


def item_file(name: str) -> str:
    """The file name that holds replicated item ``name`` below ``<task>/``'s epoch
    directory: ``out``/``err`` as themselves, an artifact ``a:<path>`` with its
    path quoted (``/`` -> ``%2F``), so every artifact is one flat file."""
    if name in STREAMS:
        return name
    if not name.startswith("a:") or artifact_refusal(name[2:]) is not None:
        raise TaskError(f"invalid replica item {name!r}")
    return "a_" + quote(name[2:], safe="")
