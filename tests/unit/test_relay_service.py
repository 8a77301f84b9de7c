"""RelayService (agent/runtime/relay.py) between three nodes, origin A, relay R and
destination D, over an in-memory stand-in for the transport (the service, the
envelope and the link table are real): the grant handshake over the relay, a
flipped byte detected at the destination, a replay refused, one hop only, a relay
without a path onward answering with a nack, and the resend when a path breaks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

from agent import wire
from agent.crypto import Keyring
from agent.envelope import Envelope
from agent.links.config import LinkConfig
from agent.runtime.messages import ForwardPropose, RelayFrame, RelayNack
from agent.runtime.relay import RELAY_MESSAGES, RelayService
from agent.runtime.transport import Transport

KEYRING = Keyring([bytes(range(32))], bytes(range(32)))
IDS = {"A": "a:1", "R": "r:1", "D": "d:1"}


class FakeTransport:
    """What RelayService uses of a Transport: sends land in ``net.wire``."""

    def __init__(self, net: Net, node_id: str) -> None:
        self.net = net
        self.listen_addr = IDS[node_id]
        self.envelope = Envelope(KEYRING, node_id)
        self.dropped: list[str] = []

    def send_stream(self, addr: str, data: bytes) -> bool:
        self.net.wire.append((self.listen_addr, addr, data))
        return True

    def send_datagram(self, addr: str, data: bytes) -> bool:
        return True  # link probes and summaries: not needed here

    def queued(self, addr: str) -> int:
        return self.net.queued

    def drop_peer(self, addr: str) -> None:
        self.dropped.append(addr)

    def stream_round_trip(self, addr: str, within: float) -> float | None:
        return None  # no TCP here: every due probe is a LinkPing

    def close_idle(self, now: float, idle: float) -> int:
        return 0


class Net:
    def __init__(self) -> None:
        self.wire: list[tuple[str, str, bytes]] = []
        self.delivered: list[tuple[str, str, object]] = []  # (at, from, message)
        self.queued = 0
        self.tamper: Callable[[RelayFrame], RelayFrame] | None = None
        self.nodes: dict[str, RelayService] = {}
        self.transports: dict[str, FakeTransport] = {}
        self.by_addr: dict[str, str] = {a: n for n, a in IDS.items()}
        for node in IDS:
            self.nodes[node] = self._service(node)
        now = time.monotonic()
        for service in self.nodes.values():
            service.poll(now)

    def _service(self, node: str) -> RelayService:
        def deliver(from_addr: str, payload: bytes) -> None:
            self.delivered.append((node, from_addr, wire.decode(payload)))

        transport = self.transports[node] = FakeTransport(self, node)
        service = RelayService(cast(Transport, transport), node, LinkConfig.lan(), deliver)
        service.use_members(lambda: [(n, a) for n, a in IDS.items() if n != node])
        return service

    def run(self) -> None:
        while self.wire:
            src, dst, data = self.wire.pop(0)
            msg = wire.decode(data)
            if isinstance(msg, RelayFrame) and msg.hop == 1 and self.tamper is not None:
                msg = self.tamper(msg)
            node = self.by_addr[dst]
            if isinstance(msg, RELAY_MESSAGES):
                self.nodes[node].on_message(src, msg)
            else:
                self.delivered.append((node, src, msg))

    def break_path(self, a: str, b: str) -> None:
        now = time.monotonic()
        for x, y in ((a, b), (b, a)):
            table = self.nodes[x].table
            table.observe_failure(y, now)
            table.observe_failure(y, now)
            assert not table.direct_ok(y)


MSG = ForwardPropose(7, b"put x=1")


def test_a_message_to_a_broken_peer_goes_over_the_relay_and_arrives_once() -> None:
    net = Net()
    net.break_path("A", "D")
    net.nodes["A"].send("D", IDS["D"], wire.encode(MSG))
    net.run()
    assert net.delivered == [("D", IDS["A"], MSG)]  # from A's listen address
    a, r, d = (net.nodes[n].stats for n in "ARD")
    assert a.relayed_out == 2  # the first, cookieless, was refused and resent after the grant
    assert r.relayed_forwarded == 3  # A→D twice, and D's grant back to A
    assert d.relayed_in == 1 and d.relay_refused == 1
    # With the cookie in hand the next one goes through at once.
    net.nodes["A"].send("D", IDS["D"], wire.encode(ForwardPropose(8, b"y")))
    net.run()
    assert [m for _n, _f, m in net.delivered][-1] == ForwardPropose(8, b"y")
    assert a.relayed_out == 3


def test_a_relay_that_flips_a_byte_is_detected_and_counted() -> None:
    net = Net()
    net.break_path("A", "D")
    net.nodes["A"].send("D", IDS["D"], wire.encode(MSG))
    net.run()  # handshake done, one delivered

    def flip(frame: RelayFrame) -> RelayFrame:
        packet = bytearray(frame.packet)
        packet[-5] ^= 0x40
        return RelayFrame(frame.origin, frame.dest, frame.hop, bytes(packet))

    net.tamper = flip
    net.nodes["A"].send("D", IDS["D"], wire.encode(ForwardPropose(9, b"z")))
    net.run()
    assert len(net.delivered) == 1
    assert net.nodes["D"].stats.relay_tampered == 1


def test_a_frame_relayed_twice_is_refused_as_a_replay() -> None:
    net = Net()
    net.break_path("A", "D")
    net.nodes["A"].send("D", IDS["D"], wire.encode(MSG))
    net.run()
    captured: list[RelayFrame] = []

    def keep(frame: RelayFrame) -> RelayFrame:
        captured.append(frame)
        return frame

    net.tamper = keep
    net.nodes["A"].send("D", IDS["D"], wire.encode(ForwardPropose(10, b"w")))
    net.run()
    net.nodes["D"].on_message(IDS["R"], captured[0])  # the relay sends it again
    assert [m for _n, _f, m in net.delivered].count(ForwardPropose(10, b"w")) == 1
    assert net.nodes["D"].stats.relay_replays == 1


def test_one_hop_only_a_relay_never_forwards_a_relayed_frame() -> None:
    net = Net()
    frame = RelayFrame("A", "D", 1, b"x" * 64)  # hop 1, but R is not D
    net.nodes["R"].on_message(IDS["A"], frame)
    spoofed = RelayFrame("D", "A", 0, b"x" * 64)  # claims D as origin, came from A
    net.nodes["R"].on_message(IDS["A"], spoofed)
    r = net.nodes["R"].stats
    assert r.relay_drops == 2 and r.relayed_forwarded == 0
    answers = [wire.decode(d) for _s, _t, d in net.wire]
    assert all(isinstance(m, RelayNack) for m in answers)


def test_a_relay_without_a_path_onwards_nacks_and_the_origin_gives_up_on_it() -> None:
    net = Net()
    net.break_path("A", "D")
    net.break_path("R", "D")
    net.nodes["A"].send("D", IDS["D"], wire.encode(MSG))
    net.run()
    a = net.nodes["A"]
    assert net.nodes["R"].stats.relay_drops == 1
    assert a.stats.relay_nacks_in == 1
    # No other relay: the next message goes directly, counted, in case the path heals.
    a.send("D", IDS["D"], wire.encode(MSG))
    assert a.stats.unrelayable == 1
    assert net.wire[-1][1] == IDS["D"]


def test_a_full_relay_queue_refuses_frames() -> None:
    net = Net()
    net.break_path("A", "D")
    net.queued = LinkConfig.lan().relay_queue
    net.nodes["A"].send("D", IDS["D"], wire.encode(MSG))
    net.run()
    assert net.nodes["R"].stats.relay_drops == 1
    assert net.delivered == []


def test_what_was_in_flight_on_a_path_found_broken_is_resent_over_the_relay() -> None:
    net = Net()
    a = net.nodes["A"]
    a.send("D", IDS["D"], wire.encode(MSG))  # direct
    net.wire.clear()  # lost on the dying path
    net.break_path("A", "D")
    a.poll(time.monotonic())
    net.run()
    assert a.stats.resent == 1
    assert IDS["D"] in net.transports["A"].dropped
    assert ("D", IDS["A"], MSG) in net.delivered
