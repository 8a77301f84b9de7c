"""The task watchdog: kills this host's task process groups when the agent stops renewing.

Why a separate process: a task must never run twice at once.  When a host
is cut off or its agent hangs (SIGSTOP, a stuck event loop), the leader
reassigns the host's tasks ``task_lease`` seconds after membership confirms
the host dead.  The agent renews its lease only while it is in contact with
a quorum; this watchdog, which the hang does not affect, SIGKILLs every
registered task group as soon as the lease runs out.  So the stale copy is
dead before the new copy can start.  If the agent dies (EOF on our stdin)
its tasks are killed at once.

Protocol on stdin, one command per line:
``lease SECONDS`` sets the lease; ``beat`` renews it; ``add PGID`` /
``del PGID`` register and forget a task's process group; ``cgroup PGID DIR``
adds a cgroup directory of that run (killed through the cgroup, so a
``setsid`` child dies too); ``reaper PGID`` says the group's leader is the
run's subreaper (``agent.containment.subreaper``): it gets that module's
force signal instead of a group SIGKILL, which would orphan its task's
processes.  Bounded: at most ``MAX_GROUPS`` groups are tracked, each with at
most ``MAX_CGROUPS_PER_GROUP`` directories.

Run as ``python -m agent.watchdog``; the agent starts one per host.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from pathlib import Path

from agent.containment.cgroups import TaskGroup, kill_until_empty, remove_group
from agent.containment.subreaper import FORCE_SIGNAL

MAX_GROUPS = 65536
MAX_CGROUPS_PER_GROUP = 8
DEFAULT_LEASE = 10.0
CGROUP_KILL_TIMEOUT_S = 1.0
"""Longest the watchdog spends emptying one cgroup (more waits are the agent's job)."""


def registration(pgid: int, cgroups: tuple[str, ...] = (), reaper: bool = False) -> list[str]:
    """The lines that register one task run (the agent sends them on start)."""
    lines = [f"add {pgid}", *(f"cgroup {pgid} {d}" for d in cgroups)]
    return [*lines, f"reaper {pgid}"] if reaper else lines


def kill_groups(
    groups: set[int], cgroups: dict[int, list[str]] | None = None, reapers: set[int] | None = None
) -> None:
    cgroups = {} if cgroups is None else cgroups
    reapers = set() if reapers is None else reapers
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pgid in reapers:
                os.kill(pgid, FORCE_SIGNAL)  # it kills and reaps its whole task, then exits
            else:
                os.killpg(pgid, signal.SIGKILL)
        for directory in cgroups.get(pgid, ()):
            group = TaskGroup((Path(directory),))
            # Removed too, in case the agent is gone for good (if it lives on,
            # it finds the directory gone, which is what it wanted anyway).
            if kill_until_empty(group, CGROUP_KILL_TIMEOUT_S):
                remove_group(group)
    groups.clear()
    cgroups.clear()
    reapers.clear()


class _Lease:
    """What the watchdog holds: the lease, the task groups and how to kill them."""

    def __init__(self) -> None:
        self.lease = DEFAULT_LEASE
        self.groups: set[int] = set()
        self.cgroups: dict[int, list[str]] = {}
        self.reapers: set[int] = set()
        self.last_beat = time.monotonic()

    def kill_all(self) -> None:
        kill_groups(self.groups, self.cgroups, self.reapers)

    def command(self, word: str, arg: str) -> None:
        """One line of the agent's protocol (see the module doc); others are ignored."""
        if word == "beat":
            self.last_beat = time.monotonic()
        elif word == "lease":
            with contextlib.suppress(ValueError):
                self.lease = max(0.1, float(arg))
        elif word == "add" and arg.isdigit() and len(self.groups) < MAX_GROUPS:
            self.groups.add(int(arg))
        elif word == "del" and arg.isdigit():
            self.groups.discard(int(arg))
            self.cgroups.pop(int(arg), None)
            self.reapers.discard(int(arg))
        elif word == "reaper" and arg.isdigit() and int(arg) in self.groups:
            self.reapers.add(int(arg))
        elif word == "cgroup":
            self._add_cgroup(arg)

    def _add_cgroup(self, arg: str) -> None:
        pgid, _, directory = arg.partition(" ")
        if pgid.isdigit() and int(pgid) in self.groups and directory.startswith("/"):
            dirs = self.cgroups.setdefault(int(pgid), [])
            if len(dirs) < MAX_CGROUPS_PER_GROUP:
                dirs.append(directory)


def main() -> int:
    state = _Lease()
    buffer = b""
    fd = sys.stdin.fileno()
    while True:
        remaining = state.lease - (time.monotonic() - state.last_beat)
        if remaining <= 0:
            if state.groups:
                sys.stderr.write(
                    f"mesh-agent watchdog: lease expired, killing {len(state.groups)} task group(s)\n"
                )
            state.kill_all()
            remaining = state.lease
            state.last_beat = time.monotonic()
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:  # the agent is gone
            state.kill_all()
            return 0
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > 4096:  # not our protocol: drop it
            buffer = b""
        for raw in lines:
            word, _, arg = raw.decode("ascii", "replace").strip().partition(" ")
            state.command(word, arg)


if __name__ == "__main__":
    raise SystemExit(main())
