"""Behaviour of the sans-IO Raft core, driven through the simulated network."""

from __future__ import annotations

import dataclasses
import pathlib
import random

import pytest
from sim.raftnet import SIM_CONFIG, MemoryStorage, RaftNet
from support.raft_sim import elected, put

from agent.errors import LocalError, NoQuorumError, NotLeaderError
from agent.raft.confchange import plan_voter_changes
from agent.raft.config import RaftConfig
from agent.raft.core import RaftNode, bootstrap_state
from agent.raft.messages import (
    AppendResp,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    RaftMessage,
    RequestVote,
    RequestVoteResp,
    RestoredState,
    Role,
)
from agent.raft.storage import Storage

ABC = ["a", "b", "c"]


def record_sends(net: RaftNet) -> list[RaftMessage]:
    sent: list[RaftMessage] = []
    original = net._send

    def spy(msg: RaftMessage) -> None:
        sent.append(msg)
        original(msg)

    net._send = spy  # type: ignore[method-assign]
    return sent


def test_three_nodes_elect_one_leader_and_replicate() -> None:
    net = RaftNet(11, ABC)
    leader = elected(net)
    put(net, leader.node_id, 20)
    net.run(10)
    for node in net.nodes.values():
        assert node.raft.leader_id == leader.node_id
        assert node.kv.data == {"k": "v19"}
    assert sum(n.raft.role == Role.LEADER for n in net.nodes.values()) == 1


def test_single_node_cluster_commits_alone() -> None:
    net = RaftNet(1, ["solo"])
    leader = elected(net, 50)
    put(net, "solo", 3)
    net.run(2)
    assert leader.kv.data == {"k": "v2"}


def test_propose_on_a_follower_names_the_leader() -> None:
    net = RaftNet(2, ABC)
    leader = elected(net)
    net.run(3)
    follower = next(n for n in net.nodes.values() if n is not leader)
    with pytest.raises(NotLeaderError) as err:
        follower.raft.propose(b"x")
    assert err.value.leader == leader.node_id


def test_pre_vote_keeps_a_rejoining_node_from_disrupting() -> None:
    net = RaftNet(3, ABC)
    leader = elected(net)
    term = leader.raft.term
    loner = next(n for n in ABC if n != leader.node_id)
    net.partition([loner], [n for n in ABC if n != loner])
    net.run(100)  # many election timeouts
    assert net.nodes[loner].raft.term == term, "pre-vote must not bump the term"
    net.heal()
    net.run(30)
    assert net.leader() is leader and leader.raft.term == term


def test_without_pre_vote_a_rejoining_node_disrupts() -> None:
    config = dataclasses.replace(SIM_CONFIG, pre_vote=False, check_quorum=False)
    net = RaftNet(3, ABC, config=config)
    leader = elected(net)
    term = leader.raft.term
    loner = next(n for n in ABC if n != leader.node_id)
    net.partition([loner], [n for n in ABC if n != loner])
    net.run(100)
    assert net.nodes[loner].raft.term > term + 2
    net.heal()
    net.run(60)
    assert max(n.raft.term for n in net.nodes.values()) > term + 2  # the contrast case


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    net = RaftNet(4, ABC)
    leader = elected(net)
    others = [n for n in ABC if n != leader.node_id]
    net.partition([leader.node_id], others)
    assert leader.raft.has_quorum_contact()
    net.run(2 * SIM_CONFIG.election_ticks + 1)
    assert leader.raft.role != Role.LEADER
    assert not leader.raft.has_quorum_contact()
    with pytest.raises(NotLeaderError):
        leader.raft.propose(b"x")
    assert net.wait_for(lambda: (n := net.leader()) is not None and n.node_id in others, 100)


def test_leadership_transfer() -> None:
    net = RaftNet(5, ABC)
    leader = elected(net)
    put(net, leader.node_id, 5)
    net.run(5)
    target = next(n for n in ABC if n != leader.node_id)
    term = leader.raft.term
    leader.raft.transfer_leadership(target)
    with pytest.raises(NotLeaderError):
        leader.raft.propose(b"x")  # proposals pause during the transfer
    net.run(10)
    new = net.leader()
    assert new is not None and new.node_id == target and new.raft.term == term + 1
    with pytest.raises(LocalError):
        new.raft.transfer_leadership("nobody")


