"""This host's task lease: the watchdog process, renewed while a quorum is in reach.

Theory of operation: the leader runs a dead host's tasks elsewhere only after
``lease`` seconds (``agent.sched.round``).  Every host therefore starts one
``python -m agent.watchdog`` (``agent/watchdog.py``) in its own session, tells
it the lease, and sends ``beat`` every ``min(1 s, lease / 4)`` while consensus
says this host reaches a quorum.  Each task run is registered with the
watchdog when it starts (its process group, cgroups, or subreaper) and
forgotten when it ends.  If the beats stop -- the host is cut off, or the
agent's event loop hangs -- the watchdog, which the hang does not reach,
kills every registered run as the lease runs out: the stale copy is dead
before the leader starts a new one.  If the agent dies, the watchdog reads EOF
and kills the runs at once.

The lines of one pass of the event loop (the registrations and removals of
the runs that started and ended in it) go in one write at the end of the
pass: one system call, and one wake-up of the watchdog, for a burst.  A
registration so waits at most for the pass its run started in, which the
agent itself is in (it is sent before the agent can beat, or hang, again).
A removal is not urgent -- until it arrives the watchdog would only kill a
run that has already ended (its group gone, its cgroup removed) -- so it
waits for the next write (a registration or a beat, at most one beat
interval): a short run costs the watchdog one wake-up, not two.

A watchdog that is gone (a write fails) is logged once and not restarted:
tasks keep running, unfenced, which the log line says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import Callable

from agent import watchdog

log = logging.getLogger(__name__)

BEAT_INTERVAL_MAX = 1.0
"""Longest wait between two beats, seconds; shorter leases beat every lease / 4 so three
beats can be lost before the watchdog fires."""
STOP_WAIT = 2.0
"""Seconds ``close`` waits for the watchdog to exit after its stdin closes."""


class WatchdogLease:
    """Owns the watchdog process and the beat loop; ``register``/``unregister`` each run."""

    def __init__(self, lease: float, has_quorum: Callable[[], bool]) -> None:
        self.lease = lease
        """Seconds the runs survive without a beat."""
        self._has_quorum = has_quorum
        self._proc: subprocess.Popen[bytes] | None = None
        self._beats: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []
        """Lines waiting for the end of this pass of the event loop."""
        self._later: list[bytes] = []
        """Removals waiting for the next write (see the module doc)."""

    def start(self) -> None:
        """Start the watchdog and the beat loop (inside the running event loop)."""
        # Its own session: a signal to the agent's process group (a kill of
        # the agent and its helpers) must not take the watchdog with it.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "agent.watchdog"], stdin=subprocess.PIPE, close_fds=True,
            start_new_session=True,
        )
        self._send(f"lease {self.lease}")
        self._beats = asyncio.create_task(self._beat_loop(), name="lease")

    async def close(self) -> None:
        """Stop beating; close the watchdog's stdin (it kills what is still registered)."""
        await self.stop_beating()
        self._flush(removals=True)
        if self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=STOP_WAIT)

    async def stop_beating(self) -> None:
        if self._beats is None:
            return
        self._beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._beats
        self._beats = None

    def register(self, pid: int, cgroups: tuple[str, ...], reaper: bool) -> None:
        """A run started: its group, cgroups, or subreaper are killed when the lease ends.

        With quorum contact now, a beat goes first, in the same write.  The beat loop
        samples the contact once per interval, so the last beat may be up to one
        interval old -- or, right after the cluster formed, not sent yet -- and the
        watchdog's lease, running since then, killed a run that had just started on a
        committed assignment (issue 14: a test's burner "failed" with -9 before it was
        ever seen running; the watchdog logged "lease expired")."""
        if self._has_quorum():
            self._send("beat")
        for line in watchdog.registration(pid, cgroups, reaper):
            self._send(line)

    def unregister(self, pid: int) -> None:
        if self._proc is None:
            return
        # (with a write due this pass it rides along: lines keep their order)
        (self._pending if self._pending else self._later).append(f"del {pid}\n".encode())

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        self._pending.append(line.encode() + b"\n")
        if len(self._pending) > 1:
            return
        try:
            asyncio.get_running_loop().call_soon(self._flush)
        except RuntimeError:  # no loop (start, close): at once
            self._flush()

    def _flush(self, removals: bool = False) -> None:
        """Write the pending lines, and the removals before them; with ``removals``,
        the removals even when nothing else is pending."""
        if not self._pending and not removals:
            return
        data, self._pending, self._later = b"".join(self._later + self._pending), [], []
        if not data or self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            log.error("task watchdog is gone; tasks are no longer lease-fenced")
            self._proc = None

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(min(BEAT_INTERVAL_MAX, self.lease / 4))
            if self._has_quorum():
                self._send("beat")
            else:  # no beats: removals must not wait for one (a group id is reused
                self._flush(removals=True)  # in time, and the watchdog would kill it)
