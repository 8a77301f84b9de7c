"""SwimNode behaviour, message by message: admission, probes, suspicion, refutation,
leave, health, datagram bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.swim_nodes import CFG, addr, admit, drain, make, meta, nid, state

from agent.errors import ConfigError
from agent.swim import Outbound, SwimConfig, SwimNode
from agent.swim.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    IndirectPingReq,
    MemberState,
    Nack,
    NodeLoad,
    NodeMeta,
    Piggyback,
    Ping,
    PushPull,
    PushPullState,
    Suspect,
)
from agent.swim.sizing import message_size
from agent.swim.timing import suspicion_bounds


def test_join_sends_push_pull_and_admission_happens_only_on_the_exchange() -> None:
    a, b = make(1), make(2)
    a.join(0.0, [addr(2), addr(1), addr(2)])  # own address and duplicates skipped
    out, _ = drain(a)
    assert len(out) == 1 and out[0].to == addr(2) and out[0].reliable
    assert isinstance(out[0].msg, PushPull) and out[0].msg.join
    assert len(a.members()) == 1  # join() admits nobody by itself
    b.step(0.01, addr(1), out[0].msg)
    out_b, ev_b = drain(b)
    assert [e.kind for e in ev_b] == ["join"] and ev_b[0].member.id == nid(1)
    reply = out_b[0]
    assert reply.to == addr(1) and reply.reliable and isinstance(reply.msg, PushPull)
    assert reply.msg.reply
    a.step(0.02, addr(2), reply.msg)
    out_a, ev_a = drain(a)
    assert [e.kind for e in ev_a] == ["join"] and state(a, 2) == MemberState.ALIVE
    assert not any(isinstance(o.msg, PushPull) for o in out_a)  # a reply is not answered


def test_gossip_admits_unknown_nodes_only_when_a_member_vouches() -> None:
    a = make(1)
    admit(a, [2])
    stranger = Gossip(nid(9), Piggyback(alive=(Alive(0, nid(5), addr(5), meta(5)),)))
    a.step(0.0, addr(9), stranger)
    assert state(a, 5) is None
    vouched = Gossip(nid(2), Piggyback(alive=(Alive(0, nid(5), addr(5), meta(5)),)))
    a.step(0.0, addr(2), vouched)
    assert state(a, 5) == MemberState.ALIVE


def test_suspected_node_refutes_with_a_higher_incarnation() -> None:
    a, b = make(1), make(2)
    admit(a, [2, 3])
    admit(b, [1, 3])
    a.step(1.0, addr(3), Gossip(nid(3), Piggyback(suspect=(Suspect(0, nid(1), nid(3)),))))
    assert a.incarnation == 1 and a.stats["refutes"] == 1
    assert a.health_score == 1  # Lifeguard: being suspected is evidence about ourselves
    refutation = a.broadcasts.pending_about(("m", nid(1)))
    assert refutation == Alive(1, nid(1), addr(1), meta(1))
    b.step(1.0, addr(3), Gossip(nid(3), Piggyback(suspect=(Suspect(0, nid(1), nid(3)),))))
    assert state(b, 1) == MemberState.SUSPECT
    drain(b)
    b.step(1.1, addr(1), Gossip(nid(1), Piggyback(alive=(refutation,))))
    _, events = drain(b)
    assert state(b, 1) == MemberState.ALIVE and [e.kind for e in events] == ["alive"]
    # An old suspicion (lower incarnation) no longer applies.
    b.step(1.2, addr(3), Gossip(nid(3), Piggyback(suspect=(Suspect(0, nid(1), nid(3)),))))
    assert state(b, 1) == MemberState.ALIVE


def test_suspicion_shrinks_with_independent_confirmations_then_declares_dead() -> None:
    a = make(1)
    admit(a, list(range(2, 11)))  # 10 members
    lo, hi = suspicion_bounds(CFG.suspicion_mult, CFG.suspicion_max_timeout_mult, 10, 1.0)
    a.step(0.0, addr(3), Gossip(nid(3), Piggyback(suspect=(Suspect(0, nid(2), nid(3)),))))
    susp = a.table.get(nid(2)).suspicion  # type: ignore[union-attr]
    assert susp is not None and susp.deadline == pytest.approx(hi)
    a.step(0.5, addr(3), Gossip(nid(3), Piggyback(suspect=(Suspect(0, nid(2), nid(3)),))))
    assert susp.deadline == pytest.approx(hi)  # the same accuser counts once
    a.step(0.5, addr(4), Gossip(nid(4), Piggyback(suspect=(Suspect(0, nid(2), nid(4)),))))
    middle = susp.deadline
    assert lo < middle < hi
    a.step(0.6, addr(5), Gossip(nid(5), Piggyback(suspect=(Suspect(0, nid(2), nid(5)),))))
    assert susp.deadline == pytest.approx(lo)  # k = suspicion_mult - 2 = 2 confirmations
    drain(a)
    a.tick(lo - 0.01)
    assert state(a, 2) == MemberState.SUSPECT
    a.tick(lo)
    _, events = drain(a)
    assert state(a, 2) == MemberState.DEAD
    assert [e.kind for e in events if e.member.id == nid(2)] == ["dead"]
    assert a.broadcasts.pending_about(("m", nid(2))) == Dead(0, nid(2), nid(1))


def test_dead_member_comes_back_with_a_higher_incarnation() -> None:
    a = make(1)
    admit(a, [2, 3, 4])
    a.step(0.0, addr(3), Gossip(nid(3), Piggyback(dead=(Dead(0, nid(2), nid(3)),))))
    assert state(a, 2) == MemberState.DEAD
    a.step(0.1, addr(3), Gossip(nid(3), Piggyback(alive=(Alive(0, nid(2), addr(2), meta(2)),))))
    assert state(a, 2) == MemberState.DEAD  # same incarnation: death wins
    drain(a)
    a.step(0.2, addr(2), Gossip(nid(2), Piggyback(alive=(Alive(1, nid(2), addr(2), meta(2)),))))
    _, events = drain(a)
    assert state(a, 2) == MemberState.ALIVE and [e.kind for e in events] == ["join"]


def test_push_pull_merges_a_remote_death_as_a_suspicion_and_we_refute() -> None:
    a = make(1)
    admit(a, [2, 3])
    states = (
        PushPullState(nid(1), addr(1), 0, MemberState.DEAD, meta(1)),
        PushPullState(nid(3), addr(3), 0, MemberState.DEAD, meta(3)),
    )
    a.step(5.0, addr(2), PushPull(nid(2), addr(2), False, False, states))
    out, _ = drain(a)
    assert a.incarnation == 1  # "we are dead" -> refute
    assert state(a, 3) == MemberState.SUSPECT  # not dead on hearsay
    assert any(isinstance(o.msg, PushPull) and o.msg.reply and o.to == addr(2) for o in out)


def test_leave_broadcasts_dead_by_self_and_others_record_left() -> None:
    a, b = make(1), make(2)
    admit(a, [2, 3])
    admit(b, [1, 3])
    a.leave(1.0)
    _, events = drain(a)
    assert events[0].kind == "leave" and events[0].member.state == "left"
    news = a.broadcasts.pending_about(("m", nid(1)))
    assert news == Dead(0, nid(1), nid(1))
    assert not a.leave_complete
    a.step(1.1, addr(3), Gossip(nid(3), Piggyback(dead=(Dead(0, nid(1), nid(3)),))))
    assert a.incarnation == 0  # a leaving node does not refute
    b.step(1.1, addr(1), Gossip(nid(1), Piggyback(dead=(news,))))  # type: ignore[arg-type]
    _, events = drain(b)
    assert state(b, 1) == MemberState.LEFT and [e.kind for e in events] == ["leave"]
    for t in range(1, 40):
        a.tick(1.0 + t * CFG.gossip_interval)
    assert a.leave_complete
    out, _ = drain(a)
    assert not any(isinstance(o.msg, Ping) for o in out)  # a leaving node stops probing


def _probe_of(node: SwimNode, now: float) -> tuple[Ping, str]:
    node.tick(now)
    out, _ = drain(node)
    pings = [o for o in out if isinstance(o.msg, Ping)]
    assert len(pings) == 1
    assert isinstance(pings[0].msg, Ping)
    return pings[0].msg, pings[0].to


def test_probe_ack_records_rtt_and_improves_health() -> None:
    a = make(1)
    admit(a, [2])
    a.awareness.apply_delta(2)
    ping, to = _probe_of(a, 1.0)
    assert to == addr(2) and ping.target == nid(2) and not ping.via_stream
    load = NodeLoad(0.5, 1.0, 10, 50.0, 1, 2)
    from agent.swim.messages import LoadReport

    a.step(1.004, addr(2), Ack(ping.seq, nid(2), load=LoadReport(nid(2), 0, 1, load)))
    view = a.member(nid(2))
    assert view is not None and view.rtt_ms == pytest.approx(4.0, abs=0.01)
    assert view.load == load
    assert a.health_score == 1


def test_failed_probe_goes_indirect_with_tcp_fallback_then_suspects() -> None:
    a = make(1)
    admit(a, [2, 3, 4, 5])
    ping, to = _probe_of(a, 1.0)
    target = int(to.split(".")[3].split(":")[0])
    a.tick(1.0 + CFG.probe_timeout)
    out, _ = drain(a)
    reqs = [o for o in out if isinstance(o.msg, IndirectPingReq)]
    assert len(reqs) == 3 and all(not o.reliable and o.to != to for o in reqs)
    assert all(o.msg.target == nid(target) for o in reqs)  # type: ignore[union-attr]
    tcp = [o for o in out if isinstance(o.msg, Ping) and o.reliable]
    assert len(tcp) == 1 and tcp[0].to == to and tcp[0].msg.via_stream  # type: ignore[union-attr]
    a.step(1.7, addr(3), Nack(ping.seq, nid(3)))  # one helper answers it cannot reach it
    a.tick(1.0 + CFG.probe_interval)
    _, events = drain(a)
    assert state(a, target) == MemberState.SUSPECT
    assert [e.kind for e in events] == ["suspect"]
    assert a.health_score == 2  # 3 expected Nacks, 1 came: +2 against ourselves
    susp = a.table.get(nid(target)).suspicion  # type: ignore[union-attr]
    assert susp is not None and susp.confirmations == 1  # the Nacker confirms independently


def test_the_accused_is_told_reliably_and_the_accuser_gets_the_refutation() -> None:
    """Across a bridge, gossip may never carry a suspicion to the accused (its retransmit
    budget spent on members that cannot reach it): the accuser tells the accused over a
    stream (which the runtime relays), and the accused answers the accuser the same way."""
    a, b = make(1), make(2)
    admit(a, [2, 3, 4])
    admit(b, [1, 3, 4])
    a.step(0.0, addr(3), Gossip(nid(3), Piggyback()))
    while True:  # probe until a's round-robin reaches b, then let it fail
        ping, to = _probe_of(a, a._now + CFG.probe_interval)
        if to == addr(2):
            break
        a.step(a._now, to, Ack(ping.seq, nid(int(to.split(".")[3].split(":")[0]))))
    a.tick(a._now + CFG.probe_interval)
    out, _ = drain(a)
    told = [o for o in out if isinstance(o.msg, Suspect) and o.reliable]
    assert state(a, 2) == MemberState.SUSPECT
    assert len(told) == 1 and told[0].to == addr(2) and told[0].msg.node == nid(2)
    b.step(a._now, addr(1), told[0].msg)
    out_b, _ = drain(b)
    answer = [o for o in out_b if isinstance(o.msg, Alive) and o.reliable]
    assert b.incarnation == 1 and b.stats["refutes_told"] == 1
    assert len(answer) == 1 and answer[0].to == addr(1) and answer[0].msg.incarnation == 1
    a.step(a._now, addr(2), answer[0].msg)
    assert state(a, 2) == MemberState.ALIVE
    # Our probes of a member we suspect carry the suspicion, outside gossip's budget.
    c = make(5)
    admit(c, [6, 7])
    c.step(0.0, addr(7), Gossip(nid(7), Piggyback(suspect=(Suspect(0, nid(6), nid(7)),))))
    carried = []
    for _ in range(8):
        c.tick(c._now + CFG.probe_interval)
        spent = c.broadcasts.pending_about(("m", nid(6))) is None
        out_c, _ = drain(c)
        for o in out_c:
            if isinstance(o.msg, Ping):
                if o.to == addr(6) and spent and state(c, 6) == MemberState.SUSPECT:
                    carried.append(o.msg.gossip.suspect)
                c.step(c._now, o.to, Ack(o.msg.seq, o.msg.target))
    assert carried and all([x.node for x in sus] == [nid(6)] for sus in carried)


def test_relay_nacks_within_eighty_percent_of_the_probe_timeout() -> None:
    c = make(3)
    admit(c, [1, 2])
    c.step(0.0, addr(1), IndirectPingReq(5, nid(2), addr(2), nid(1), addr(1)))
    drain(c)
    c.tick(0.8 * CFG.probe_timeout - 0.001)
    assert not any(isinstance(o.msg, Nack) for o in drain(c)[0])
    c.tick(0.8 * CFG.probe_timeout)
    assert [o.msg for o in drain(c)[0] if isinstance(o.msg, Nack)] == [Nack(5, nid(3))]


def test_indirect_probe_relays_the_ack_or_sends_a_nack() -> None:
    c = make(3)
    admit(c, [1, 2])
    c.step(0.0, addr(1), IndirectPingReq(77, nid(2), addr(2), nid(1), addr(1)))
    out, _ = drain(c)
    assert out[0].to == addr(2) and isinstance(out[0].msg, Ping)
    c.step(0.01, addr(2), Ack(out[0].msg.seq, nid(2)))
    out, _ = drain(c)
    assert out[0].to == addr(1) and out[0].msg == Ack(77, nid(2), relay=nid(3))
    c.step(1.0, addr(1), IndirectPingReq(78, nid(2), addr(2), nid(1), addr(1)))
    drain(c)
    c.tick(1.0 + CFG.probe_timeout)
    out, _ = drain(c)
    assert [o.msg for o in out if isinstance(o.msg, Nack)] == [Nack(78, nid(3))]


def test_ping_for_someone_else_is_ignored_and_ours_is_answered() -> None:
    a = make(1)
    a.step(0.0, addr(2), Ping(5, nid(9), nid(2), addr(2)))
    assert drain(a) == ([], [])
    admit(a, [2])
    a.step(0.0, addr(2), Ping(6, nid(1), nid(2), addr(2), via_stream=True))
    out, _ = drain(a)
    assert out == [Outbound(addr(2), Ack(6, nid(1)), True)]


def test_a_probe_from_a_stranger_is_answered_with_a_rate_limited_push_pull() -> None:
    a = make(1)
    admit(a, [2])
    a.step(0.0, addr(7), Ping(1, nid(1), nid(7), addr(7)))
    out, _ = drain(a)
    assert isinstance(out[0].msg, PushPull) and out[0].reliable and out[0].to == addr(7)
    assert out[1] == Outbound(addr(7), Ack(1, nid(1)), False)
    assert state(a, 7) is None  # still not a member: that takes the PushPull exchange
    a.step(1.0, addr(7), Ping(2, nid(1), nid(7), addr(7)))
    assert [type(o.msg) for o in drain(a)[0]] == [Ack]  # once per reconnect interval
    a.step(1.0 + CFG.reconnect_interval, addr(7), Ping(3, nid(1), nid(7), addr(7)))
    assert [type(o.msg) for o in drain(a)[0]] == [PushPull, Ack]


def test_load_aware_health_slows_probing_and_can_be_switched_off() -> None:
    a = make(1)
    for _ in range(3):
        a.note_local_health(cpu_saturation=0.97, loop_lag=0.0)
    assert a.health_score == 1  # a saturated CPU alone only doubles the interval
    for _ in range(3):
        a.note_local_health(cpu_saturation=0.1, loop_lag=CFG.probe_timeout)  # lagging loop
    assert a.health_score == 3
    a.note_local_health(cpu_saturation=0.97, loop_lag=CFG.probe_timeout)
    assert a.health_score == 5  # lag 4 + saturated CPU 1
    a.note_local_health(cpu_saturation=0.1, loop_lag=0.0)
    assert a.health_score == 3
    off = make(2, CFG.replace(load_aware_health=False))
    off.note_local_health(cpu_saturation=1.0, loop_lag=5.0)
    assert off.health_score == 0
    # The probe interval stretches with the score: count probes over 40 s.
    admit(a, [2])
    probes = 0
    for step in range(400):
        a.tick(step * 0.1)
        probes += sum(isinstance(o.msg, Ping) for o in drain(a)[0])
        if step % 10 == 0:
            a.note_local_health(0.99, CFG.probe_timeout)
    assert probes <= 40 / 4 + 1


def test_datagrams_never_exceed_the_payload_bound() -> None:
    a = make(1)
    admit(a, list(range(2, 200)))
    for i in range(2, 200):
        a.step(0.0, addr(2), Gossip(nid(2), Piggyback(suspect=(Suspect(0, nid(i), nid(2)),))))
    drain(a)
    sizes = []
    for step in range(50):
        a.tick(step * 0.2)
        sizes += [message_size(o.msg) for o in drain(a)[0] if not o.reliable]
    assert sizes and max(sizes) <= CFG.max_datagram_payload
    assert max(sizes) > CFG.max_datagram_payload * 0.8  # and they are packed


def test_update_meta_bumps_incarnation_and_broadcasts() -> None:
    a = make(1)
    a.update_meta(meta(1, role="leader"))
    assert a.incarnation == 1
    assert a.broadcasts.pending_about(("m", nid(1))) == Alive(1, nid(1), addr(1), meta(1, "leader"))
    assert a.members()[0].meta.role == "leader"


def test_partitioned_and_healed_events_follow_the_alive_majority() -> None:
    a = make(1)
    admit(a, list(range(2, 11)))
    for i in range(2, 7):
        a.step(0.0, addr(9), Gossip(nid(9), Piggyback(dead=(Dead(0, nid(i), nid(9)),))))
    assert not a.partitioned  # 5 alive of 10
    a.step(0.0, addr(9), Gossip(nid(9), Piggyback(dead=(Dead(0, nid(7), nid(9)),))))
    assert a.partitioned
    _, events = drain(a)
    assert events[-1].kind == "partitioned" and events[-1].member.id == nid(1)
    a.step(1.0, addr(2), Gossip(nid(9), Piggyback(alive=(Alive(1, nid(2), addr(2), meta(2)),))))
    assert not a.partitioned
    assert drain(a)[1][-1].kind == "healed"


def test_ready_advance_keeps_items_that_arrived_in_between() -> None:
    a = make(1)
    a.join(0.0, [addr(2)])
    ready = a.ready()
    assert ready is not None
    a.join(0.0, [addr(3)])
    a.advance(ready)
    out, _ = drain(a)
    assert [o.to for o in out] == [addr(3)]


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        CFG.replace(probe_timeout=2.0)
    assert err.value.field == "swim.probe_timeout"
    with pytest.raises(ConfigError):
        CFG.replace(gossip_nodes=0)
    assert SwimConfig.local().validate().probe_interval == 0.2


# --------------------------------------------------------------------------- fuzz


small_ids = st.integers(min_value=1, max_value=6)
incs = st.integers(min_value=0, max_value=4)
inbound = st.one_of(
    st.builds(lambda i, n: Alive(n, nid(i), addr(i), meta(i)), small_ids, incs),
    st.builds(lambda i, n, f: Suspect(n, nid(i), nid(f)), small_ids, incs, small_ids),
    st.builds(lambda i, n, f: Dead(n, nid(i), nid(f)), small_ids, incs, small_ids),
    st.builds(
        lambda f, sts: PushPull(
            nid(f),
            addr(f),
            False,
            False,
            tuple(PushPullState(nid(i), addr(i), n, s, meta(i)) for i, n, s in sts),
        ),
        small_ids,
        st.lists(st.tuples(small_ids, incs, st.sampled_from(MemberState)), max_size=6),
    ),
    st.builds(lambda s, f: Ack(s, nid(f)), st.integers(0, 20), small_ids),
    st.builds(lambda s, f: Nack(s, nid(f)), st.integers(0, 20), small_ids),
    st.builds(lambda s, t, f: Ping(s, nid(t), nid(f), addr(f)), st.integers(0, 20), small_ids, small_ids),
    st.builds(
        lambda s, t, f: IndirectPingReq(s, nid(t), addr(t), nid(f), addr(f)),
        st.integers(0, 20),
        small_ids,
        small_ids,
    ),
    st.floats(min_value=0.0, max_value=3.0),  # a pause: tick after this many seconds
)


@settings(max_examples=200, deadline=None)
@given(st.lists(inbound, max_size=60), st.booleans())
def test_any_message_sequence_keeps_the_table_consistent(msgs: list[object], leave: bool) -> None:
    a = make(1)
    now = 0.0
    last_inc = 0
    for i, msg in enumerate(msgs):
        if isinstance(msg, float):
            now += msg
            a.tick(now)
        elif isinstance(msg, Alive | Suspect | Dead):
            a.step(
                now,
                addr(2),
                Gossip(
                    msg.node if i % 2 else nid(2),
                    Piggyback(
                        alive=(msg,) if isinstance(msg, Alive) else (),
                        suspect=(msg,) if isinstance(msg, Suspect) else (),
                        dead=(msg,) if isinstance(msg, Dead) else (),
                    ),
                ),
            )
        else:
            a.step(now, addr(2), msg)
        if leave and i == len(msgs) // 2:
            a.leave(now)
        out, _ = drain(a)
        for o in out:
            assert o.reliable or message_size(o.msg) <= CFG.max_datagram_payload
        assert a.incarnation >= last_inc
        last_inc = a.incarnation
        counts = {s: 0 for s in MemberState}
        for m in a.table:
            counts[m.state] += 1
            assert m.node != nid(1)
            assert (m.suspicion is not None) == (m.state == MemberState.SUSPECT)
        assert all(a.table.count(s) == counts[s] for s in MemberState)
        assert a.table.self_member.state == (MemberState.LEFT if a._leaving else MemberState.ALIVE)
        assert a.partitioned == a._partition.view_minority(a.table)


def test_a_lone_node_leaves_at_once() -> None:
    a = make(1)
    a.leave(0.0)
    assert a.leave_complete


def test_push_pull_state_is_reused_only_while_the_member_is_unchanged() -> None:
    """PushPull states are cached per member record; every field the rules change
    in place must invalidate the cache, or a PushPull would carry stale news."""
    from agent.swim.members import Member, push_pull_state
    from agent.swim.messages import LoadReport, NodeLoad

    meta = NodeMeta("n1", "198.18.0.1:7900", (), 1, "t", "none")
    m = Member("a" * 32, "198.18.0.1:7900", meta, 0, MemberState.ALIVE, 0.0)
    first = push_pull_state(m)
    assert push_pull_state(m) is first
    m.incarnation = 3
    assert push_pull_state(m).incarnation == 3
    m.state = MemberState.SUSPECT
    assert push_pull_state(m).state == MemberState.SUSPECT
    m.meta = NodeMeta("n1", "198.18.0.1:7900", ("gpu",), 1, "t", "none")
    assert push_pull_state(m).meta.caps == ("gpu",)
    m.load = LoadReport(m.node, 3, 1, NodeLoad(0.5, 0.1, 1, 2.0, 0, 0))
    assert push_pull_state(m).load is m.load
    m.addr = "198.18.0.9:7900"
    current = push_pull_state(m)
    assert current.addr == "198.18.0.9:7900"
    assert current == type(current)(m.node, m.addr, 3, MemberState.SUSPECT, m.meta, m.load)