def test_read_index_on_leader_and_follower() -> None:
    net = RaftNet(6, ABC)
    leader = elected(net)
    put(net, leader.node_id, 3)
    net.run(5)
    served: list[tuple[str, bytes, str]] = []
    net.on_read_state = lambda node, ctx: served.append((node.node_id, ctx, node.kv.data["k"]))
    follower = next(n for n in ABC if n != leader.node_id)
    leader.raft.read_index(b"r1")
    net.nodes[follower].raft.read_index(b"r2")
    net.run(10)
    assert sorted(served) == sorted([(leader.node_id, b"r1", "v2"), (follower, b"r2", "v2")])


def test_read_index_needs_a_quorum() -> None:
    net = RaftNet(7, ABC)
    leader = elected(net)
    net.run(3)
    served: list[bytes] = []
    net.on_read_state = lambda node, ctx: served.append(ctx)
    net.partition([leader.node_id], [n for n in ABC if n != leader.node_id])
    leader.raft.read_index(b"lonely")
    net.run(SIM_CONFIG.election_ticks - 1)
    assert served == []


def test_read_index_without_a_leader_fails_fast() -> None:
    node = RaftNode(SIM_CONFIG, "a", bootstrap_state(ABC), random.Random(1))
    with pytest.raises(NoQuorumError):
        node.read_index(b"x")
    assert not node.has_quorum_contact()


def test_snapshot_install_catches_up_a_lagging_follower() -> None:
    net = RaftNet(8, ABC)
    leader = elected(net)
    lagger = next(n for n in ABC if n != leader.node_id)
    net.crash(lagger)
    sent = record_sends(net)
    put(net, leader.node_id, 3 * SIM_CONFIG.snapshot_threshold)
    net.run(10)
    assert leader.raft.first_index() > 10, "leader did not compact its log"
    net.restart(lagger)
    net.run(20)
    assert any(isinstance(m, InstallSnapshot) and m.to == lagger for m in sent)
    assert net.nodes[lagger].kv.data == leader.kv.data
    assert net.nodes[lagger].raft.applied_index == leader.raft.applied_index


def test_learner_catches_up_and_is_promoted() -> None:
    net = RaftNet(9, ABC, others=["d"])
    leader = elected(net)
    put(net, leader.node_id, 10)
    net.run(5)
    assert net.nodes["d"].raft.role == Role.LEARNER
    assert net.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "d"))
    net.run(20)
    assert net.nodes["d"].kv.data == leader.kv.data
    assert net.nodes["d"].raft.conf.learners == ("d",)
    # A learner never campaigns, even when it hears nothing.
    net.partition(["d"], ABC)
    net.run(60)
    assert net.nodes["d"].raft.role == Role.LEARNER and net.nodes["d"].raft.votes == {}
    net.heal()
    net.run(5)
    assert net.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, "d"))
    net.run(20)
    assert net.nodes["d"].raft.conf.voters == ("a", "b", "c", "d")
    assert net.nodes["d"].raft.role == Role.FOLLOWER
    # With 4 voters the quorum is 3: the leader and one follower cannot commit.
    leader = elected(net)
    rest = [n for n in "abcd" if n != leader.node_id]
    net.partition([leader.node_id, rest[0]], rest[1:])
    before = leader.raft.commit_index
    net.propose(leader.node_id, b'[0, 0, "put", "k", "lost"]')
    net.run(5)
    assert leader.raft.commit_index == before


def test_only_one_membership_change_at_a_time() -> None:
    net = RaftNet(10, ABC, others=["d", "e"])
    leader = elected(net)
    leader.raft.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "d"))
    with pytest.raises(LocalError):
        leader.raft.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "e"))
    net.run(10)
    leader.raft.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "e"))
    net.run(10)
    with pytest.raises(LocalError, match="not a learner"):
        leader.raft.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, "a"))


def test_removed_leader_steps_down_and_the_rest_carry_on() -> None:
    net = RaftNet(12, ABC)
    leader = elected(net)
    leader.raft.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, leader.node_id))
    net.run(5)
    assert leader.raft.role == Role.LEARNER
    assert net.wait_for(lambda: (n := net.leader()) is not None and n is not leader, 100)
    new = net.leader()
    assert new is not None
    net.run(3)
    assert leader.node_id not in new.raft.conf.voters
    put(net, new.node_id, 2)
    net.run(5)
    assert new.kv.data == {"k": "v1"}


