"""The metrics that need memory of what happened: leader changes, partition
recovery and hotspots (sans-IO: every call takes its time).

Leader changes (``LeaderTerms``)
--------------------------------
Every Raft leader commits a no-op entry in its own term as it starts, so the
committed log's entries change term exactly once per leadership that got
anything committed.  ``observe(index, term)`` is called for every applied
entry (``ConsensusDriver``'s apply loop); ``changes`` counts the entries
whose term differs from the entry before.  Every node applies the same log,
so every node counts the same changes -- unlike counting this node's own
elections, which differs per node and misses what a follower never saw.
Elections that elected nobody (split votes, pre-votes) leave no entry and are
not leader changes.

A node replays its log from its last snapshot on restart.  So the count
survives a restart, the metrics history saves a checkpoint ``(index, term,
changes)`` (``checkpoint()``/``resume()``); when the replay reaches that entry
the count is set from it, and when the replay starts past it (compacted) the
count goes on from the checkpoint.  A node that joined through a leader's
snapshot counts from that snapshot on (its absolute figure is lower; its
changes from then on are the same as everyone's).

Partition recovery (``RecoveryTracker``)
----------------------------------------
Fed every member state change (SWIM's member events).  A member that goes
suspect or dead joins the episode's ``lost`` set (the first one opens the
episode).  No node can see the moment the network heals; it sees the first
member of the other side again: the first lost member back alive is the heal
*as this node sees it* -- at most one SWIM reconnect interval (a PushPull to one
dead member each interval) after the real heal, which bounds the error.  When
every lost member is alive again (or has left, or is gone), the node has one
membership again, and ``partition_recovery_s`` is the time from that first
return to then.  A member already lost before the episode opened does not hold
it open; one lost during it that never returns holds it open (there is no one
membership until it does, or leaves) for at most ``GIVE_UP_S``, after which
it counts as gone for good.  An episode in which no member was declared dead
(a suspicion refuted in time) is no split and records nothing.  The majority
side of a split records a recovery exactly as the minority does: each side
loses the other.

Hotspots (``HotspotTracker``)
-----------------------------
The scheduler's own rule (``agent.sched.balance.update_heat``: above
``hot_above`` for ``hot_window`` seconds, then hot until below
``hot_exit_below``), applied on every node, every sample, to the load every
member gossips -- not only in the leader's scheduling round.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.sched.balance import HeatState, update_heat
from agent.sched.config import SchedConfig
from agent.sched.snapshot import ClusterSnapshot, NodeView

_LOST_STATES = frozenset({"suspect", "dead"})

GIVE_UP_S = 3600.0
"""Seconds a member lost in a split may keep the episode open (module doc): a
host that died for good during a split must not block every later recovery."""


class LeaderTerms:
    """Counts term changes in the applied log (module doc)."""

    def __init__(self) -> None:
        self.changes = 0
        self.index = 0
        """The last applied entry's index."""
        self.term = 0
        """The last applied entry's term (0 before any)."""
        self._resume: tuple[int, int, int] | None = None

    def observe(self, index: int, term: int) -> None:
        """The applied entry ``index`` has ``term``."""
        ckpt = self._resume
        if ckpt is not None and index >= ckpt[0]:
            c_index, c_term, c_changes = ckpt
            self._resume = None
            # The replay reached the checkpoint's entry: its count includes this
            # entry.  Past it (a compacted log, or the entry was replaced): go on
            # from its count, this entry compared with the checkpoint's term.
            exact = index == c_index and term == c_term
            self.changes = c_changes if exact else c_changes + (term != c_term)
        elif self.term and term != self.term:
            self.changes += 1
        self.index, self.term = index, term

    def checkpoint(self) -> tuple[int, int, int]:
        """``(index, term, changes)`` to save beside the history."""
        return self.index, self.term, self.changes

    def resume(self, index: int, term: int, changes: int) -> None:
        """Continue a saved count when the replay reaches ``index`` (module doc)."""
        if index > self.index and changes >= 0:
            self._resume = (index, term, changes)


@dataclass(frozen=True, slots=True)
class Recovery:
    """One healed split as this node saw it (monotonic seconds)."""

    seconds: float
    split_at: float
    """When the first member was lost."""
    healed_at: float
    """When the first lost member was heard alive again."""
    whole_at: float
    """When the last lost member was alive again (one membership)."""
    lost: int
    """How many members were lost in the split."""


class RecoveryTracker:
    """Partition recovery time on this node (module doc)."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self._lost: dict[str, float] = {}
        """Members lost during the open episode, and since when."""
        self._split_at: float | None = None
        self._healed_at: float | None = None
        self._lost_count = 0
        self._dead_seen = False
        self.last: Recovery | None = None
        self.recoveries = 0

    def observe(self, at: float, member: str, state: str) -> None:
        """``member`` is now in SWIM ``state`` (alive, suspect, dead, left)."""
        before = self.state.get(member)
        self.state[member] = state
        if state in _LOST_STATES:
            if state == "dead" and member in self._lost:
                self._dead_seen = True
            if before in _LOST_STATES:
                return
            if self._split_at is None:
                self._split_at = at
            self._lost[member] = at
            self._lost_count += 1
            self._dead_seen = self._dead_seen or state == "dead"
            return
        if member not in self._lost:
            return
        if state == "alive" and self._healed_at is None:
            self._healed_at = at
        del self._lost[member]
        self._maybe_whole(at)

    def tick(self, at: float, present: Iterable[str]) -> None:
        """Once in a while: members no longer listed at all (reaped), and members
        lost longer than ``GIVE_UP_S``, stop holding the episode open."""
        keep = set(present)
        for member in [m for m in self.state if m not in keep]:
            del self.state[member]
            self._lost.pop(member, None)
        for member, since in list(self._lost.items()):
            if at - since > GIVE_UP_S:
                del self._lost[member]
        self._maybe_whole(at)

    def _maybe_whole(self, at: float) -> None:
        if self._lost or self._split_at is None:
            return
        if self._healed_at is not None and self._dead_seen:
            self.last = Recovery(
                round(at - self._healed_at, 3), self._split_at, self._healed_at, at, self._lost_count
            )
            self.recoveries += 1
        self._split_at = self._healed_at = None
        self._lost_count = 0
        self._dead_seen = False

    @property
    def open(self) -> bool:
        """True while members lost in a split have not all come back."""
        return bool(self._lost)


class HotspotTracker:
    """Which members are hot, by the scheduler's rule, from gossiped load (module doc)."""

    def __init__(self) -> None:
        self.heat = HeatState()

    def update(self, now: float, loads: Iterable[tuple[str, bool, float]], cfg: SchedConfig) -> None:
        """``loads``: ``(member id, alive, gossiped cpu)`` for every member; ``now`` wall time."""
        nodes = tuple(NodeView(id=node, alive=alive, cpu=cpu) for node, alive, cpu in loads)
        self.heat = update_heat(self.heat, ClusterSnapshot(nodes, (), now), cfg)

    def hot(self) -> list[str]:
        """Hot member ids, sorted."""
        return sorted(self.heat.hot)
