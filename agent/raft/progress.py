"""The leader's view of each follower: how far it matches and how to feed it.

A follower's progress is in one of three states (etcd-io/raft's design):

* PROBE: we do not know where its log matches ours.  Send one AppendEntries at
  a time (``probe_sent`` pauses until a reply or the next heartbeat reply) and
  walk ``next`` back on rejections, using the follower's conflict hint.
* REPLICATE: logs match up to ``match``; stream entries optimistically,
  advancing ``next`` on send, with at most ``max_inflight_msgs`` batches
  unacknowledged (the ``Inflights`` window).
* SNAPSHOT: the entries it needs are compacted away; an InstallSnapshot is on its
  way.  Nothing else is sent until it is acknowledged or ``snapshot_ticks``
  shows it was lost (then we fall back to PROBE and try again).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """Last indexes of the unacknowledged AppendEntries batches, oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._last_indexes: deque[int] = deque()

    def add(self, last_index: int) -> None:
        assert not self.full(), "inflight window overflow"
        self._last_indexes.append(last_index)

    def free_to(self, index: int) -> None:
        """Acknowledged up to ``index``: forget every batch ending at or below it."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def free_first_one(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def reset(self) -> None:
        self._last_indexes.clear()

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def __len__(self) -> int:
        return len(self._last_indexes)


@dataclass(slots=True)
class Progress:
    next: int
    inflights: Inflights
    match: int = 0
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    pending_snapshot: int = 0
    snapshot_ticks: int = 0
    """Ticks since the InstallSnapshot was sent (SNAPSHOT state only)."""
    last_heard: int = field(default=-(10**9))
    """The leader's tick count when this peer last answered us."""
    is_learner: bool = False
    commit_sent: int = 0
    """The highest commit index sent to this peer in an AppendEntries."""

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.reset()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_ticks = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """The follower matches up to ``index``; True if ``match`` moved."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """A rejection of ``prev_index == rejected``; False if stale (out of order)."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            # Pipelined sends went past a hole: restart right after the match.
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True
