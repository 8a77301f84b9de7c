"""Collecting a finished run's artifacts from its working directory, as its user.

Theory of operation: each named artifact (a relative path already checked by
``agent.output_store.artifact_refusal``) is opened component by component
below the working directory with ``openat`` and ``O_NOFOLLOW``, so neither a
symbolic link nor a ``..`` can lead out of it.  When tasks run as another
user (a root agent with ``run_as``) the opening happens in a forked child
that has dropped to that user (no supplementary groups), so a file the task's
user could not read is not read; the child passes the open descriptors back
over a ``SOCK_SEQPACKET`` socket (``SCM_RIGHTS``) and exits, and the agent
reads them.  Only regular files are taken, each up to the per-artifact limit;
every refusal is one line naming the artifact: missing, a link, not a
regular file, unreadable, or over the limit.  Reading runs in a worker thread
(``collect`` is blocking; the task runtime calls it through ``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.output_store import artifact_refusal

_ERRNO_LINES = {
    errno.ENOENT: "no such file in the task's working directory",
    errno.ELOOP: "is a symbolic link (links are not followed)",
    errno.ENOTDIR: "a path component is not a directory (or is a symbolic link)",
    errno.EACCES: "permission denied for the task's user",
    errno.EPERM: "permission denied for the task's user",
}


@dataclass(frozen=True, slots=True)
class Collected:
    """One artifact: its bytes, or the one line saying why there are none."""

    name: str
    data: bytes = b""
    error: str = ""


def open_beneath(workdir: int, name: str) -> int:
    """An fd for ``name`` below the directory open as ``workdir``, no symbolic link
    followed (``OSError``)."""
    dfd = os.dup(workdir)
    try:
        parts = name.split("/")
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                       dir_fd=dfd)
    finally:
        os.close(dfd)


def _line(name: str, exc: OSError) -> str:
    why = _ERRNO_LINES.get(exc.errno or 0, exc.strerror or str(exc))
    return f"artifact {name!r}: {why}"


def _read_fd(name: str, fd: int, limit: int) -> Collected:
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Collected(name, error=f"artifact {name!r}: not a regular file")
        if info.st_size > limit:
            return Collected(name, error=f"artifact {name!r}: {info.st_size} bytes is over the "
                                         f"per-artifact limit of {limit} bytes")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= limit:
            block = os.read(fd, min(1 << 20, limit + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
        if total > limit:  # it grew while we read
            return Collected(name, error=f"artifact {name!r}: over the per-artifact limit of "
                                         f"{limit} bytes")
        return Collected(name, b"".join(chunks))
    except OSError as exc:
        return Collected(name, error=_line(name, exc))
    finally:
        os.close(fd)


def _child(sock: socket.socket, workdir: int, names: list[str], uid: int, gid: int) -> None:
    """The forked child: become the user, open each artifact, pass the fds back."""
    code = 0
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        for name in names:
            try:
                fd = open_beneath(workdir, name)
            except OSError as exc:
                sock.send(b"E%d" % (exc.errno or 0))
                continue
            socket.send_fds(sock, [b"F"], [fd])
            os.close(fd)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _open_as(workdir: int, names: list[str], uid: int, gid: int) -> list[int | OSError]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits inside
        parent.close()
        _child(child, workdir, names, uid, gid)
    child.close()
    opened: list[int | OSError] = []
    try:
        for _ in names:
            msg, fds, _flags, _addr = socket.recv_fds(parent, 64, 1)
            if fds:
                opened.append(fds[0])
            elif msg.startswith(b"E"):
                code = int(msg[1:] or 0)
                opened.append(OSError(code, os.strerror(code)))
            else:
                opened.append(OSError(errno.EIO, "the collecting process ended early"))
                break
    finally:
        parent.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    opened += [OSError(errno.EIO, "the collecting process ended early")] * (
        len(names) - len(opened))
    return opened


def collect(workdir: Path, names: list[str], limit: int,
            user: tuple[int, int] | None = None) -> list[Collected]:
    """Each of ``names`` read below ``workdir`` (as ``user`` = (uid, gid) if given)."""
    if not names:
        return []
    opened: list[int | OSError]
    try:
        # Opened by the agent: the private data dir above a default working
        # directory need not be traversable by the task's user (as at spawn).
        wfd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return [Collected(name, error=f"artifact {name!r}: the working directory "
                                      f"{str(workdir)!r} is gone ({exc.strerror})")
                for name in names]
    try:
        if user is not None and os.geteuid() == 0 and user[0] != 0:
            opened = _open_as(wfd, names, user[0], user[1])
        else:
            opened = []
            for name in names:
                try:
                    opened.append(open_beneath(wfd, name))
                except OSError as exc:
                    opened.append(exc)
    finally:
        os.close(wfd)
    out = []
    for name, got in zip(names, opened, strict=True):
        refusal = artifact_refusal(name)
        if refusal is not None:  # checked at submit already; never read such a path
            if not isinstance(got, OSError):
                os.close(got)
            out.append(Collected(name, error=refusal))
        elif isinstance(got, OSError):
            out.append(Collected(name, error=_line(name, got)))
        else:
            out.append(_read_fd(name, got, limit))
    return out
