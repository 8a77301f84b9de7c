"""A task run as the executor holds it (``agent/executor.py``): the events it reports,
its two output captures and their reading, and the drain at its end.

A capture is a pipe from the run's stdout or stderr, read when readable (never
blocking the loop) into the run's capture file up to the output limit; what
goes beyond is counted, not kept.  The capture file is created at the stream's
first byte (issue 14): most short tasks print nothing, and two file creations
per run were a large part of a run host's work.  A finished run's stream that
got no file is listed in ``EmptyOutputs`` instead (one appended line), so a
read of it is empty rather than "no output", after a restart too.  At the end of a run, once its group is
killed, the pipes normally are at EOF at once; a pipe an escaped process still
holds open is waited for at most ``PIPE_DRAIN_S`` and then read once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.containment import Jail
from agent.load import TreeUsage

PIPE_DRAIN_S = 2.0
"""After the group is killed, how long we wait for pipe EOF (an escaped
``setsid`` grandchild may hold a pipe open forever)."""

READ_CHUNK = 64 * 1024
SPARE_DIRS = 16
"""Directory pairs of quiet finished runs kept for the next runs to take over (default 16:
more than a host's slots, so a burst of short runs seldom makes a directory)."""
EMPTY_LOG = ".empty-output"
"""The executor's list of finished runs' streams that printed nothing (below its tasks
directory; the leading dot keeps it apart from every task id)."""
_CAPTURE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC

log = logging.getLogger(__name__)

FinishReason = Literal["exit", "timeout", "cancelled", "stale", "shutdown"]


@dataclass(frozen=True, slots=True)
class ExecEvent:
    """A run started or finished.  ``at`` is wall-clock seconds (time.time())."""

    kind: Literal["started", "finished"]
    task_id: str
    epoch: int
    pid: int
    exit_code: int | None
    """Exit status; ``-N`` when killed by signal N; None for ``started`` (or if
    another reaper collected the status first)."""
    duration: float
    """Seconds from spawn to exit (0 for ``started``)."""
    cpu_time: float
    """User + system CPU seconds of the whole tree."""
    peak_rss: int
    """Peak resident memory of the tree, bytes."""
    at: float
    reason: FinishReason | None = None
    """Why it ended: exit, timeout, cancelled, stale (fenced) or shutdown."""
    truncated_out: int = 0
    """Bytes of stdout dropped beyond the output limit."""
    truncated_err: int = 0
    cgroups: tuple[str, ...] = ()
    """``started`` only: the run's cgroup directories (empty without cgroups)."""
    reaper: bool = False
    """``started`` only: ``pid`` is the run's subreaper (kill it with its force signal,
    not a group SIGKILL, so it can take the task's orphans with it)."""
    silent: bool = False
    """``finished`` only: neither stream wrote a byte (no capture file was made)."""


@dataclass(slots=True)
class Capture:
    """One stream of a run: its pipe, the capture file, what was kept and dropped."""

    fd: int
    path: str
    limit: int
    file_fd: int = -1
    """The capture file, opened (0600) at the stream's first byte; -1 until then."""
    written: int = 0
    dropped: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class Leader:
    """A run's first process started without Popen (``containment.spawn``)."""

    pid: int
    returncode: int | None = None


@dataclass(slots=True)
class Run:
    """One live run (its leader, pidfd, captures and jail) as the executor holds it."""

    task_id: str
    epoch: int
    popen: subprocess.Popen[bytes] | Leader
    pidfd: int
    started_mono: float
    captures: dict[str, Capture]
    jail: Jail
    settled: bool = False
    """The jail killed everything left and removed its cgroups."""
    own_dir: bool = False
    """It works in its default working directory (``tasks/<id>/work``), in a task
    directory made (or taken over) for it."""
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Future[ExecEvent] | None = None
    reason: FinishReason = "exit"
    cpu_time: float = 0.0
    peak_rss: int = 0
    usage: TreeUsage | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid


def read_capture(capture: Capture) -> None:
    """The pipe is readable: keep what fits under the limit, count the rest."""
    try:
        chunk = os.read(capture.fd, READ_CHUNK)
    except BlockingIOError:
        return
    except OSError:
        chunk = b""
    if not chunk:
        close_capture(capture)
        return
    room = capture.limit - capture.written
    kept = chunk[: max(0, room)]
    if kept and capture.file_fd < 0:
        try:
            capture.file_fd = os.open(capture.path, _CAPTURE_FLAGS, 0o600)
        except OSError as exc:  # kept nowhere: counted as dropped from here on
            log.warning("cannot create the capture file %s: %s", capture.path, exc)
            capture.limit = capture.written
            kept = b""
    if kept:
        os.write(capture.file_fd, kept)
        capture.written += len(kept)
    capture.dropped += len(chunk) - len(kept)


def close_capture(capture: Capture) -> None:
    if capture.closed.is_set():
        return
    asyncio.get_running_loop().remove_reader(capture.fd)
    for fd in (capture.fd, capture.file_fd):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    capture.closed.set()


async def drain(run: Run) -> None:
    """Wait (at most ``PIPE_DRAIN_S``) for both pipes' EOF, then take what is buffered."""
    if all(capture.closed.is_set() for capture in run.captures.values()):
        return  # both pipes already at EOF (the usual case once the group is dead)
    waits = [capture.closed.wait() for capture in run.captures.values()]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*waits), PIPE_DRAIN_S)
    # Whatever is still buffered in a pipe held by an escaped process: take it.
    for capture in run.captures.values():
        if not capture.closed.is_set():
            read_capture(capture)


