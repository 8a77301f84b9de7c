"""How the executor starts a run's first process (``agent/executor.py``): its
environment, its output pipes, and the spawn itself inside the run's jail.

The spawn is the hot part of a short run on a host agent (issue 14): where it can,
the child is started from C by glibc's ``posix_spawn`` (``containment.spawn``), which
starts the same child as ``subprocess.Popen`` for less of the agent's CPU; Popen is
kept where a ``preexec_fn`` is needed (the subreaper) or ``posix_spawn`` cannot
express the start (a relative PATH entry, a NUL byte).  The signals the jail asks for
are blocked around the spawn, so a signal sent before the child has installed its
handlers waits for them instead of killing it by default.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Mapping

from agent.containment import Jail
from agent.containment.jail import locate
from agent.containment.spawn import spawn, usable
from agent.errors import TaskError
from agent.executor_runs import Leader

_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


def base_env(user: pwd.struct_passwd | None) -> dict[str, str]:
    """What every run's environment starts from: PATH, LANG, LC_ALL and TZ of the
    agent's, and HOME (USER and LOGNAME too when the agent switches users)."""
    environ = os.environ
    base = {k: environ[k] for k in _PASSED_ENV if k in environ}
    base.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if user is not None:
        base.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    elif environ.get("HOME"):
        base["HOME"] = environ["HOME"]
    return base


def start_child(
    jail: Jail, argv: list[str], found: str, user: pwd.struct_passwd | None,
    env: Mapping[str, str], cwd: str, stdout: int, stderr: int,
) -> subprocess.Popen[bytes] | Leader:
    """Start a run's first process (its signals blocked as its jail asks).  The jail
    switches to ``user`` itself (after joining its cgroups, or in the subreaper's
    child), so the spawn gets no user; a cgroup jail may put the agent inside the
    run's group around it (``CgroupJail.enter``).  ``found`` is where ``argv[0]`` is."""
    # The child inherits this thread's signal mask, so a signal sent before it has
    # installed its handlers waits for them instead of killing it by default.
    signals = jail.blocked_signals
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals) if signals else None
    held = False
    try:
        held = jail.enter(user)
        popen_argv, popen_extra = jail.popen_args(argv, user)
        exe = executable(popen_argv, popen_extra, env, cwd, found if popen_argv is argv else None)
        if exe is not None:  # the same child, started from C (``containment.spawn``)
            return Leader(spawn(exe, popen_argv, env, cwd, stdout, stderr))
        return subprocess.Popen(
            popen_argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=cwd,
            env=env, start_new_session=True, close_fds=True, **popen_extra,
        )
    finally:
        if held:
            jail.leave()
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def executable(
    argv: list[str], extra: Mapping[str, object], env: Mapping[str, str], cwd: str,
    found: str | None = None,
) -> str | None:
    """What ``containment.spawn`` should exec for ``argv`` (found as Popen would, on the
    child's PATH; ``found`` if the caller located it already), or None where Popen must
    start it (a ``preexec_fn``, no usable posix_spawn, a relative PATH entry or a NUL
    byte)."""
    if extra or not usable(argv, env, cwd):
        return None
    if found is None:
        found = locate(argv[0], env.get("PATH", os.defpath), cwd)
    return found if found is not None and ("/" in argv[0] or os.path.isabs(found)) else None


def open_child(
    task_id: str, jail: Jail, argv: list[str], user: pwd.struct_passwd | None,
    env: Mapping[str, str], cwd: str,
) -> tuple[subprocess.Popen[bytes] | Leader, list[int]]:
    """Start a run's first process in ``jail`` with stdout and stderr on new pipes:
    ``(child, [out_read, out_write, err_read, err_write])`` with the write ends
    closed here.  Raises TaskError (the jail settled) when the command is not found
    or cannot start."""
    found = locate(argv[0], env["PATH"], cwd)
    if found is None:
        # A shim (the subreaper, the cgroup join) always starts; a missing command
        # would only show as its exit 127 (and the same words for every path).
        jail.settle_sync()
        raise TaskError(f"task {task_id}: cannot start {argv[0]!r}: command not found")
    pipes: list[int] = []
    try:
        for _ in range(2):  # stdout, stderr
            pipes.extend(os.pipe())
        popen = start_child(jail, argv, found, user, env, cwd, pipes[1], pipes[3])
    except (OSError, subprocess.SubprocessError) as exc:
        for fd in pipes:
            with contextlib.suppress(OSError):
                os.close(fd)
        jail.settle_sync()
        raise TaskError(f"task {task_id}: cannot start {argv[0]!r}: {exc}") from exc
    os.close(pipes[1])
    os.close(pipes[3])
    return popen, pipes


def run_env(
    base: Mapping[str, str], task_id: str, epoch: int, env: Mapping[str, str] | None,
) -> dict[str, str]:
    """A run's environment (the executor's module doc's "Environment"): ``base``
    (``base_env``, read once when the executor is made), the run's id and epoch,
    then the task's own ``env``."""
    child_env = dict(base)
    child_env["MESH_TASK_ID"] = task_id
    child_env["MESH_TASK_EPOCH"] = str(epoch)
    if env:
        child_env.update(env)
    return child_env
