"""Protocol-aware repair in the Raft core (agent/raft/repair.py), over the in-memory net."""

from __future__ import annotations

import random

from sim.raftnet import SIM_CONFIG, RaftNet
from support.raft_sim import elected, put

from agent.raft.core import RaftNode, bootstrap_state
from agent.raft.messages import (
    ConfChange,
    ConfChangeKind,
    HardState,
    RequestVote,
    RequestVoteResp,
    RestoredState,
)

ABC = ["a", "b", "c"]


def repaired(net: RaftNet, node_id: str) -> bool:
    leader = net.leader()
    node = net.nodes[node_id]
    return (
        leader is not None
        and node.up
        and not node.raft.damaged
        and node.raft.applied_index == leader.raft.commit_index
        and node.kv.data == leader.kv.data
    )


def test_a_node_whose_disk_lost_acknowledged_entries_is_demoted_wiped_and_caught_up() -> None:
    net = RaftNet(21, ABC)
    leader = elected(net)
    put(net, leader.node_id, 30, first=0, key=None)
    net.run(20)
    victim = next(n for n in ABC if n != leader.node_id)
    assert net.lie(victim, 5) == 5
    net.restart(victim)
    assert net.nodes[victim].raft.damaged == "lost 5 acknowledged entries"
    assert net.wait_for(lambda: repaired(net, victim), 300), net.nodes[victim].raft.damaged
    leader = elected(net)
    assert victim in leader.raft.conf.learners, "repaired as a learner first"
    assert net.repairs == 1
    # Promoted again (the runtime's autopilot does this once it caught up).
    assert net.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, victim))
    assert net.wait_for(lambda: victim in net.nodes[victim].raft.conf.voters, 100)
    put(net, leader.node_id, 5, first=100, key=None)
    assert net.wait_for(lambda: repaired(net, victim), 100)


def test_a_damaged_node_grants_no_vote_and_never_campaigns() -> None:
    state = bootstrap_state(ABC)
    restored = RestoredState(HardState(1, "", 0), None, state.entries, damaged="wal: 3 entries lost")
    node = RaftNode(SIM_CONFIG, "a", restored, random.Random(1))
    for _ in range(SIM_CONFIG.election_ticks * 3):
        node.tick()
    node.step(RequestVote("b", "a", 5, last_index=100, last_term=4))
    rd = node.ready()
    assert rd is not None
    votes = [m for m in rd.messages if isinstance(m, RequestVoteResp)]
    assert votes and not any(v.granted for v in votes)
    assert not any(type(m).__name__ == "RequestVote" for m in rd.messages)
    assert node.term == 5 and node.vote == ""


def test_a_data_dir_restored_from_an_older_copy_is_caught_by_the_start_check() -> None:
    net = RaftNet(22, ABC)
    leader = elected(net)
    put(net, leader.node_id, 10, first=0, key=None)
    net.run(20)
    victim = next(n for n in ABC if n != leader.node_id)
    backup = net.nodes[victim].storage.copy()
    put(net, leader.node_id, 20, first=10, key=None)
    net.run(20)
    assert net.nodes[victim].raft.applied_index > backup.restored().entries[-1].index
    net.restore_copy(victim, backup)
    net.restart(victim)
    assert not net.nodes[victim].raft.damaged  # consistent with itself: storage cannot tell
    assert net.wait_for(lambda: bool(net.nodes[victim].raft.damaged), 50), "the leader did not catch it"
    assert "restored from an older copy" in net.nodes[victim].raft.damaged
    assert net.wait_for(lambda: repaired(net, victim), 300)
    assert net.repairs == 1


def test_a_restarted_voter_waits_one_election_timeout_before_voting() -> None:
    node = RaftNode(SIM_CONFIG, "a", bootstrap_state(ABC), random.Random(2))
    node.step(RequestVote("b", "a", 2, last_index=6, last_term=1))
    rd = node.ready()
    assert rd is None or not [m for m in rd.messages if isinstance(m, RequestVoteResp)]
    if rd is not None:
        node.advance(rd)
    for _ in range(SIM_CONFIG.election_ticks):
        node.tick()
    assert not node.fresh_start
    node.step(RequestVote("b", "a", 3, last_index=6, last_term=1))
    rd = node.ready()
    assert rd is not None
    assert [m.granted for m in rd.messages if isinstance(m, RequestVoteResp)] == [True]
