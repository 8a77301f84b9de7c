"""Repairing a node whose storage lost what it acknowledged (protocol-aware recovery).

Theory of operation
-------------------
A Raft voter promises two things to the rest of the cluster: every entry it
acknowledged is durable, and it votes at most once per term.  A disk that drops
synced writes (a zeroed tail, a lost segment, a missing snapshot, a data dir
restored from an older copy) silently breaks both; if such a node kept voting
it could elect a leader that lacks committed entries (Alagappan et al., FAST
2018, "Protocol-Aware Recovery for Consensus-Based Storage").

A broken promise is noticed locally (``RestoredState.damaged``): storage
keeps a durable record of the last index, term and vote it acknowledged apart
from the log records (``storage.py``); damage below it means entries were
lost.  Such a node neither campaigns, nor grants votes, nor acknowledges
appends.  It answers a leader with ``RepairRequest``.

The leader demotes the node to a learner (one ``DEMOTE`` change, committed by
the *other* voters, which must therefore be a healthy majority) and forgets its
progress, so the autopilot promotes it again only once it has really caught
up.  Once the demotion is committed the node is told ``RepairGrant``; it then
drops its whole log and state machine (``Ready.reset_storage``) and receives a
snapshot and the log like a new learner.

Rules (leader side):

============================  ===========================================
RepairRequest from a voter    propose DEMOTE (once no change is pending)
RepairRequest from non-voter  send RepairGrant, probe it from scratch
StartCheck                    answer with the match index it acknowledged
============================  ===========================================

(A leader could also notice a follower whose append reject hints below its
``match``; we tried it, and delayed or duplicated rejects from before the
follower caught up look the same, so it demoted healthy nodes.  Not done.)

**A data dir restored from an older copy** (a backup, a VM snapshot) is
consistent with itself, so storage cannot tell.  Every voter therefore starts
"fresh": for one election timeout, or until the leader has answered its
``StartCheck``, it grants no votes (as if it were in a leader's lease), and
on the first message from a leader it reports where its log ends.  If the
leader saw it acknowledge more than that (``Progress.match``), the node
marks itself damaged and goes through the repair above.  A restore that
coincides with a change of leader is not caught this way (the new leader
never saw the old acknowledgements): it then behaves as a node that was down.

A damaged node grants no votes.  Once its demotion is committed, a majority
of the old configuration that excludes it holds every entry before the
demotion, so a candidate lacking one cannot win even with the wiped node's
vote: from then on it may vote like any learner.

What this cannot catch: a node that lost its last synced writes *and* the
record of what it acknowledged (the whole fsync was dropped).  It is then
indistinguishable from a node that crashed before acknowledging; if it votes
in that window, a committed write it alone shared with a dead leader can be
lost.  Storage keeps the record in a separate block so that a lost tail does
not take it along (``storage.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.errors import LocalError
from agent.raft.messages import (
    ConfChange,
    ConfChangeKind,
    RepairGrant,
    RepairRequest,
    StartCheck,
    StartCheckResp,
)

if TYPE_CHECKING:
    from agent.raft.core import RaftNode
    from agent.raft.progress import Progress


def handle_request(node: RaftNode, m: RepairRequest) -> None:
    """Leader: a node reports that its storage lost acknowledged entries."""
    peer = m.frm
    if peer in node.conf.voters:
        demote(node, peer, m.reason or "storage damage reported")
        return
    node._send(RepairGrant(node.id, peer, node.term))
    pr = node.prs.get(peer)
    if pr is not None:
        _forget(pr, node.log.last_index() + 1)


def demote(node: RaftNode, peer: str, reason: str) -> None:
    if node.pending_conf_index > node.log.committed:
        return  # one change at a time; the damaged node asks again on the next heartbeat
    try:
        node.propose_conf_change(ConfChange(ConfChangeKind.DEMOTE, peer))
    except LocalError:
        return  # the last voter, or not a voter any more
    node._emit("repair", f"demoting {peer} to learner: {reason}")
    pr = node.prs.get(peer)
    if pr is not None:
        # Forget what it acknowledged: the autopilot must not promote it back
        # until it has caught up again.
        _forget(pr, pr.next)


def _forget(pr: Progress, next_index: int) -> None:
    pr.match = 0
    pr.become_probe()
    pr.next = max(1, next_index)  # probe from here; a reject's hint backs off fast


def handle_grant(node: RaftNode, m: RepairGrant) -> None:
    """Damaged node: the leader took our vote away; drop everything and catch up."""
    if not node.damaged:
        return
    node.wipe_for_repair(m.frm)


def handle_start_check(node: RaftNode, m: StartCheck) -> None:
    """Leader: a restarted voter says where its log ends; tell it what it acknowledged."""
    pr = node.prs.get(m.frm)
    node._send(StartCheckResp(node.id, m.frm, node.term, pr.match if pr is not None else 0))


def handle_start_check_resp(node: RaftNode, m: StartCheckResp) -> None:
    """Restarted voter: the leader's record of our acknowledgements against our log."""
    node.fresh_start = False
    last = node.log.last_index()
    if m.acknowledged > last and not node.damaged:
        node.damaged = (
            f"leader {m.frm} saw this node acknowledge up to index {m.acknowledged} but its log ends"
            f" at {last} (data dir restored from an older copy, or a disk that lost synced writes)"
        )
        node._emit("repair", node.damaged)
        node._become_follower(node.term, m.frm)
