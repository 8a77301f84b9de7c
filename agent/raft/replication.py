"""The leader's half of the Raft core: replication, commit, heartbeats, ReadIndex.

Theory of operation
-------------------
These functions act on a ``RaftNode`` in the LEADER role (they are split out of
``core.py`` to keep each module to one concern; they use its state directly).

* Replication: each follower's ``Progress`` (see ``progress.py``) decides what
  to send.  ``send_append`` sends the entries after ``next - 1`` in batches of
  at most ``max_size_per_msg`` bytes, or the newest snapshot when those entries
  are compacted away.  Rejections carry a conflict hint (the follower's last
  index with a term <= the probed term); the leader jumps to its own last index
  with a term <= the hinted term, skipping a whole divergent term per round trip.
* Commit: the highest index a quorum of voters holds (the leader counts only
  what it has persisted), and only if that entry is of the current term (Raft
  §5.4.2); earlier entries commit with it.
* Check-quorum: every election timeout the leader checks that a quorum of voters
  answered within the last timeout, else steps down.
* ReadIndex: remember the commit index, confirm leadership with one heartbeat
  round, then release the read (locally or as ReadIndexResp to a follower).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.raft.messages import (
    AppendEntries,
    AppendResp,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    InstallSnapshotResp,
    RaftMessage,
    ReadIndexReq,
    ReadIndexResp,
    ReadState,
    Role,
    TimeoutNow,
)
from agent.raft.progress import Progress, ProgressState

if TYPE_CHECKING:
    from agent.raft.core import RaftNode


def tick_leader(node: RaftNode) -> None:
    node._heartbeat_elapsed += 1
    node.election_elapsed += 1
    if node.election_elapsed >= node.config.election_ticks:
        node.election_elapsed = 0
        if node.config.check_quorum and not quorum_active(node):
            node._emit("election", "lost contact with a quorum: stepping down")
            node._become_follower(node.term, "")
            return
        if node.lead_transferee:
            node._emit("leader", f"transfer to {node.lead_transferee} timed out")
            node.lead_transferee = ""
    for peer, pr in node.prs.items():
        if pr.state == ProgressState.SNAPSHOT:
            pr.snapshot_ticks += 1
            if pr.snapshot_ticks > node.config.election_ticks:
                # The snapshot (or its ack) was lost: probe again from the match.
                pr.pending_snapshot = 0
                pr.become_probe()
                send_append(node, peer)
    if node._heartbeat_elapsed >= node.config.heartbeat_ticks:
        node._heartbeat_elapsed = 0
        bcast_heartbeat(node, node._read_only.last_key())


def quorum_active(node: RaftNode) -> bool:
    horizon = node._ticks - node.config.election_ticks
    voters = node.conf.voters
    active = sum(1 for v in voters if v == node.id or (v in node.prs and node.prs[v].last_heard >= horizon))
    return active >= len(voters) // 2 + 1


def step_leader(node: RaftNode, m: RaftMessage) -> None:
    if isinstance(m, ReadIndexReq):
        read_index(node, m.ctx, m.frm)
        return
    pr = node.prs.get(m.frm)
    if pr is None:
        return
    if isinstance(m, AppendResp):
        pr.last_heard = node._ticks
        handle_append_resp(node, m, pr)
    elif isinstance(m, HeartbeatResp):
        pr.last_heard = node._ticks
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            # Appends may have been lost: let one more through to provoke a reject.
            pr.inflights.free_first_one()
        if pr.match < node.log.last_index():
            send_append(node, m.frm)
        if m.ctx:
            read_ack(node, m.ctx, m.frm)
    elif isinstance(m, InstallSnapshotResp):
        pr.last_heard = node._ticks
        if pr.maybe_update(m.index) and maybe_commit(node):
            node._append_pending = True
        if pr.state == ProgressState.SNAPSHOT:
            pr.become_probe()
        send_append(node, m.frm)


def handle_append_resp(node: RaftNode, m: AppendResp, pr: Progress) -> None:
    if m.reject:
        probe = m.hint_index
        if m.hint_term > 0:
            probe = node.log.find_conflict_by_term(m.hint_index, m.hint_term)
        if pr.maybe_decrease_to(m.index, probe):
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            send_append(node, m.frm)
        return
    was_paused = pr.is_paused()
    if not pr.maybe_update(m.index):
        return
    if pr.state == ProgressState.PROBE:
        pr.become_replicate()
    elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
        pr.become_probe()
        pr.become_replicate()
    else:
        pr.inflights.free_to(m.index)
    if maybe_commit(node):
        # Tell everyone the new commit in the next Ready, once, riding on new
        # entries where there are some: several acks in a row (one per
        # follower, per batch) then cost one message per follower, not one each.
        node._append_pending = True
    if was_paused:
        send_append(node, m.frm)
    while send_append(node, m.frm, send_if_empty=False):
        pass
    if m.frm == node.lead_transferee and pr.match == node.log.last_index():
        node._send(TimeoutNow(node.id, m.frm, node.term))


def send_append(node: RaftNode, to: str, send_if_empty: bool = True) -> bool:
    pr = node.prs.get(to)  # a committed membership change may just have removed it
    if pr is None or pr.is_paused():
        return False
    prev = pr.next - 1
    prev_term = node.log.term(prev)
    if prev_term is None:
        # The entries it needs are compacted away: send the snapshot instead.
        snapshot = node.log.snapshot
        if snapshot is None or pr.last_heard < node._ticks - node.config.election_ticks:
            return False
        node._send(InstallSnapshot(node.id, to, node.term, snapshot))
        pr.become_snapshot(snapshot.index)
        return True
    last = node.log.last_index()
    ents = []
    if prev < last:
        ents = node.log.slice(pr.next, last + 1, node.config.max_size_per_msg)
    if not ents and not send_if_empty:
        return False
    commit = node.log.committed
    node._send(AppendEntries(node.id, to, node.term, prev, prev_term, tuple(ents), commit))
    pr.commit_sent = commit
    if ents and pr.state == ProgressState.REPLICATE:
        pr.next = ents[-1].index + 1
        pr.inflights.add(ents[-1].index)
    elif pr.state == ProgressState.PROBE:
        pr.probe_sent = True
    return True


def bcast_append(node: RaftNode) -> None:
    for peer in node.prs:
        if peer != node.id:
            send_append(node, peer)


def bcast_news(node: RaftNode) -> None:
    """Send each peer its unsent entries, or an empty append if it has not been
    told the current commit index; nothing to a peer that has both."""
    committed = node.log.committed
    for peer, pr in node.prs.items():
        if peer != node.id:
            send_append(node, peer, send_if_empty=pr.commit_sent < committed)


def bcast_heartbeat(node: RaftNode, ctx: bytes) -> None:
    for peer, pr in node.prs.items():
        if peer != node.id:
            commit = min(pr.match, node.log.committed)
            node._send(Heartbeat(node.id, peer, node.term, commit, ctx))


def maybe_commit(node: RaftNode) -> bool:
    voters = node.conf.voters
    if not voters:
        return False
    matches = sorted((node.prs[v].match if v in node.prs else 0 for v in voters), reverse=True)
    candidate = matches[len(voters) // 2]
    if candidate <= node.log.committed or node.log.term(candidate) != node.term:
        return False
    node.log.commit_to(candidate)
    node._apply_committed_conf()
    if node.role == Role.LEADER and node._reads_awaiting_commit:
        waiting, node._reads_awaiting_commit = node._reads_awaiting_commit, []
        for ctx, requester in waiting:
            read_index(node, ctx, requester)
    return True


def read_index(node: RaftNode, ctx: bytes, requester: str) -> None:
    if node.log.term(node.log.committed) != node.term:
        # Until an entry of our term commits we do not know the true commit index.
        node._reads_awaiting_commit.append((ctx, requester))
        return
    if node.conf.voters == (node.id,):
        deliver_read(node, requester, node.log.committed, ctx)
        return
    key = node._read_only.add(node.log.committed, requester, ctx)
    read_ack(node, key, node.id)
    bcast_heartbeat(node, key)


def read_ack(node: RaftNode, key: bytes, voter: str) -> None:
    acks = node._read_only.ack(key, voter)
    if acks is None:
        return
    if sum(1 for v in node.conf.voters if v in acks) >= len(node.conf.voters) // 2 + 1:
        for read in node._read_only.release_through(key):
            deliver_read(node, read.requester, read.index, read.ctx)


def deliver_read(node: RaftNode, requester: str, index: int, ctx: bytes) -> None:
    if requester == node.id:
        node._read_states.append(ReadState(index, ctx))
    else:
        node._send(ReadIndexResp(node.id, requester, node.term, ctx, index))
