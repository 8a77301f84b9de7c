"""One process per data dir: an exclusive ``flock`` on ``<data_dir>/LOCK``.

Why: two agents on one data dir both append to the same WAL and both
acknowledge writes; the interleaved records are garbage on the next start and
every acknowledged write in that dir is lost.  So every process that opens a
data dir (``mesh-agent run``, and offline tools such as ``mesh-agent
recover``) takes this lock first, before it reads anything there, and holds it
until it exits.

How: ``flock(LOCK_EX | LOCK_NB)`` on ``LOCK``, opened without truncation so a
loser never erases the holder's pid.  The holder then writes its pid into the
file, for the loser's one-line message only: the lock itself is the kernel's,
so it dies with the holder (even on SIGKILL) and a stale pid in the file never
blocks anyone.  The descriptor is close-on-exec (Python's default), so task
processes never inherit the lock and cannot keep it after the agent dies.
``flock`` locks belong to the open file description, so a second
``lock_data_dir`` on the same dir conflicts even inside one process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from types import TracebackType

from agent.errors import ConfigError, LocalError

LOCK_NAME = "LOCK"
"""File inside the data dir that carries the lock (and the holder's pid)."""

DATA_DIR_MODE = 0o750
"""Mode of a data dir we create: the agent's group may read it (operators), nobody else."""

LOCK_FILE_MODE = 0o640
"""Mode of the lock file: it holds only a pid."""

PID_WAIT = 1.0
"""Seconds to wait for the holder's pid to appear in the file: it takes the lock
a moment before it writes the pid.  Only the error message waits on it."""


class DataDirBusy(LocalError):
    """Another live process holds the data dir's lock.  ``str()`` is one line."""

    def __init__(self, data_dir: str, lock_path: str, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process (pid unknown)"
        super().__init__(f"data dir {data_dir} is in use by {holder} (lock {lock_path})")
        self.data_dir = data_dir
        self.lock_path = lock_path
        self.pid = pid


class DataDirLock:
    """The held lock on one data dir; ``release()`` (or leaving a ``with``) drops it."""

    def __init__(self, data_dir: str, lock_path: str, fd: int) -> None:
        self.data_dir = data_dir
        self.path = lock_path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent).  The pid stays in the file: it is only a hint."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_data_dir(data_dir: str, *, create: bool = True) -> DataDirLock:
    """Lock ``data_dir`` for this process, creating it first if ``create``.

    Raises ``DataDirBusy`` naming the holder's pid if another process has it,
    ``ConfigError("data_dir", ...)`` if the dir or the lock file cannot be made
    (or, with ``create=False``, if the dir does not exist: offline tools such as
    ``mesh-agent recover`` must not make an empty data dir out of a typo).
    """
    if not create and not os.path.isdir(data_dir):
        raise ConfigError("data_dir", f"{data_dir}: no such directory")
    try:
        os.makedirs(data_dir, mode=DATA_DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot create {data_dir}: {exc.strerror}") from None
    lock_path = os.path.join(data_dir, LOCK_NAME)
    try:
        # No O_TRUNC: the current holder's pid must survive a loser's open.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, LOCK_FILE_MODE)
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot open lock file {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise ConfigError("data_dir", f"cannot lock {lock_path}: {exc.strerror}") from None
        pid = _holder_pid(fd)
        os.close(fd)
        raise DataDirBusy(data_dir, lock_path, pid) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:
        os.close(fd)
        raise ConfigError("data_dir", f"cannot write lock file {lock_path}: {exc.strerror}") from None
    return DataDirLock(data_dir, lock_path, fd)


def _holder_pid(fd: int) -> int | None:
    """The pid the holder wrote, waiting up to ``PID_WAIT`` for it; None if never readable."""
    deadline = time.monotonic() + PID_WAIT
    while True:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
