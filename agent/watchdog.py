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
``del PGID`` register and forget a task's process group.  Bounded: at most
``MAX_GROUPS`` groups are tracked.

Run as ``python -m agent.watchdog``; the agent starts one per host.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

MAX_GROUPS = 65536
DEFAULT_LEASE = 10.0


def kill_groups(groups: set[int]) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    groups.clear()


def main() -> int:
    lease = DEFAULT_LEASE
    groups: set[int] = set()
    last_beat = time.monotonic()
    buffer = b""
    fd = sys.stdin.fileno()
    while True:
        remaining = lease - (time.monotonic() - last_beat)
        if remaining <= 0:
            if groups:
                sys.stderr.write(
                    f"mesh-agent watchdog: lease expired, killing {len(groups)} task group(s)\n"
                )
            kill_groups(groups)
            remaining = lease
            last_beat = time.monotonic()
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:  # the agent is gone
            kill_groups(groups)
            return 0
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > 4096:  # not our protocol: drop it
            buffer = b""
        for raw in lines:
            word, _, arg = raw.decode("ascii", "replace").strip().partition(" ")
            if word == "beat":
                last_beat = time.monotonic()
            elif word == "lease":
                try:
                    lease = max(0.1, float(arg))
                except ValueError:
                    continue
            elif word == "add" and arg.isdigit() and len(groups) < MAX_GROUPS:
                groups.add(int(arg))
            elif word == "del" and arg.isdigit():
                groups.discard(int(arg))


if __name__ == "__main__":
    raise SystemExit(main())
