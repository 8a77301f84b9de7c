"""What shortens crash detection without shortening any timeout: a broken stream
connection moves the member's probe forward, a probe whose helpers all Nacked
ends at once, and a death we declare is gossiped in the same tick."""

from __future__ import annotations

import pytest
from support.swim_nodes import CFG, addr, admit, drain, make, nid, state

from agent.swim import Outbound, SwimNode
from agent.swim.messages import Ack, Gossip, IndirectPingReq, MemberState, Nack, Ping, Suspect
from agent.swim.probe import ProbeHints


def _pings(out: list[Outbound]) -> list[Ping]:
    return [o.msg for o in out if isinstance(o.msg, Ping)]


def _helper_id(to: str) -> str:
    return nid(int(to.split(".")[3].split(":")[0]))


def _probe_and_ack(a: SwimNode, now: float) -> str:
    """Run one normal probe at ``now`` and answer it; returns the probed node id."""
    a.tick(now)
    out, _ = drain(a)
    (ping,) = _pings(out)
    a.step(now + 0.001, "x", Ack(ping.seq, ping.target))
    drain(a)
    return ping.target


def test_a_lost_connection_probes_that_member_now_not_at_its_turn() -> None:
    a = make(1)
    admit(a, [2, 3, 4, 5])
    first = _probe_and_ack(a, 1.0)  # the next round-robin probe is due one interval later
    other = next(i for i in (2, 3, 4, 5) if nid(i) != first)
    a.connection_lost(1.1, addr(other))
    assert a.next_deadline() == pytest.approx(1.1)
    a.tick(1.1)
    out, _ = drain(a)
    assert [p.target for p in _pings(out)] == [nid(other)]
    assert all(not o.reliable for o in out if isinstance(o.msg, Ping))


def test_hinted_probes_are_rate_limited_and_only_for_live_known_members() -> None:
    a = make(1)
    admit(a, [2, 3, 4, 5])
    first = _probe_and_ack(a, 1.0)
    other = next(i for i in (2, 3, 4, 5) if nid(i) != first)
    a.connection_lost(1.1, addr(other))
    a.tick(1.1)
    (ping,) = _pings(drain(a)[0])
    a.step(1.11, addr(other), Ack(ping.seq, nid(other)))
    drain(a)
    a.connection_lost(1.2, addr(other))  # again within one probe interval: no second probe
    a.connection_lost(1.2, "198.18.0.99:7900")  # nobody we know
    a.tick(1.2)
    assert _pings(drain(a)[0]) == []


def test_probe_hints_bound_their_queue_and_forget_old_entries() -> None:
    hints = ProbeHints(capacity=2)
    assert hints.add("a", 0.0, 1.0) and hints.add("b", 0.0, 1.0)
    assert not hints.add("c", 0.0, 1.0)  # full
    assert not hints.add("a", 0.0, 1.0)  # already queued
    assert hints.pop() == "a" and hints.pop() == "b" and hints.pop() is None
    assert not hints.add("a", 0.5, 1.0)  # hinted 0.5 s ago
    assert hints.add("a", 1.0, 1.0)


def _unanswered_probe(a: SwimNode) -> tuple[Ping, list[str]]:
    """Start a probe at 1.0 that gets no Ack: (the Ping, the indirect helpers' addresses)."""
    a.tick(1.0)
    (ping,) = _pings(drain(a)[0])
    a.tick(1.0 + CFG.probe_timeout)
    helpers = [o.to for o in drain(a)[0] if isinstance(o.msg, IndirectPingReq)]
    return ping, helpers


def test_a_probe_ends_as_soon_as_every_helper_nacks() -> None:
    a = make(1)
    admit(a, [2, 3, 4, 5])
    ping, helpers = _unanswered_probe(a)
    assert len(helpers) == 3
    target = int(ping.target, 16)
    at = 1.0 + CFG.probe_timeout + 0.4
    for helper in helpers:
        assert state(a, target) == MemberState.ALIVE  # not before the last Nack
        a.step(at, helper, Nack(ping.seq, _helper_id(helper)))
    _, events = drain(a)
    assert state(a, target) == MemberState.SUSPECT  # at the last Nack, before the interval ends
    assert at < 1.0 + CFG.probe_interval
    assert [e.kind for e in events] == ["suspect"]
    susp = a.table.get(ping.target).suspicion  # type: ignore[union-attr]
    assert susp is not None and susp.confirmations == susp.k  # the floor, from the helpers
    assert a.health_score == 0  # every expected Nack came: nothing against ourselves


