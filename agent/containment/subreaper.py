"""The per-task subreaper: containment where no cgroup is usable (a non-root agent).

Theory of operation
-------------------
The executor runs ``python -I -S subreaper.py [--uid N --gid N] --parent PID
-- CMD...`` as the run's leader.  This process marks itself a child
subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so every orphan below it --
a ``setsid`` child, both halves of a double fork, a daemon -- is re-parented
to it instead of to init: nothing the task starts can leave its subtree.  It
forks the task (own process group; as root with a user given, privileges are
dropped in that child only, so this process can still kill all of them),
reaps whatever exits, and when the task's first process ends -- or on
``FORCE_SIGNAL`` -- SIGKILLs every descendant it finds in ``/proc`` and reaps
them until none is left.  It then exits the way the task did (same code, or
killed by the same signal), so the executor's ``wait4`` sees the task's own
status and the CPU time of everything reaped here.

Signals from the executor: SIGTERM (also SIGINT, SIGHUP) is passed to the
task's process group, as a cgroup-less executor would signal it;
``FORCE_SIGNAL`` means "kill everything now".  ``PR_SET_PDEATHSIG`` delivers
``FORCE_SIGNAL`` when the agent dies, so its tasks die with it.

Limits: a task running as the agent's own user can SIGKILL this process (or
SIGSTOP it) and so escape; cgroups, used whenever the agent is root, do not
have that hole.  Standard library only, so ``-I -S`` starts it in ~20 ms.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time

FORCE_SIGNAL = signal.SIGUSR1
"""Sent by the executor (and on the agent's death) to kill the whole task at once."""
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
KILL_DEADLINE_S = 10.0
"""Longest the final kill-and-reap loop runs (a D-state process can outlast it)."""
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Passed on to the task's process group."""


class _Forced(Exception):
    """Raised from the FORCE_SIGNAL handler to break out of waitpid."""


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, from one scan of ``/proc``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        rest = data[data.rfind(b")") + 2 :].split()
        if len(rest) > 1:
            children.setdefault(int(rest[1]), []).append(int(name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def kill_all(statuses: dict[int, int]) -> None:
    """SIGKILL every descendant and reap until none is left (bounded by the deadline).

    Statuses reaped here are stored in ``statuses`` (the leader's among them).
    """
    me = os.getpid()
    deadline = time.monotonic() + KILL_DEADLINE_S
    while time.monotonic() < deadline:
        victims = descendants(me)
        killed = 0
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                killed += 1  # a zombie about to be reaped
            except PermissionError:
                pass  # a setuid program: nothing this process may do about it
        has_children = _reap(statuses, block=False)
        if not victims and not has_children:
            return
        if not killed and not has_children:
            return  # only processes we may not signal are left
        time.sleep(0.002)


def _reap(statuses: dict[int, int], block: bool) -> bool:
    """Reap what has exited; False once this process has no children at all."""
    flags = 0 if block else os.WNOHANG
    while True:
        try:
            pid, status = os.waitpid(-1, flags)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        statuses[pid] = status
        if block:
            return True


def _exit_like(status: int) -> None:
    """Leave the way the task did, so the executor's wait4 reads the task's status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core of this process
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)  # (SIGKILL and SIGSTOP cannot be caught)
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _run_task(argv: list[str], uid: int | None, gid: int | None) -> None:
    """In the forked child: own group, drop privileges, exec (never returns)."""
    try:
        # Python ignores SIGPIPE and SIGXFSZ; an exec keeps ignored signals.
        for sig in (*FORWARDED, FORCE_SIGNAL, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.setpgid(0, 0)
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"mesh-agent: cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
    finally:
        os._exit(127)


def _parse(args: list[str]) -> tuple[int, int | None, int | None, list[str]]:
    parent, uid, gid = 0, None, None
    while args and args[0] != "--":
        flag, value = args[0], int(args[1])
        if flag == "--parent":
            parent = value
        elif flag == "--uid":
            uid = value
        elif flag == "--gid":
            gid = value
        else:
            raise ValueError(f"unknown option {flag}")
        args = args[2:]
    if not args[1:]:
        raise ValueError("no command after --")
    return parent, uid, gid, args[1:]


def main(args: list[str]) -> None:
    try:
        parent, uid, gid, argv = _parse(args)
    except (ValueError, IndexError) as exc:
        os.write(2, f"mesh-agent subreaper: bad arguments: {exc}\n".encode())
        os._exit(2)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, FORCE_SIGNAL)
    if parent and os.getppid() != parent:
        os._exit(1)  # the agent died before the death signal was armed
    leader = 0

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.killpg(leader, signum)

    def force(_signum: int, _frame: object) -> None:
        raise _Forced

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.signal(FORCE_SIGNAL, force)
    ours = {*FORWARDED, FORCE_SIGNAL}
    # The executor started us with these blocked (a signal sent before our
    # handlers were in waits); they stay blocked until the leader is known and
    # in its own group, so no signal finds no task to act on.
    signal.pthread_sigmask(signal.SIG_BLOCK, ours)
    try:
        leader = os.fork()
    except OSError as exc:
        os.write(2, f"mesh-agent: cannot start {argv[0]!r}: {exc.strerror or exc}\n".encode())
        os._exit(127)
    if leader == 0:
        _run_task(argv, uid, gid)
    with contextlib.suppress(OSError):
        os.setpgid(leader, leader)  # also here, so the group exists before any signal
    statuses: dict[int, int] = {}
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, ours)
        while leader not in statuses and _reap(statuses, block=True):
            pass
    except _Forced:
        pass
    # The cleanup must not be interrupted by another signal from the executor.
    signal.pthread_sigmask(signal.SIG_BLOCK, ours)
    with contextlib.suppress(OSError):
        os.killpg(leader, signal.SIGKILL)
    kill_all(statuses)
    _exit_like(statuses.get(leader, int(signal.SIGKILL)))


if __name__ == "__main__":
    main(sys.argv[1:])
