"""Leader election: pre-vote, vote, and the vote-granting rule.

Theory of operation
-------------------
A follower whose election timer fires (or that receives TimeoutNow) calls
``hup``.  With pre-vote it first asks the voters whether they *would* vote for
it at term+1, changing no state anywhere; only if a quorum says yes does it
bump its term and run the real election.  A node cut off by a partition thus
keeps its term and cannot depose a healthy leader when it returns.  Votes are
granted to a candidate whose log is at least as up to date (last term, then
last index; Raft §5.4.1), once per term; pre-votes whenever the candidate's
proposed term is higher than ours.  The leader-lease check (voters that heard
from a leader recently ignore vote requests) lives in ``RaftNode.step``.
Split out of ``core.py``; these functions act on a ``RaftNode`` directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.raft.messages import RequestVote, RequestVoteResp, Role

if TYPE_CHECKING:
    from agent.raft.core import RaftNode


def hup(node: RaftNode, transfer: bool) -> None:
    if node.role == Role.LEADER or not node._promotable():
        return
    campaign(node, pre=node.config.pre_vote and not transfer, transfer=transfer)


def campaign(node: RaftNode, pre: bool, transfer: bool = False) -> None:
    if pre:
        node._reset(node.term)
        node._set_role(Role.PRE_CANDIDATE)
        vote_term = node.term + 1
        node._emit("election", f"pre-vote for term {vote_term}")
    else:
        node._reset(node.term + 1)
        node.vote = node.id
        node._set_role(Role.CANDIDATE)
        vote_term = node.term
        node._emit("election", f"campaigning in term {vote_term}")
    if poll(node, node.id, True) == "won":
        if pre:
            campaign(node, pre=False)
        else:
            node._become_leader()
        return
    for voter in node.conf.voters:
        if voter != node.id:
            node._send(
                RequestVote(
                    node.id,
                    voter,
                    vote_term,
                    node.log.last_index(),
                    node.log.last_term(),
                    pre_vote=pre,
                    transfer=transfer,
                )
            )


def poll(node: RaftNode, voter: str, granted: bool) -> str:
    node.votes.setdefault(voter, granted)
    voters = node.conf.voters
    yes = sum(1 for v in voters if node.votes.get(v) is True)
    no = sum(1 for v in voters if node.votes.get(v) is False)
    quorum = len(voters) // 2 + 1
    if yes >= quorum:
        return "won"
    if no > len(voters) - quorum:
        return "lost"
    return "pending"


def handle_vote_request(node: RaftNode, m: RequestVote) -> None:
    if node.damaged:
        # Our disk lost entries we acknowledged (repair.py): lending our log to an
        # election could elect a leader that lacks committed entries.  Once the
        # leader has committed our demotion, the voters that committed it hold
        # everything before it, so a wiped node's vote no longer matters.
        node._send(RequestVoteResp(node.id, m.frm, node.term, False, pre_vote=m.pre_vote))
        return
    can_vote = (
        node.vote == m.frm
        or (node.vote == "" and node.leader_id == "")
        or (m.pre_vote and m.term > node.term)
    )
    if can_vote and node.log.is_up_to_date(m.last_index, m.last_term):
        node._send(RequestVoteResp(node.id, m.frm, m.term, True, pre_vote=m.pre_vote))
        if not m.pre_vote:
            node.election_elapsed = 0
            node.vote = m.frm
            node._emit("vote", f"voted for {m.frm} in term {m.term}")
    else:
        node._send(RequestVoteResp(node.id, m.frm, node.term, False, pre_vote=m.pre_vote))
