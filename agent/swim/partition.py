"""Partition detection from probe outcomes and the member view.

A node reports ``partitioned`` when it reaches fewer than half of the members
it knows about.  Two signals, both O(1) per update:

* reach: the last ``window`` probe outcomes (an Ack by any path, direct,
  indirect or TCP, counts as reached).  Fast: in a 30/70 split the minority's
  probes fail 70% of the time long before anyone is declared dead;
* view: the members we consider alive (ourselves included) are fewer than half
  of the known non-left members.  Durable: once the other side is marked dead
  we no longer probe it, so reach alone would look healthy again.

Entering needs either signal (reach: a full window under one half).  Leaving
needs the view signal clear and reach at least three quarters (hysteresis, so
a minority whose window hovers near one half does not flap).
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

    def record_probe(self, reached: bool) -> None:
        window = self._outcomes
        if len(window) == window.maxlen and window[0]:
            self._successes -= 1
        window.append(reached)
        if reached:
            self._successes += 1

    def reach(self) -> float | None:
        """Fraction of the last full window of probes that reached their target."""
        window = self._outcomes
        if len(window) < (window.maxlen or 0):
            return None
        return self._successes / len(window)

    @staticmethod
    def view_minority(table: MemberTable) -> bool:
        alive = table.count(MemberState.ALIVE) + 1
        known = len(table) - table.count(MemberState.LEFT) + 1
        return 2 * alive < known

    def update_state(self, table: MemberTable, emit: Callable[[str], None]) -> None:
        reach = self.reach()
        minority = self.view_minority(table)
        if not self.partitioned:
            if minority or (reach is not None and reach < 0.5):
                self.partitioned = True
                emit("partitioned")
        elif not minority and (reach is None or reach >= 0.75):
            self.partitioned = False
            emit("healed")
