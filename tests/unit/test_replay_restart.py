"""No replay is ever accepted: across receiver restarts, sender restarts (or data
dirs restored from copies), evictions from a full replay table, and clock
changes; and a restarted node is heard again after one round trip.

Envelope-level tests use agent.envelope directly; the transport-level ones run
real Transports on loopback, restarting one on the same port.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.envelope_pairs import KEY_A, handshake
from support.wait import wait_until_async

from agent.crypto import Keyring, SealError
from agent.envelope import Channel, CookieNeeded, Envelope, Grant, StreamGate
from agent.runtime import cookies as cookies_mod
from agent.runtime.cookies import CookieJar, GrantLimiter
from agent.runtime.transport import Transport

HOST = "127.0.0.1"
REPLAYS = 100


def env(name: str, **kwargs: int) -> Envelope:
    return Envelope(Keyring.from_key(KEY_A), name, **kwargs)  # type: ignore[arg-type]


def accepted(receiver: Envelope, packet: bytes) -> bool:
    try:
        receiver.open_datagram(packet)
    except SealError:
        return False
    return True


# --------------------------------------------------------------------------- envelopes


def test_100_replays_after_the_receiver_restarted_are_all_refused() -> None:
    alice, bob = env("alice"), env("bob")
    cookie = handshake(alice, bob)
    captured = alice.seal(Channel.DATAGRAM, b"transfer 100", cookie)
    assert accepted(bob, captured)
    bob = env("bob")  # restarted: same node id, nothing remembered
    assert sum(accepted(bob, captured) for _ in range(REPLAYS)) == 0
    assert bob.stats.dropped_cookie == REPLAYS
    # The live sender is heard again after one grant.
    assert not accepted(bob, alice.seal(Channel.DATAGRAM, b"stale cookie", cookie))
    new_cookie = handshake(alice, bob)
    assert accepted(bob, alice.seal(Channel.DATAGRAM, b"fresh", new_cookie))
    assert sum(accepted(bob, captured) for _ in range(REPLAYS)) == 0


def test_no_replay_after_the_sender_was_evicted_from_a_full_table() -> None:
    bob = env("bob", max_senders=2)
    alice = env("alice")
    cookie = handshake(alice, bob)
    captured = [alice.seal(Channel.DATAGRAM, b"a%d" % i, cookie) for i in range(3)]
    assert all(accepted(bob, p) for p in captured[:2])  # captured[2] was never delivered
    for name in ("carol", "dave"):
        other = env(name)
        assert accepted(bob, other.seal(Channel.DATAGRAM, b"hi", handshake(other, bob)))
    assert len(bob.replay) == 2  # alice was forgotten
    for packet in captured:
        assert sum(accepted(bob, packet) for _ in range(REPLAYS)) == 0
    # Alice's next datagram is refused, she is granted a new cookie, and the
    # recorded ones still match nothing.
    new_cookie = handshake(alice, bob)
    assert new_cookie != cookie
    assert accepted(bob, alice.seal(Channel.DATAGRAM, b"back", new_cookie))
    assert not any(accepted(bob, p) for p in captured)


def test_a_sender_restored_from_an_old_copy_is_heard_after_one_round_trip() -> None:
    """Nothing the sender keeps on disk matters: its old process's packets stay
    refused, the new one is accepted as soon as it echoes its grant."""
    bob = env("bob")
    old = env("alice")
    old_cookie = handshake(old, bob)
    recorded = [old.seal(Channel.DATAGRAM, b"o%d" % i, old_cookie) for i in range(50)]
    assert all(accepted(bob, p) for p in recorded[:40])
    restored = env("alice")  # same node id, a new random boot id
    assert accepted(bob, restored.seal(Channel.DATAGRAM, b"I am back", handshake(restored, bob)))
    assert not any(accepted(bob, p) for p in recorded)  # neither delivered nor undelivered ones
    # ...and a grant the old process asks for now cannot switch bob back to it.
    assert not accepted(bob, old.seal(Channel.DATAGRAM, b"zombie", old_cookie))


def test_a_boot_once_replaced_is_never_accepted_again() -> None:
    """Many restarts of one sender: each old boot is refused even with the cookie
    it was granted, however many boots ago that was."""
    bob = env("bob")
    runs: list[tuple[Envelope, bytes]] = []
    for _ in range(20):
        alice = env("alice")
        cookie = handshake(alice, bob)
        assert accepted(bob, alice.seal(Channel.DATAGRAM, b"x", cookie))
        runs.append((alice, cookie))
    for alice, cookie in runs[:-1]:
        assert not accepted(bob, alice.seal(Channel.DATAGRAM, b"old run", cookie))
    alice, cookie = runs[-1]
    assert accepted(bob, alice.seal(Channel.DATAGRAM, b"current run", cookie))


def test_recorded_stream_frames_are_refused_after_the_receiver_restarted() -> None:
    alice, bob = env("alice"), env("bob")
    gate = StreamGate()
    challenge = alice.open_challenge(bob.seal_challenge(gate))
    frames = [alice.seal(Channel.STREAM, b"f%d" % i, challenge) for i in range(10)]
    assert [bob.open_stream(f, gate) for f in frames] == [b"f%d" % i for i in range(10)]
    bob = env("bob")  # restarted; a replayer opens a new connection
    gate = StreamGate()
    refused = 0
    for _ in range(REPLAYS // 10):
        for frame in frames:
            with pytest.raises(SealError, match="another connection"):
                bob.open_stream(frame, gate)
            refused += 1
    assert refused == REPLAYS and bob.stats.opened == 0


def test_grants_cannot_be_replayed_to_roll_a_cookie_back() -> None:
    alice, bob = env("alice"), env("bob")
    jar = CookieJar()
    with pytest.raises(CookieNeeded) as first:
        bob.open_datagram(alice.seal(Channel.DATAGRAM, b"1"))
    jar.sent("b:1", 1, b"1", True, 0.0)
    old_grant = bob.seal_grant(first.value, "b:1")
    grant = alice.open_datagram(old_grant)
    assert isinstance(grant, Grant)
    assert jar.learn("b:1", grant, 0.1) == [("b:1", b"1")]  # the cookieless one goes again
    bob = env("bob")  # restarted: alice's cookie is stale now
    with pytest.raises(CookieNeeded) as second:
        bob.open_datagram(alice.seal(Channel.DATAGRAM, b"2", jar.cookie_for("b:1") or b""))
    new = alice.open_datagram(bob.seal_grant(second.value, "b:1"))
    assert isinstance(new, Grant)
    assert jar.learn("b:1", new, 0.2) == []  # it had a cookie: not resent (see agent.envelope)
    replayed = alice.open_datagram(old_grant)  # a recorded grant, played to alice again
    assert isinstance(replayed, Grant)
    jar.learn("b:1", replayed, 0.3)
    assert jar.cookie_for("b:1") == new.cookie


def test_nothing_reads_a_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Freshness never depends on time: stepping every clock, even making it
    raise, changes nothing in the handshake, sealing or the replay checks."""

    def no_clock() -> float:
        raise AssertionError("a clock was read")

    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter"):
        monkeypatch.setattr(time, name, no_clock)
    alice, bob = env("alice"), env("bob")
    cookie = handshake(alice, bob)
    packet = alice.seal(Channel.DATAGRAM, b"x", cookie)
    assert accepted(bob, packet) and not accepted(bob, packet)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["send", "replay", "restart_receiver",
                                           "restart_sender", "other_sender"]),
                          st.integers(0, 10_000)), max_size=80),
       st.integers(1, 3))