class EmptyOutputs:
    """Finished runs' streams that printed nothing (no capture file): one line each,
    ``<task id> <epoch> <stream>``, appended to ``<tasks dir>/.empty-output`` (not
    fsync'd, as the capture files are not).  Read into memory at the first lookup."""

    def __init__(self, tasks_dir: Path) -> None:
        self.path = tasks_dir / EMPTY_LOG
        self._known: set[str] | None = None

    def add(self, task_id: str, epoch: int, streams: Iterable[str]) -> None:
        lines = [f"{task_id} {int(epoch)} {stream}" for stream in streams]
        if not lines:
            return
        if self._known is not None:
            self._known.update(lines)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, ("\n".join(lines) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as exc:  # this process still knows; a restarted one says "no output"
            log.warning("cannot note empty output of %s epoch %d: %s", task_id, epoch, exc)

    def has(self, task_id: str, epoch: int, stream: str) -> bool:
        if self._known is None:
            try:
                self._known = set(self.path.read_text(errors="replace").splitlines())
            except OSError:
                self._known = set()
        return f"{task_id} {int(epoch)} {stream}" in self._known


class RunDirs:
    """``<tasks dir>/<task id>/`` and its ``work/`` for each run, and the spares: the
    pairs of quiet finished runs (nothing printed, ``work/`` left empty, the runtime
    done with them), which the next runs with a default working directory take over
    with one ``rename`` instead of two mkdirs (see ``agent/executor.py``)."""

    def __init__(self, tasks_dir: Path) -> None:
        self.root = tasks_dir
        self._root = str(tasks_dir)
        self._quiet: set[tuple[str, int]] = set()
        """Finished runs that printed nothing in their default working directory."""
        self._spare: list[str] = []
        """Task directories holding only an empty ``work/``, free to take over."""

    def make(self, task_id: str, epoch: int, default_cwd: bool) -> tuple[str, bool, bool]:
        """The run's task directory (mode 0700): a spare renamed to it, or made; whether
        it is fresh (nothing of an earlier run in it); whether its ``work/`` exists
        (a spare's, empty)."""
        task_dir = f"{self._root}/{task_id}"
        if default_cwd and self._take_spare(task_dir):
            return task_dir, True, True  # it holds only its empty work directory
        try:
            os.mkdir(task_dir, 0o700)  # (0o700 survives any umask)
        except FileExistsError:
            os.chmod(task_dir, 0o700)
            for stream in ("out", "err"):  # an earlier run of this epoch (before a restart)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{task_dir}/{int(epoch)}.{stream}")
            return task_dir, False, False
        except FileNotFoundError:
            os.makedirs(task_dir, mode=0o700, exist_ok=True)
            os.chmod(task_dir, 0o700)
        return task_dir, True, False

    def _take_spare(self, task_dir: str) -> bool:
        while self._spare:
            spare = self._spare.pop()
            try:
                os.rename(spare, task_dir)  # (over an empty task_dir; never a full one)
                return True
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    self._spare.append(spare)  # task_dir is taken: the spare stays one
                    return False
        return False

    def quiet(self, task_id: str, epoch: int) -> None:
        """A run in its default working directory, in a fresh task directory, ended
        without printing anything: its task directory holds only ``work/``."""
        if len(self._quiet) >= 4096:  # ``done_with`` never came for these
            self._quiet.clear()
        self._quiet.add((task_id, epoch))

    def done_with(self, task_id: str, epoch: int, live: bool, owner: int) -> None:
        """The runtime is done with a finished run: a quiet one becomes a spare if its
        task directory holds only ``work/``, that is empty, and both are as they were
        made (mode 0700; the task directory ours, ``work/`` the run user's ``owner``)
        -- a task running as root may have written beside ``work/`` or changed it, and
        nothing of one task may reach the next."""
        if (task_id, epoch) not in self._quiet:
            return
        self._quiet.discard((task_id, epoch))
        if live or len(self._spare) >= SPARE_DIRS:
            return
        task_dir = f"{self._root}/{task_id}"
        work = task_dir + "/work"
        try:
            if os.listdir(task_dir) != ["work"] or os.listdir(work):
                return
            made, used = os.stat(task_dir), os.stat(work)
        except OSError:
            return
        if (made.st_mode & 0o7777, made.st_uid, used.st_mode & 0o7777, used.st_uid) \
                != (0o700, os.geteuid(), 0o700, owner):
            return
        self._spare.append(task_dir)
