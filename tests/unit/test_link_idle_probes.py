"""Idle link probing (agent/links/state.py): idle peers share probe rounds, and a
reliable message with an idle peer brings its next probe back to the busy rate."""

from __future__ import annotations

import itertools

from agent.links.config import LinkConfig
from agent.links.state import LinkTable

CFG = LinkConfig.lan()
ME, A, B, C = "me", "a", "b", "c"


def idle_table() -> tuple[LinkTable, float]:
    """A table whose peers A, B, C are idle (nothing reliable since ``t=0``), each
    answered at its first probes; returns it and the time after those."""
    t = LinkTable(CFG, ME)
    t.set_members({ME, A, B, C}, 0.0)
    now = 0.0
    while now <= CFG.idle_after + CFG.idle_probe_interval:
        for node, seq in t.due_probes(now):
            t.on_pong(node, seq, now + 0.001)
        t.tick(now + 0.001)
        now += 0.01
    return t, now


def probe_times(t: LinkTable, start: float, seconds: float) -> dict[str, list[float]]:
    sent: dict[str, list[float]] = {A: [], B: [], C: []}
    now = start
    while now < start + seconds:
        for node, seq in t.due_probes(now):
            sent[node].append(now)
            t.on_pong(node, seq, now + 0.001)
        t.tick(now + 0.001)
        now = max(now + 0.001, min(t.next_deadline(), now + 0.5))
    return sent


def test_idle_peers_are_probed_at_the_idle_interval_in_shared_rounds() -> None:
    t, now = idle_table()
    for i, node in enumerate((A, B, C)):  # three phases, each within a busy interval
        t._peers[node].next_probe = now + i * CFG.probe_interval * 0.4
    sent = probe_times(t, now, 10 * CFG.idle_probe_interval)
    rounds = sorted({at for times in sent.values() for at in times})
    for times in sent.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # never less than the idle interval minus the one busy interval of slack
        assert min(gaps) >= CFG.idle_probe_interval - CFG.probe_interval - 1e-9
        assert max(gaps) <= CFG.idle_probe_interval + 0.011
    # they fall into step at the first round: one round per idle interval
    assert len(rounds) == len(sent[A]) == len(sent[B]) == len(sent[C])
    assert len(rounds) <= 10 + 1


def test_a_peer_due_later_than_one_busy_interval_waits_for_its_turn() -> None:
    t = LinkTable(CFG, ME)
    t.set_members({ME, A, B}, 0.0)
    start = 10.0  # both idle (created at 0, nothing reliable since)
    t._peers[A].next_probe = start
    t._peers[B].next_probe = start + CFG.probe_interval + 0.05
    assert [node for node, _seq in t.due_probes(start)] == [A]
    t._peers[B].next_probe = start + CFG.idle_probe_interval + CFG.probe_interval / 2
    t._peers[A].next_probe = start + CFG.idle_probe_interval
    assert sorted(n for n, _s in t.due_probes(start + CFG.idle_probe_interval)) == [A, B]


def test_a_busy_peer_is_never_probed_early() -> None:
    t = LinkTable(CFG, ME)
    t.set_members({ME, A, B}, 0.0)
    assert sorted(n for n, _s in t.due_probes(0.0)) == [A, B]  # both busy (just met)
    t._peers[B].next_probe = 0.1
    assert t.due_probes(0.05) == []
    assert [n for n, _s in t.due_probes(CFG.probe_interval)] == [A, B]


def test_a_reliable_message_with_an_idle_peer_brings_its_probe_to_the_busy_rate() -> None:
    t, now = idle_table()
    for node, seq in t.due_probes(now):
        t.on_pong(node, seq, now + 0.001)
    peer_next = t._peers[A].next_probe
    assert peer_next > now + CFG.probe_interval  # idle: far away
    assert t.note_active(A, now)  # woke up: its probe moved
    assert t._peers[A].next_probe == now + CFG.probe_interval
    assert t.next_deadline() <= now + CFG.probe_interval
    assert not t.note_active(A, now + 0.01)  # already busy: nothing moves
    assert not t.note_active(ME, now) and not t.note_active("stranger", now)


def test_an_idle_pair_that_starts_talking_finds_a_cut_at_the_busy_rate() -> None:
    t, now = idle_table()
    for node, seq in t.due_probes(now):
        t.on_pong(node, seq, now + 0.001)
    cut = now + 0.01
    t.note_active(A, cut)  # a reliable message goes out over the (cut) path
    at = cut
    while t.direct_ok(A):
        for node, seq in t.due_probes(at):
            if node != A:
                t.on_pong(node, seq, at + 0.001)
        at = max(at + 0.001, t.next_deadline())
        t.tick(at)
        t.note_active(A, at)  # traffic keeps flowing (Raft, say)
    assert at - cut <= CFG.broken_after * CFG.probe_interval + CFG.probe_timeout + 0.01


def test_a_round_trip_on_the_stream_spares_the_probe_and_counts_as_one() -> None:
    t = LinkTable(CFG, ME)
    t.set_members({ME, A, B}, 0.0)
    evidence = {A: 0.0004}
    due = t.due_probes(0.0, evidence.get)
    assert [n for n, _s in due] == [B]  # A's stream just made a round trip
    assert t.probes_spared == 1
    assert t.rtt(A) == 0.0004 and t.reachable(A, 0.0)
    assert t.next_deadline() <= CFG.probe_timeout  # B's probe is pending
    # no evidence any more (data unacknowledged, say): A's probes go out again
    t.tick(CFG.probe_interval)
    assert sorted(n for n, _s in t.due_probes(CFG.probe_interval, {}.get)) == [A, B]


def test_a_broken_path_is_healed_only_by_a_probe() -> None:
    t = LinkTable(CFG, ME)
    t.set_members({ME, A}, 0.0)
    now = 0.0
    while t.direct_ok(A):
        t.due_probes(now)
        now += CFG.probe_interval
        t.tick(now)
    assert [n for n, _s in t.due_probes(now, {A: 0.001}.get)] == [A]
    assert not t.direct_ok(A) and t.probes_spared == 0


async def test_a_loopback_stream_shows_its_round_trip_once_its_data_is_acked() -> None:
    import asyncio
    import sys

    from agent.runtime.outbound import OutboundPeer

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        peer = OutboundPeer(f"127.0.0.1:{port}", "127.0.0.1", port)
        assert peer.round_trip(0.25) is None  # not connected
        peer.writer = writer
        writer.write(b"x" * 100)
        await writer.drain()
        await asyncio.sleep(0.05)  # acknowledged by now (loopback)
        rtt = peer.round_trip(0.25)
        if sys.platform == "linux":
            assert rtt is not None and 0.0 <= rtt < 0.25
        assert peer.round_trip(0.01) is None  # nothing sent within the last 10 ms
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