def test_a_death_we_declare_is_gossiped_in_the_same_tick() -> None:
    a = make(1)
    admit(a, [2, 3, 4, 5])
    ping, helpers = _unanswered_probe(a)
    for helper in helpers:
        a.step(1.9, helper, Nack(ping.seq, _helper_id(helper)))
    drain(a)
    susp = a.table.get(ping.target).suspicion  # type: ignore[union-attr]
    assert susp is not None
    now = 1.9
    while now + 0.013 < susp.deadline:  # ticks off the gossip grid, as a runtime does
        now += 0.013
        a.tick(now)
        drain(a)
    a.tick(susp.deadline)
    out, _ = drain(a)
    assert state(a, int(ping.target, 16)) == MemberState.DEAD
    gossip = [o.msg for o in out if isinstance(o.msg, Gossip)]
    assert gossip and all(any(d.node == ping.target for d in g.gossip.dead) for g in gossip)


# ---------------------------------------------------------------- refused ports (issue 14)


def test_a_refused_port_alone_suspects_no_one() -> None:
    """One link's word (nft ``reject with tcp reset``): no suspicion, no broadcast."""
    a = make(1)
    admit(a, [2, 3, 4, 5])
    a.refused(1.0, addr(2))
    assert state(a, 2) == MemberState.ALIVE
    assert [o for o in drain(a)[0] if isinstance(o.msg, Gossip)] == []


def test_a_majority_of_refusers_makes_a_suspect_dead_at_once() -> None:
    """Node 5's process died: its port refuses everyone.  Our suspicion (a failed
    probe) plus refusals from two other members (3 of the 4 others, ourselves
    included) make it dead now, long before the suspicion timer."""
    a = make(1)
    admit(a, [2, 3, 4, 5])
    a.refused(1.0, addr(5))  # our own connect was refused ...
    a.step(1.0, addr(2), Suspect(0, nid(5), nid(2)))  # ... and node 2's probe failed
    assert state(a, 5) == MemberState.SUSPECT
    a.refused(1.0, addr(5))  # a running suspicion: confirmed with our refusal
    a.step(1.1, addr(2), Suspect(0, nid(5), nid(2), refused=True))
    assert state(a, 5) == MemberState.SUSPECT  # 2 of the 3 needed
    a.step(1.2, addr(3), Suspect(0, nid(5), nid(3), refused=True))
    assert state(a, 5) == MemberState.DEAD
    assert a.stats["refused_deaths"] == 1


def test_refusals_from_a_minority_leave_the_timer_to_decide() -> None:
    """Two members reset by nft (a bridge cut with reject) are not a majority of four."""
    a = make(1)
    admit(a, [2, 3, 4, 5])
    a.step(1.0, addr(2), Suspect(0, nid(5), nid(2), refused=True))
    a.step(1.1, addr(3), Suspect(0, nid(5), nid(3), refused=True))
    assert state(a, 5) == MemberState.SUSPECT
    a.step(1.2, addr(4), Suspect(0, nid(5), nid(4)))  # a plain confirmation counts for nothing here
    assert state(a, 5) == MemberState.SUSPECT


def test_our_failed_probe_carries_our_refusal() -> None:
    a = make(1)
    admit(a, [2, 3, 4, 5])
    ping, _ = _unanswered_probe(a)
    target = next(i for i in (2, 3, 4, 5) if nid(i) == ping.target)
    a.refused(1.1, addr(target))
    assert state(a, target) == MemberState.ALIVE
    a.tick(1.0 + CFG.probe_interval)  # the probe ends unanswered: we suspect it, refused
    member = a.table.get(nid(target))
    assert member is not None and member.state == MemberState.SUSPECT
    assert member.suspicion is not None and member.suspicion.refusals == 1