def test_no_packet_is_ever_accepted_twice(steps: list[tuple[str, int]], max_senders: int) -> None:
    """Random histories of sends, replays of anything recorded, restarts of
    either side and evictions: every recorded packet opens at most once in all
    of history, and a live sender always gets through after one handshake."""
    bob = env("bob", max_senders=max_senders)
    alice = env("alice")
    cookie: bytes | None = None
    recorded: list[bytes] = []
    opened: set[bytes] = set()
    others = 0

    def deliver(packet: bytes) -> bool:
        if accepted(bob, packet):
            assert packet not in opened, "a packet was accepted twice"
            opened.add(packet)
            return True
        return False

    for action, n in steps:
        if action == "send":
            if cookie is None:
                cookie = handshake(alice, bob)
            packet = alice.seal(Channel.DATAGRAM, b"%d" % n, cookie)
            recorded.append(packet)
            if not deliver(packet):  # stale after a restart/eviction: one new grant
                cookie = handshake(alice, bob)
                packet = alice.seal(Channel.DATAGRAM, b"%d" % n, cookie)
                recorded.append(packet)
                assert deliver(packet)
        elif action == "replay" and recorded:
            deliver(recorded[n % len(recorded)])
        elif action == "restart_receiver":
            bob = env("bob", max_senders=max_senders)
        elif action == "restart_sender":
            alice, cookie = env("alice"), None
        elif action == "other_sender":
            others += 1
            other = env(f"other-{others}")
            assert deliver(other.seal(Channel.DATAGRAM, b"o", handshake(other, bob)))


# --------------------------------------------------------------------------- cookie jar


def test_a_grant_is_filed_under_the_address_we_sent_to() -> None:
    jar = CookieJar()
    jar.sent("peer.lan:7900", 7, b"ping", True, 0.0)
    resend = jar.learn("10.0.0.2:7900", Grant(b"c" * 8, 7, "10.0.0.2:7900"), 0.01)
    assert resend == [("peer.lan:7900", b"ping")]
    for addr in ("peer.lan:7900", "10.0.0.2:7900"):
        assert jar.cookie_for(addr) == b"c" * 8


def test_cookieless_datagrams_are_kept_briefly_and_boundedly() -> None:
    jar = CookieJar()
    for i in range(cookies_mod.PENDING_PER_ADDR + 3):
        jar.sent("a:1", i + 1, b"%d" % i, True, float(i))
    late = cookies_mod.PENDING_TTL + cookies_mod.PENDING_PER_ADDR + 1.5
    resend = jar.learn("a:1", Grant(b"c" * 8, 99, "a:1"), late)
    assert [p for _, p in resend] == [b"%d" % (cookies_mod.PENDING_PER_ADDR + 2)]
    for i in range(cookies_mod.MAX_PENDING_ADDRS + 10):
        jar.sent(f"x:{i}", 1000 + i, b"p", True, 0.0)
    assert len(jar._pending) <= cookies_mod.MAX_PENDING_ADDRS


