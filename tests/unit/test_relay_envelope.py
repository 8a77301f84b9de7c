"""RELAY frames in the envelope (agent/envelope.py, "Relayed frames"): out of order
is fine, a replay is not, a flipped byte fails the tag, other channels are refused."""

from __future__ import annotations

import pytest

from agent.crypto import Keyring, SealError
from agent.envelope import NO_COOKIE, Channel, CookieNeeded, Envelope, Grant, StreamGate, sender_digest

KEY = bytes(range(32))


def pair() -> tuple[Envelope, Envelope]:
    ring = Keyring([KEY], KEY)
    return Envelope(ring, "origin"), Envelope(ring, "dest")


def granted(origin: Envelope, dest: Envelope) -> bytes:
    """Run the grant handshake: the cookie ``origin`` seals RELAY frames with."""
    first = origin.seal(Channel.RELAY, b"hello?", NO_COOKIE)
    with pytest.raises(CookieNeeded) as refused:
        dest.open_relay(first)
    grant = origin.open_relay(dest.seal_relay_grant(refused.value, "dest"))
    assert isinstance(grant, Grant)
    assert grant.listen_addr == "dest"
    return grant.cookie


def test_first_contact_is_refused_then_granted_then_accepted() -> None:
    origin, dest = pair()
    cookie = granted(origin, dest)
    opened = dest.open_relay(origin.seal(Channel.RELAY, b"payload", cookie))
    assert opened == (sender_digest("origin"), b"payload")


def test_relayed_frames_out_of_order_are_accepted_and_a_replay_is_refused() -> None:
    origin, dest = pair()
    cookie = granted(origin, dest)
    frames = [origin.seal(Channel.RELAY, f"m{i}".encode(), cookie) for i in range(6)]
    for i in (3, 0, 5, 1, 4, 2):  # two relays, any order
        assert dest.open_relay(frames[i]) == (sender_digest("origin"), f"m{i}".encode())
    for frame in (frames[2], frames[5]):
        with pytest.raises(SealError) as replay:
            dest.open_relay(frame)
        assert replay.value.reason == "replay"
    assert dest.stats.dropped_replay == 2


def test_direct_stream_frames_interleaved_with_relayed_ones_are_all_accepted() -> None:
    """The direct stream's strictly growing sequence and the relay window do not
    share a counter: a frame sent directly after a relayed one is not a replay."""
    origin, dest = pair()
    cookie = granted(origin, dest)
    gate = StreamGate()
    relayed = [origin.seal(Channel.RELAY, b"r", cookie) for _ in range(3)]
    direct = [origin.seal(Channel.STREAM, b"d", gate.challenge) for _ in range(3)]
    for frame in direct:
        assert dest.open_stream(frame, gate) == b"d"
    for frame in reversed(relayed):  # the relayed ones arrive later, reversed
        assert dest.open_relay(frame)[1] == b"r"  # type: ignore[index]


def test_a_relay_that_flips_a_byte_is_detected() -> None:
    origin, dest = pair()
    cookie = granted(origin, dest)
    frame = bytearray(origin.seal(Channel.RELAY, b"important", cookie))
    frame[len(frame) // 2] ^= 0x01
    with pytest.raises(SealError) as tampered:
        dest.open_relay(bytes(frame))
    assert tampered.value.reason == "tag"
    assert dest.stats.dropped_tag == 1


def test_packets_of_other_channels_are_not_taken_as_relayed() -> None:
    origin, dest = pair()
    gate = StreamGate()
    for packet in (origin.seal(Channel.STREAM, b"x", gate.challenge),
                   origin.seal(Channel.DATAGRAM, b"x", NO_COOKIE)):
        with pytest.raises(SealError) as refused:
            dest.open_relay(packet)
        assert refused.value.reason == "malformed"


def test_a_grant_for_another_run_of_the_origin_is_refused() -> None:
    origin, dest = pair()
    first = origin.seal(Channel.RELAY, b"x", NO_COOKIE)
    with pytest.raises(CookieNeeded) as refused:
        dest.open_relay(first)
    grant = dest.seal_relay_grant(refused.value, "dest")
    restarted = Envelope(origin.keyring, "origin")  # a new boot id
    with pytest.raises(SealError) as stale:
        restarted.open_relay(grant)
    assert stale.value.reason == "replay"


def test_relay_and_datagram_cookies_are_separate() -> None:
    origin, dest = pair()
    cookie = granted(origin, dest)
    with pytest.raises(CookieNeeded):
        dest.open_datagram(origin.seal(Channel.DATAGRAM, b"x", cookie))
