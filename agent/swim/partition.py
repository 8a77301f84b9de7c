"""Partition detection from the member view, plus a probe-reach metric.

A node reports ``partitioned`` when it reaches fewer than half of the members
it knows about: when the members it considers *alive* (ourselves included;
suspect, dead and unknown-fate members do not count) are fewer than half of
the known non-left members.  A member leaves "alive" exactly when a probe
path failed to reach it, ours (a failed probe is an immediate suspicion) or
another member's (its Suspect gossip), so this is the probe outcome of the
whole side we are on, not just of our own last few probes: a 30/70 split
flips the minority within a probe round or two plus gossip time, and the
majority (which still sees 70% alive) never flips.  Our own last probes alone
are a noisy signal (in a 30/70 split a majority node's window of 16 probes
falls below one half about 3% of the time), so they are kept only as the
``reach`` metric (fraction of the last ``window`` probes that got an Ack by
any path) for the operator's report.

O(1) per update: the table keeps per-state counts, and the check runs only
when the table or the window changed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from agent.swim.members import MemberTable
from agent.swim.messages import MemberState


class PartitionDetector:
    """Tracks the ``partitioned`` flag and reports flips through a callback."""

    def __init__(self, window: int) -> None:
        assert window >= 2
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._successes = 0
        self.partitioned = False
        self._seen_version = -1

    def record_probe(self, reached: bool) -> None:
        window = self._outcomes
        if len(window) == window.maxlen and window[0]:
            self._successes -= 1
        window.append(reached)
        if reached:
            self._successes += 1

    def reach(self) -> float | None:
        """Fraction of our recent probes that reached their target (None before any)."""
        if not self._outcomes:
            return None
        return self._successes / len(self._outcomes)

    @staticmethod
    def view_minority(table: MemberTable) -> bool:
        alive = table.count(MemberState.ALIVE) + 1
        known = len(table) - table.count(MemberState.LEFT) + 1
        return 2 * alive < known

    def update_state(self, table: MemberTable, emit: Callable[[str], None]) -> None:
        if table.version == self._seen_version:
            return
        self._seen_version = table.version
        minority = self.view_minority(table)
        if minority != self.partitioned:
            self.partitioned = minority
            emit("partitioned" if minority else "healed")