def diverged(node_id: str, tail_term: int, tail: range) -> RestoredState:
    base = bootstrap_state(ABC)
    entries = list(base.entries)
    for i in range(len(entries) + 1, 101):
        entries.append(Entry(1, i, EntryKind.NORMAL, b'[0, 0, "put", "z", "common"]'))
    mine = f'[0, 0, "put", "z", "term{tail_term}"]'.encode()
    entries += [Entry(tail_term, i, EntryKind.NORMAL, mine) for i in tail]
    return RestoredState(HardState(term=3, vote="", commit=100), None, tuple(entries))


def test_fast_back_off_skips_a_whole_divergent_term() -> None:
    net = RaftNet(13, ABC, compact=False)  # no snapshot shortcut: pure log back-off
    # a and c share a term-3 suffix; b has 200 uncommitted term-2 entries.
    for node_id in ("a", "c"):
        net._start(node_id, MemoryStorage(diverged(node_id, 3, range(101, 151))))
    net._start("b", MemoryStorage(diverged("b", 2, range(101, 301))))
    sent = record_sends(net)
    leader = elected(net)
    assert leader.node_id in ("a", "c")
    net.run(10)
    rejects = [m for m in sent if isinstance(m, AppendResp) and m.reject and m.frm == "b"]
    assert 1 <= len(rejects) <= 3
    assert net.nodes["b"].raft.log.last_index() == leader.raft.log.last_index()
    net.check_log_matching()


def test_restart_from_real_storage(tmp_path: pathlib.Path) -> None:
    store = Storage.open(tmp_path)
    boot = bootstrap_state(["solo"])
    store.append(list(boot.entries), boot.hard_state)
    store.sync()
    assert store.load().entries == ()  # load() reports what was found at open
    node = RaftNode(SIM_CONFIG, "solo", boot, random.Random(1))
    applied: list[bytes] = []

    def drain(n: RaftNode) -> None:
        while (rd := n.ready()) is not None:
            if rd.snapshot:
                store.save_snapshot(rd.snapshot)
            store.append(rd.entries, rd.hard_state)
            if rd.must_sync:
                store.sync()
            applied.extend(e.data for e in rd.committed_entries if e.kind == EntryKind.NORMAL)
            n.advance(rd)

    for _ in range(30):
        node.tick()
        drain(node)
    assert node.role == Role.LEADER
    for i in range(5):
        node.propose(b"cmd%d" % i)
    drain(node)
    drain(node)
    assert applied == [b"cmd%d" % i for i in range(5)]
    snap = node.compact(node.applied_index, b"state")
    store.save_snapshot(snap)
    store.compact(node.first_index())
    store.close()
    store = Storage.open(tmp_path)
    restored = store.load()
    again = RaftNode(SIM_CONFIG, "solo", restored, random.Random(2))
    assert restored.snapshot is not None and restored.snapshot.data == b"state"
    assert again.commit_index == node.commit_index and again.term == node.term
    assert again.conf == ConfState(("solo",))


# ------------------------------------------------------------------ autopilot


@pytest.mark.parametrize(
    ("voters", "learners", "alive", "dead", "caught_up", "want"),
    [
        # healthy, full: nothing to do
        ("abcde", "", "abcde", "", "", None),
        # a new node joins as a learner
        ("abc", "", "abcd", "", "", ("ADD_LEARNER", "d")),
        # a caught-up learner is promoted while there is room
        ("abc", "d", "abcd", "", "d", ("PROMOTE", "d")),
        # a learner that is not caught up waits
        ("abc", "d", "abcd", "", "", None),
        # full voter set with a dead voter and a replacement ready: make room first
        ("abcde", "f", "abcdf", "e", "f", ("REMOVE", "e")),
        # then the replacement is promoted
        ("abcd", "f", "abcdf", "e", "f", ("PROMOTE", "f")),
        # dead voter, nobody to replace it, 3 would remain: drop it
        ("abcd", "", "abc", "d", "", ("REMOVE", "d")),
        # dead voter among 3 with no replacement: keep it (it rejoins when back)
        ("abc", "", "ab", "c", "", None),
        # a dead learner is removed
        ("abc", "x", "abc", "x", "", ("REMOVE", "x")),
        # a node back from the dead rejoins as a learner
        ("ab", "", "abc", "", "", ("ADD_LEARNER", "c")),
        # one voter and one ready learner: stay at one voter (two tolerate no failure)
        ("a", "b", "ab", "", "b", None),
        # one voter and two ready learners: promote one, the other follows at once
        ("a", "bc", "abc", "", "bc", ("PROMOTE", "b")),
        ("ab", "c", "abc", "", "c", ("PROMOTE", "c")),
    ],
)
def test_plan_voter_changes(
    voters: str, learners: str, alive: str, dead: str, caught_up: str, want: tuple[str, str] | None
) -> None:
    conf = ConfState(tuple(voters), tuple(learners))
    got = plan_voter_changes(conf, set(alive), set(dead), 5, set(caught_up))
    assert (None if got is None else (got.kind.name, got.node_id)) == want


