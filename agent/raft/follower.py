"""Candidate and follower steps: appends, heartbeats, snapshots, votes won or lost.

Split out of ``core.py`` (as etcd's raft.go splits stepFollower); these functions act
on a ``RaftNode`` directly.  A follower answers every append with the index it now
holds or a rejection carrying a conflict hint (the first index of the conflicting
term) so the leader backs off a term at a time; an append below the commit point is
answered with the commit index.  A snapshot whose entries the log already holds only
moves the commit forward; otherwise it replaces the log and the configuration.  A
node whose storage was found damaged acknowledges nothing from a leader: it asks the
leader to take its vote away first (``repair.py``).  A fresh start checks in with the
first leader it hears (``StartCheck``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.raft import election
from agent.raft.confchange import ConfHistory
from agent.raft.election import hup
from agent.raft.messages import (
    AppendEntries,
    AppendResp,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    InstallSnapshotResp,
    RaftMessage,
    ReadIndexResp,
    ReadState,
    RepairRequest,
    RequestVoteResp,
    Role,
    StartCheck,
    TimeoutNow,
)
from agent.raft.replication import bcast_append

if TYPE_CHECKING:
    from agent.raft.core import RaftNode

FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)
"""Messages only a leader sends: a candidate that gets one of its term follows it."""


def step_follower(node: RaftNode, m: RaftMessage) -> None:
    """A follower (or learner) steps a message of its own term."""
    if node.damaged:
        if isinstance(m, FROM_LEADER):
            # Acknowledge nothing: ask the leader to take our vote away first.
            node.election_elapsed = 0
            node._set_leader(m.frm)
            node._send(RepairRequest(node.id, m.frm, node.term, node.damaged))
        return
    if isinstance(m, FROM_LEADER) and not node._start_checked and node.fresh_start:
        node._start_checked = True
        node._send(StartCheck(node.id, m.frm, node.term, node.log.last_index()))
    if isinstance(m, AppendEntries):
        node.election_elapsed = 0
        node._set_leader(m.frm)
        handle_append(node, m)
    elif isinstance(m, Heartbeat):
        node.election_elapsed = 0
        node._set_leader(m.frm)
        if node.log.commit_to(min(m.commit, node.log.last_index())):
            node._apply_committed_conf()
        node._send(HeartbeatResp(node.id, m.frm, node.term, m.ctx))
    elif isinstance(m, InstallSnapshot):
        node.election_elapsed = 0
        node._set_leader(m.frm)
        handle_snapshot(node, m)
    elif isinstance(m, TimeoutNow):
        hup(node, transfer=True)
    elif isinstance(m, ReadIndexResp):
        node._read_states.append(ReadState(m.index, m.ctx))

def handle_append(node: RaftNode, m: AppendEntries) -> None:
    """Append the leader's entries if the log matches at ``prev``, else reject with a hint."""
    if m.prev_index < node.log.committed:
        node._send(AppendResp(node.id, m.frm, node.term, index=node.log.committed))
        return
    last_new = node.log.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
    if last_new is not None:
        node._apply_committed_conf()
        node._send(AppendResp(node.id, m.frm, node.term, index=last_new))
        return
    hint = node.log.find_conflict_by_term(min(m.prev_index, node.log.last_index()), m.prev_term)
    node._send(
        AppendResp(
            node.id,
            m.frm,
            node.term,
            index=m.prev_index,
            reject=True,
            hint_index=hint,
            hint_term=node.log.term(hint) or 0,
        )
    )

def handle_snapshot(node: RaftNode, m: InstallSnapshot) -> None:
    """Install the leader's snapshot, unless the log already holds its entries."""
    snap = m.snapshot
    if snap.index <= node.log.committed:
        node._send(InstallSnapshotResp(node.id, m.frm, node.term, node.log.committed))
        return
    if node.log.match_term(snap.index, snap.term):
        # We already hold the snapshot's entries: just fast-forward the commit.
        node.log.commit_to(snap.index)
        node._apply_committed_conf()
        node._send(InstallSnapshotResp(node.id, m.frm, node.term, node.log.last_index()))
        return
    node.log.restore(snap)
    node.conf = snap.conf
    node._conf_history = ConfHistory(snap.index, snap.conf)
    node._conf_applied_to = snap.index
    node._set_role(Role.FOLLOWER if node._promotable() else Role.LEARNER)
    node._emit("conf", f"installed snapshot at {snap.index}")
    node._send(InstallSnapshotResp(node.id, m.frm, node.term, snap.index))


def step_candidate(node: RaftNode, m: RaftMessage) -> None:
    """A candidate (or pre-candidate) steps a message of its own term."""
    if isinstance(m, FROM_LEADER):
        node._become_follower(m.term, m.frm)
        step_follower(node, m)
    elif isinstance(m, RequestVoteResp):
        if m.pre_vote != (node.role == Role.PRE_CANDIDATE):
            return
        result = election.poll(node, m.frm, m.granted)
        if result == "won":
            if node.role == Role.PRE_CANDIDATE:
                election.campaign(node, pre=False)
            else:
                node._become_leader()
                bcast_append(node)
        elif result == "lost":
            node._become_follower(node.term, "")