def test_grant_limiter() -> None:
    limiter = GrantLimiter()
    assert limiter.allow("a:1", 10.0)
    assert not limiter.allow("a:1", 10.0 + cookies_mod.GRANT_INTERVAL / 2)
    assert limiter.allow("b:1", 10.0 + cookies_mod.GRANT_INTERVAL / 2)
    assert limiter.allow("a:1", 10.0 + cookies_mod.GRANT_INTERVAL * 1.5)
    total = sum(limiter.allow(f"h{i}:1", 20.5) for i in range(cookies_mod.MAX_GRANTS_PER_SECOND + 50))
    assert total == cookies_mod.MAX_GRANTS_PER_SECOND


# --------------------------------------------------------------------------- real transports


class Node:
    def __init__(self, name: str, port: int = 0) -> None:
        self.datagrams: list[bytes] = []
        self.t = Transport(HOST, port, Keyring.from_key(KEY_A), name,
                           lambda _a, p: self.datagrams.append(p), lambda _a, _p: None,
                           rng=random.Random(1))


class Recorder:
    """Wraps a transport's UDP endpoint, recording what it sends."""

    def __init__(self, inner: asyncio.DatagramTransport) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)
        self.inner.sendto(data, addr)

    def close(self) -> None:
        self.inner.close()


async def wait_until(what: str, predicate: Callable[[], object]) -> None:
    await wait_until_async(what, predicate, 5.0, 0.005)


@pytest.mark.timeout(60)
async def test_transport_replays_across_a_receiver_restart_and_an_eviction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = Node("a"), Node("b")
    await a.t.start()
    await b.t.start()
    port = b.t.port
    recorder = Recorder(a.t._udp)  # type: ignore[arg-type]
    a.t._udp = recorder  # type: ignore[assignment]
    b_addr = f"{HOST}:{port}"
    try:
        a.t.send_datagram(b_addr, b"pay 1")
        await wait_until("b to receive pay 1", lambda: b.datagrams == [b"pay 1"])
        captured = list(recorder.sent)  # the cookieless first try and its resend
        assert len(captured) == 2

        await b.t.close()
        b = Node("b", port)  # restarted on the same address
        await b.t.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as replayer:
            for i in range(REPLAYS):
                replayer.sendto(captured[i % 2], (HOST, port))
        # Every replay is accounted for as dropped: 0 of 100 accepted.
        await wait_until("b to drop every replay", lambda: b.t.stats.seal.dropped_cookie == REPLAYS)
        assert b.datagrams == []

        # a's own traffic resumes: its next datagram has a stale cookie and is
        # refused, the grant arrives, and the one after goes through.
        a.t.send_datagram(b_addr, b"stale")
        await wait_until("a to get a second grant", lambda: a.t.stats.grants_in >= 2)
        a.t.send_datagram(b_addr, b"pay 2")
        await wait_until("b to receive pay 2", lambda: b.datagrams == [b"pay 2"])

        # Evict a from b's full table, then replay everything a ever sent.
        b.t.envelope.replay.max_senders = 1
        c = Node("c")
        await c.t.start()
        try:
            c.t.send_datagram(b_addr, b"from c")
            await wait_until("b to receive c's datagram", lambda: b"from c" in b.datagrams)
        finally:
            await c.t.close()
        assert len(b.t.envelope.replay) == 1
        before = list(b.datagrams)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as replayer:
            for i in range(REPLAYS):
                replayer.sendto(recorder.sent[i % len(recorder.sent)], (HOST, port))
        # Every replay is accounted for as dropped: none accepted after the eviction.
        await wait_until("b to drop every replay again",
                         lambda: b.t.stats.seal.dropped_cookie >= 2 * REPLAYS)
        assert b.datagrams == before
    finally:
        await a.t.close()
        await b.t.close()


@pytest.mark.timeout(60)
async def test_transport_first_contact_is_delivered_once_after_one_round_trip() -> None:
    a, b = Node("a"), Node("b")
    await a.t.start()
    await b.t.start()
    try:
        for i in range(3):  # sent before any grant could arrive
            a.t.send_datagram(b.t.listen_addr, b"early %d" % i)
        # Every datagram a sent is accounted for once b has granted the three
        # cookieless first tries and delivered the three resends: no duplicate.
        await wait_until("b to grant 3 first tries and deliver 3 resends",
                         lambda: len(b.datagrams) == 3
                         and b.t.stats.grants_out + b.t.stats.grants_suppressed == 3)
        assert sorted(b.datagrams) == [b"early 0", b"early 1", b"early 2"]
        assert a.t.stats.datagrams_resent == 3
        assert b.t.stats.grants_out + b.t.stats.grants_suppressed == 3
    finally:
        await a.t.close()
        await b.t.close()