def test_config_profiles_validate() -> None:
    assert RaftConfig.lan().validate().election_timeout == pytest.approx(1.0)
    assert RaftConfig.local().validate().election_timeout >= 0.5
    with pytest.raises(Exception, match="election_ticks"):
        RaftConfig(election_ticks=1).validate()


def drain_local(node: RaftNode) -> list[RaftMessage]:
    out: list[RaftMessage] = []
    while (rd := node.ready()) is not None:
        out += rd.messages
        node.advance(rd)
    return out


def test_leader_never_commits_an_old_term_entry_by_counting() -> None:
    # Raft §5.4.2 / Figure 8: entry 7 (term 2) is on a majority (a and b), but the
    # term-3 leader may only commit it together with an entry of its own term.
    entries = [*bootstrap_state(ABC).entries, Entry(2, 7, EntryKind.NORMAL, b"old")]
    restored = RestoredState(HardState(term=2, vote="", commit=6), None, tuple(entries))
    node = RaftNode(SIM_CONFIG, "a", restored, random.Random(5))
    while node.role != Role.PRE_CANDIDATE:
        node.tick()
    node.step(RequestVoteResp("b", "a", 3, True, pre_vote=True))
    assert node.role == Role.CANDIDATE and node.term == 3
    node.step(RequestVoteResp("b", "a", 3, True))
    assert node.role == Role.LEADER
    drain_local(node)  # persists the term-3 empty entry at index 8
    node.step(AppendResp("b", "a", 3, index=7))
    drain_local(node)
    assert node.commit_index == 6, "committed a term-2 entry by counting replicas"
    node.step(AppendResp("b", "a", 3, index=8))
    drain_local(node)
    assert node.commit_index == 8


def test_votes_need_an_up_to_date_log_and_are_given_once_per_term() -> None:
    node = RaftNode(SIM_CONFIG, "a", bootstrap_state(ABC), random.Random(6))
    node.fresh_start = False  # (a restarted voter first waits for its StartCheck: see test_raft_repair)
    drain_local(node)
    # b's log is behind (last term 0): refused.
    node.step(RequestVote("b", "a", 2, last_index=0, last_term=0))
    out = drain_local(node)
    assert [type(m).__name__ for m in out] == ["RequestVoteResp"] and not out[0].granted  # type: ignore[union-attr]
    node.step(RequestVote("b", "a", 2, last_index=6, last_term=1))
    node.step(RequestVote("c", "a", 2, last_index=6, last_term=1))
    votes = [m for m in drain_local(node) if isinstance(m, RequestVoteResp)]
    assert [(m.to, m.granted) for m in votes] == [("b", True), ("c", False)]
    assert node.vote == "b"


