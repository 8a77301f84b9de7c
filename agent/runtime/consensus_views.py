"""What the Raft driver tells others about itself, read-only: who leads, the
voters, the replicated state to read, its role name (SWIM metadata, the status
line), the ``status`` and ``report`` views, the TUI's log view
(``handlers/raftlog.py``) and the disk-full alarms.

A mixin of ``ConsensusDriver`` (``consensus.py``), like ``consensus_requests.py``:
the driver owns the core, the state machine, the storage calls and the disk-full
mode; nothing here changes any of them, so the Ready loop's rules do not reach
into this module.
"""

from __future__ import annotations

from typing import Any

from agent.raft.core import RaftNode
from agent.raft.messages import Entry, Role
from agent.runtime.diskfull import DiskFullMode
from agent.runtime.ports import StateQueries
from agent.runtime.storage_io import StorageIO
from agent.state.machine import StateMachine


class ConsensusViews:
    """Read-only views; expects the driver's attributes declared below."""

    node_id: str
    disk_full: DiskFullMode
    _node: RaftNode
    _state: StateMachine
    _io: StorageIO

    @property
    def queries(self) -> StateQueries:
        """The replicated state, read-only (stale unless after ``read_barrier``)."""
        return self._state

    def is_leader(self) -> bool:
        return self._node.is_leader()

    @property
    def leader_id(self) -> str:
        """The leader this node knows of ("" if none)."""
        return self._node.leader_id

    def voters(self) -> tuple[str, ...]:
        return self._node.conf.voters

    @property
    def storage_damage(self) -> str:
        """Why this node's storage cannot be trusted ("" if it can; raft/repair.py)."""
        return self._node.damaged

    def role_name(self) -> str:
        node = self._node
        if node.damaged:
            return "repairing"
        if node.role == Role.LEADER:
            return "leader"
        if node.conf.is_voter(self.node_id):
            return "voter"
        if node.conf.is_member(self.node_id):
            return "learner"
        return "none"

    def alarms(self) -> list[dict[str, Any]]:
        """Disk-full alarms on this node (diskfull.py)."""
        return self.disk_full.alarms()

    def log_view(self, after: int, limit: int) -> tuple[dict[str, dict[str, object]], list[Entry]]:
        """Read-only, for the TUI (handlers/raftlog.py): the leader's per-peer progress
        (``{}`` off the leader; ``heard_ticks`` = ticks since that peer last answered,
        counted from the freshest answer) and up to ``limit`` committed entries after
        ``after`` that are still in the log (not compacted)."""
        node = self._node
        progress = node.progress_view() if node.is_leader() else {}
        freshest = max((node.prs[p].last_heard for p in progress if p != self.node_id), default=0)
        for peer, row in progress.items():
            row["heard_ticks"] = 0 if peer == self.node_id else max(0, freshest - node.prs[peer].last_heard)
        lo = max(after + 1, node.log.first_index(), node.log.committed - limit + 1)
        return progress, node.log.slice(lo, node.log.committed + 1) if lo <= node.log.committed else []

    def wal_stats(self) -> dict[str, Any]:
        return self._io.stats()

    def status(self) -> dict[str, Any]:
        node = self._node
        role = self.role_name() if node.role != Role.CANDIDATE else "candidate"
        leader: str | None = node.leader_id or None
        quorum = node.has_quorum_contact()
        if self.disk_full.paused and not self.disk_full.sole_leader():
            # The core stands still: say what the node still knows (diskfull.py).
            role = "voter" if role == "leader" else role
            leader = self.disk_full.live_leader()
            quorum = leader is not None
        return {
            "engine": "raft",
            "role": role,
            "term": max(node.term, self.disk_full.term) if self.disk_full.paused else node.term,
            "leader_id": leader,
            "commit_index": node.commit_index,
            "applied_index": self._state.applied_index,
            "voters": list(node.conf.voters),
            "learners": list(node.conf.learners),
            "quorum": quorum,
            "storage_damage": node.damaged or None,
            "paused": self.disk_full.paused,
            "alarms": self.disk_full.alarms(),
        }