def test_commit_advances_reach_each_follower_once_per_ready() -> None:
    """Acks from both followers in a row: the next Ready tells each follower the new
    commit once, riding on new entries when there are some, never an extra empty one."""
    from agent.raft.messages import AppendEntries

    node = RaftNode(SIM_CONFIG, "a", bootstrap_state(ABC), random.Random(7))
    while node.role != Role.PRE_CANDIDATE:
        node.tick()
    node.step(RequestVoteResp("b", "a", node.term + 1, True, pre_vote=True))
    node.step(RequestVoteResp("b", "a", node.term, True))
    assert node.role == Role.LEADER
    drain_local(node)
    last = node.propose(b"x")[0]
    for peer in ("b", "c"):
        node.step(AppendResp(peer, "a", node.term, index=node.log.last_index() - 1))
    drain_local(node)  # both followers now in REPLICATE, entries up to `last` sent
    for peer in ("b", "c"):
        node.step(AppendResp(peer, "a", node.term, index=last))
    node.propose(b"y")
    sent = [m for m in drain_local(node) if isinstance(m, AppendEntries)]
    assert node.commit_index == last
    assert sorted(m.to for m in sent) == ["b", "c"]
    assert all(m.commit == last and len(m.entries) == 1 for m in sent)
    for peer in ("b", "c"):
        node.step(AppendResp(peer, "a", node.term, index=last + 1))
    sent = [m for m in drain_local(node) if isinstance(m, AppendEntries)]
    # Nothing new to send: one empty append each, only to carry the commit.
    assert sorted(m.to for m in sent) == ["b", "c"]
    assert all(m.commit == last + 1 and not m.entries for m in sent)
    assert not [m for m in drain_local(node) if isinstance(m, AppendEntries)]


def test_a_large_state_defers_the_next_snapshot_until_the_log_matches_it() -> None:
    net = RaftNet(8, ABC, compact=False)
    raft = elected(net).raft
    threshold = SIM_CONFIG.snapshot_threshold
    put(net, raft.id, 6 * threshold)
    net.run(100)
    # A small state: the next snapshot is due after snapshot_threshold entries.
    raft.compact(10, b"s")
    assert raft.should_snapshot()
    entries = raft.log.slice(11, 11 + threshold)
    entry_bytes = sum(len(e.data) + 16 for e in entries) // len(entries)
    # A state as large as 3x threshold entries: not due after 2x threshold + 5 ...
    raft.compact(raft.applied_index - 2 * threshold - 5, b"s" * (3 * threshold * entry_bytes))
    assert not raft.should_snapshot()
    # ... one as large as 2x threshold entries is, after 2x threshold.
    raft.compact(raft.applied_index - 2 * threshold, b"s" * (2 * threshold * entry_bytes))
    assert raft.should_snapshot()
    # However large the state, never more than SNAPSHOT_STRETCH x threshold.
    put(net, raft.id, 5 * threshold)
    net.run(100)
    raft.compact(raft.applied_index - 4 * threshold + 1, b"s" * 10**7)
    assert not raft.should_snapshot()
    put(net, raft.id, 1)
    net.run(50)
    assert raft.should_snapshot()


# ------------------------------------------------------------------ leader lost (issue 14)


@pytest.mark.parametrize("seed", range(12))
def test_followers_that_lost_the_leader_elect_a_new_one_well_within_an_election_timeout(seed: int) -> None:
    """Every follower saw the leader's connection refused and one campaigns: a new
    leader in a few ticks, where the election timeout alone takes at least
    ``election_ticks`` (the runtime spreads the followers' campaigns in time)."""
    net = RaftNet(seed, list("abcde"))
    old = elected(net)
    net.run(3)
    term = old.raft.term
    net.crash(old.node_id)
    net.run(3)  # what it sent before dying is delivered
    survivors = [n for n in net.nodes.values() if n.up]
    for node in survivors:
        node.raft.leader_lost()
    start = net.now
    net.rng.choice(survivors).raft.campaign()
    assert net.wait_for(lambda: (n := net.leader()) is not None and n.raft.term > term, 100)
    assert net.now - start < SIM_CONFIG.election_ticks, f"{net.now - start} ticks"


@pytest.mark.parametrize("seed", range(12))
def test_one_follower_losing_its_link_to_a_live_leader_deposes_no_one(seed: int) -> None:
    """A reset on one link (nft ``reject with tcp reset``): that follower's word
    alone moves nobody, the others are in the lease."""
    net = RaftNet(seed, ABC)
    leader = elected(net)
    net.run(3)
    term = leader.raft.term
    follower = next(n for n in net.nodes.values() if n is not leader)
    net.cut.add(frozenset((leader.node_id, follower.node_id)))
    follower.raft.leader_lost()
    follower.raft.campaign()
    net.run(4 * SIM_CONFIG.election_ticks)
    assert leader.raft.role == Role.LEADER and leader.raft.term == term
