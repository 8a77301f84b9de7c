"""Two (or more) real Transports on loopback: sealed datagrams and streams,
replies, garbage, replays, reconnection, queue bounds and key rotation.
(Replays across restarts and evictions: tests/unit/test_replay_restart.py.)"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from support.wait import wait_until_async

from agent import crypto, wire
from agent.crypto import Keyring
from agent.envelope import DATAGRAM_OVERHEAD, Channel, Envelope
from agent.errors import ConfigError
from agent.runtime import transport as transport_mod
from agent.runtime.transport import Transport, backoff_delay, parse_addr

KEY_A = bytes(range(32))
KEY_B = bytes(range(50, 82))
HOST = "127.0.0.1"

pytestmark = pytest.mark.timeout(60)


class Node:
    """A Transport plus the messages it received."""

    def __init__(self, name: str, keyring: Keyring, port: int = 0) -> None:
        self.name = name
        self.datagrams: list[tuple[str, bytes]] = []
        self.streams: list[tuple[str, bytes]] = []
        self.lost: list[str] = []
        self.t = Transport(HOST, port, keyring, name,
                           self._on_datagram, self._on_stream, rng=random.Random(1),
                           on_connection_lost=self.lost.append)
        self.on_datagram_hook: Callable[[str, bytes], None] | None = None
        self.on_stream_hook: Callable[[str, bytes], None] | None = None

    def _on_datagram(self, addr: str, payload: bytes) -> None:
        self.datagrams.append((addr, payload))
        if self.on_datagram_hook:
            self.on_datagram_hook(addr, payload)

    def _on_stream(self, addr: str, payload: bytes) -> None:
        self.streams.append((addr, payload))
        if self.on_stream_hook:
            self.on_stream_hook(addr, payload)

    @property
    def addr(self) -> str:
        return self.t.listen_addr

    async def __aenter__(self) -> Node:
        await self.t.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.t.close()


@pytest.fixture
def keyring() -> Iterator[Callable[[], Keyring]]:
    yield lambda: Keyring.from_key(KEY_A)


# --------------------------------------------------------------------------- pure helpers


def test_backoff_table() -> None:
    rng = random.Random(3)
    for attempt, lo, hi in [(0, 0.025, 0.05), (1, 0.05, 0.1), (3, 0.2, 0.4), (10, 2.5, 5.0),
                            (1000, 2.5, 5.0)]:
        for _ in range(50):
            assert lo <= backoff_delay(attempt, rng) <= hi


@pytest.mark.parametrize(("addr", "parsed"), [("127.0.0.1:7900", ("127.0.0.1", 7900)),
                                               ("[::1]:80", ("::1", 80)),
                                               ("host.lan:1", ("host.lan", 1))])
def test_parse_addr(addr: str, parsed: tuple[str, int]) -> None:
    assert parse_addr(addr) == parsed


@pytest.mark.parametrize("addr", ["", "host", ":80", "host:", "host:0", "host:70000", "h:x"])
def test_parse_addr_refuses(addr: str) -> None:
    with pytest.raises(ConfigError):
        parse_addr(addr)


# --------------------------------------------------------------------------- happy path


async def test_datagrams_and_streams_both_ways_with_replies(
        keyring: Callable[[], Keyring]) -> None:
    async with Node("a", keyring()) as a, Node("b", keyring()) as b:
        assert a.t.port != 0 and a.addr == f"{HOST}:{a.t.port}"
        b.on_datagram_hook = lambda addr, p: b.t.send_datagram(addr, b"re:" + p)
        b.on_stream_hook = lambda addr, p: b.t.send_stream(addr, b"re:" + p)

        assert a.t.send_datagram(b.addr, b"ping")
        await wait_until_async("len(a.datagrams) == 1", lambda: len(a.datagrams) == 1, 5.0)
        assert b.datagrams == [(a.addr, b"ping")]
        assert a.datagrams == [(b.addr, b"re:ping")]

        sent = [b"m%d" % i + os.urandom(i % 50) for i in range(500)]
        for payload in sent:
            a.t.send_stream(b.addr, payload)
        await wait_until_async("len(a.streams) == 500", lambda: len(a.streams) == 500, 5.0)
        # Ordered, complete, and attributed to the sender's listen address.
        assert b.streams == [(a.addr, p) for p in sent]
        assert a.streams == [(b.addr, b"re:" + p) for p in sent]
        assert a.t.stats.stream_msgs_out == 500 and b.t.stats.stream_msgs_in == 500
        assert b.t.stats.seal.dropped_tag == 0 and b.t.stats.seal.dropped_replay == 0


async def test_replies_to_one_inbound_read_are_sealed_as_one_batch(
        keyring: Callable[[], Keyring]) -> None:
    """The first reply goes out at once (latency); the rest of what handling one
    read sends to that peer waits and goes as one sealed frame (throughput)."""
    async with Node("a", keyring()) as a, Node("b", keyring()) as b:
        b.t.send_stream(a.addr, b"warm")  # b's connection to a is up before the test
        await wait_until_async("len(a.streams) == 1", lambda: len(a.streams) == 1, 5.0)
        await wait_until_async(
            "b.t.outbound() == [(a.addr, True, 0)]", lambda: b.t.outbound() == [(a.addr, True, 0)], 5.0
        )
        frames = b.t.stats.stream_frames_out
        b.on_stream_hook = lambda addr, p: [b.t.send_stream(addr, b"%d" % i) for i in range(10)]
        a.t.send_stream(b.addr, b"fan out")
        await wait_until_async("len(a.streams) == 11", lambda: len(a.streams) == 11, 5.0)
        assert [p for _, p in a.streams[1:]] == [b"%d" % i for i in range(10)]
        assert b.t.stats.stream_frames_out == frames + 2  # the first reply, then one batch of 9
        # A send outside any inbound handling (a timer, a client) still goes at once.
        b.t.send_stream(a.addr, b"later")
        assert b.t.stats.stream_frames_out == frames + 3
        await wait_until_async("len(a.streams) == 12", lambda: len(a.streams) == 12, 5.0)


async def test_large_stream_message(keyring: Callable[[], Keyring]) -> None:
    async with Node("a", keyring()) as a, Node("b", keyring()) as b:
        big = os.urandom(4 * 1024 * 1024)
        a.t.send_stream(b.addr, big)
        await wait_until_async("len(b.streams) == 1", lambda: len(b.streams) == 1, 5.0)
        assert b.streams[0][1] == big
        assert not a.t.send_stream(b.addr, b"\x00" * (transport_mod.MAX_STREAM_PAYLOAD + 1))
        assert a.t.stats.dropped_oversize == 1


async def test_datagram_size_limit(keyring: Callable[[], Keyring]) -> None:
    async with Node("a", keyring()) as a, Node("b", keyring()) as b:
        assert not a.t.send_datagram(b.addr, b"x" * (wire.MAX_DATAGRAM_SIZE + 1))
        assert a.t.stats.dropped_oversize == 1
        assert a.t.send_datagram(b.addr, b"y" * wire.MAX_DATAGRAM_SIZE)
        await wait_until_async("len(b.datagrams) == 1", lambda: len(b.datagrams) == 1, 5.0)
        # The first datagram to b went without a cookie, was refused and went again.
        assert a.t.stats.datagrams_resent == 1 and b.t.stats.seal.dropped_cookie == 1
        largest = wire.MAX_DATAGRAM_SIZE + DATAGRAM_OVERHEAD
        assert a.t.stats.datagram_bytes_out == 2 * largest
        assert largest <= 1472  # no IP fragmentation on Ethernet
        assert not a.t.send_datagram("nonsense", b"z")
        assert a.t.stats.dropped_bad_addr == 1


async def test_callback_errors_are_contained(keyring: Callable[[], Keyring]) -> None:
    async with Node("a", keyring()) as a, Node("b", keyring()) as b:
        def explode(addr: str, payload: bytes) -> None:
            if payload == b"boom":
                raise RuntimeError("callback bug")

        b.on_datagram_hook = explode
        b.on_stream_hook = explode
        for payload in (b"boom", b"after"):
            a.t.send_datagram(b.addr, payload)
            a.t.send_stream(b.addr, payload)
        await wait_until_async(
            "len(b.datagrams) == 2 and len(b.streams) == 2",
            lambda: len(b.datagrams) == 2 and len(b.streams) == 2,
            5.0,
        )
        assert b.t.stats.callback_errors == 2


# --------------------------------------------------------------------------- hostile input


async def test_garbage_on_both_ports_is_counted_and_harmless(
        keyring: Callable[[], Keyring], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_mod, "HELLO_TIMEOUT", 0.3)
    async with Node("a", keyring()) as a, Node("b", keyring()) as b:
        port = b.t.port
        rng = random.Random(11)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(50):
            udp.sendto(rng.randbytes(rng.randint(0, 1400)), (HOST, port))
        udp.sendto(wire.encode(wire.Hello("evil", "1.2.3.4:5")), (HOST, port))  # plaintext
        udp.sendto(b"\x01" * 9000, (HOST, port))  # oversized
        udp.sendto(Keyring.from_key(KEY_B).seal(b"x" * 40), (HOST, port))  # wrong key
        udp.close()

        async def tcp_attack(data: bytes) -> bytes:
            """What the server sent after its challenge frame, until it hung up."""
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(data)
            await writer.drain()
            sent = await asyncio.wait_for(reader.read(), 5)  # the server must hang up
            writer.close()
            (challenge,) = wire.FrameDecoder().feed(sent[: 4 + int.from_bytes(sent[:4])])
            Envelope(keyring(), "x").open_challenge(challenge)
            return sent[4 + len(challenge):]

        assert await tcp_attack(b"\xff\xff\xff\xff" + b"A" * 100) == b""  # 4 GB frame claim
        assert await tcp_attack(wire.frame(wire.encode(wire.Hello("x", "1.1.1.1:1")))) == b""
        assert await tcp_attack(b"".join(wire.frame(rng.randbytes(60)) for _ in range(20))) == b""
        wrong = Envelope(Keyring.from_key(KEY_B), "eve")
        assert await tcp_attack(b"".join(
            wire.frame(wrong.seal(Channel.STREAM, b"hi")) for _ in range(20))) == b""
        assert await tcp_attack(b"") == b""  # silent: closed after HELLO_TIMEOUT
        # A key holder whose first message is not a Hello is refused, and so
        # is one whose frame is not a well-formed batch (each answers the
        # connection's challenge, so they are opened).
        rogue = Envelope(keyring(), "rogue")

        async def rogue_attack(batch: bytes) -> bytes:
            reader, writer = await asyncio.open_connection(HOST, port)
            header = await reader.readexactly(4)
            frame = await reader.readexactly(int.from_bytes(header))
            cookie = rogue.open_challenge(frame)
            writer.write(wire.frame(rogue.seal(Channel.STREAM, batch, cookie)))
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return rest

        assert await rogue_attack(transport_mod.join_batch([b"no hello"])) == b""
        assert await rogue_attack(b"\x00\x00\x00\x09short") == b""

        a.t.send_datagram(b.addr, b"still alive")
        a.t.send_stream(b.addr, b"still streaming")
        await wait_until_async(
            "len(b.datagrams) == 1 and len(b.streams) == 1",
            lambda: len(b.datagrams) == 1 and len(b.streams) == 1,
            5.0,
        )
        s = b.t.stats
        assert s.dropped_bad_frame == 1
        assert s.closed_bad_peer == 2
        assert s.dropped_no_hello == 3
        assert s.dropped_oversize == 1
        assert s.seal.dropped_plaintext >= 2
        assert s.seal.opened == 5  # no_hello, bad_batch, the real Hello, 1 stream, 1 datagram
        assert s.seal.dropped_unknown_key >= 1
        assert s.seal.dropped_malformed + s.seal.dropped_unknown_key + s.seal.dropped_tag >= 50
        assert b.datagrams == [(a.addr, b"still alive")]


class RecordingUdp:
    """Wraps a transport's UDP endpoint: every datagram it sends is recorded."""

    def __init__(self, inner: asyncio.DatagramTransport) -> None:
        self.inner = inner
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))
        self.inner.sendto(data, addr)

    def close(self) -> None:
        self.inner.close()


async def test_recorded_traffic_replayed_is_dropped(keyring: Callable[[], Keyring]) -> None:
    """A relay between a and b records a's stream; a wrapper records a's
    datagrams.  Both were delivered once; replayed to b, none is."""
    recorded = bytearray()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, b.t.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       record: bool) -> None:
            while data := await src.read(65536):
                if record:
                    recorded.extend(data)
                dst.write(data)
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False),
                             return_exceptions=True)

    async with Node("a", keyring()) as a, Node("b", keyring()) as b:
        proxy = await asyncio.start_server(relay, HOST, 0)
        try:
            udp = RecordingUdp(a.t._udp)  # type: ignore[arg-type]
            a.t._udp = udp  # type: ignore[assignment]
            for i in range(3):
                a.t.send_stream(f"{HOST}:{proxy.sockets[0].getsockname()[1]}", b"msg-%d" % i)
            a.t.send_datagram(b.addr, b"dgram")
            await wait_until_async(
                "len(b.streams) == 3 and len(b.datagrams) == 1",
                lambda: len(b.streams) == 3 and len(b.datagrams) == 1,
                5.0,
            )
            assert [p for _, p in b.streams] == [b"msg-0", b"msg-1", b"msg-2"]
            frames = wire.FrameDecoder().feed(bytes(recorded))
            assert len(frames) >= 2  # the Hello, then the messages

            # The recorded stream, written again on new connections, is refused:
            # b challenged each with a new cookie.
            for _ in range(2):
                _reader, writer = await asyncio.open_connection(HOST, b.t.port)
                writer.write(bytes(recorded))
                await writer.drain()
                await wait_until_async(
                    "b.t.stats.seal.dropped_replay > 0", lambda: b.t.stats.seal.dropped_replay > 0, 5.0
                )
                writer.close()
            await wait_until_async(
                "b.t.stats.seal.dropped_replay == 2 * len(frames)",
                lambda: b.t.stats.seal.dropped_replay == 2 * len(frames),
                5.0,
            )
            assert len(b.streams) == 3

            # a's first datagram (no cookie yet) was refused, then resent with b's.
            sent = [data for data, _ in udp.sent]
            assert len(sent) == 2 and a.t.stats.datagrams_resent == 1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as replay:
                for _ in range(3):
                    for data in sent:
                        replay.sendto(data, (HOST, b.t.port))
            await wait_until_async(
                "b.t.stats.seal.dropped_replay == 2 * len(frames) + 3",
                lambda: b.t.stats.seal.dropped_replay == 2 * len(frames) + 3,
                5.0,
            )
            await wait_until_async(
                "b.t.stats.seal.dropped_cookie == 1 + 3", lambda: b.t.stats.seal.dropped_cookie == 1 + 3, 5.0
            )
            assert [p for _, p in b.datagrams] == [b"dgram"]
        finally:
            proxy.close()


# --------------------------------------------------------------------------- failures


async def test_reconnects_with_backoff_after_peer_restarts(
        keyring: Callable[[], Keyring]) -> None:
    async with Node("a", keyring()) as a:
        b = Node("b", keyring())
        await b.t.start()
        port = b.t.port
        a.t.send_stream(b.addr, b"before")
        await wait_until_async("len(b.streams) == 1", lambda: len(b.streams) == 1, 5.0)
        await b.t.close()
        await wait_until_async(
            "a.t.outbound() == [(b.addr, False, 0)]", lambda: a.t.outbound() == [(b.addr, False, 0)], 5.0
        )

        for i in range(20):
            a.t.send_stream(b.addr, b"while-down-%d" % i)
        await wait_until_async(
            "a.t.stats.connect_failures >= 3", lambda: a.t.stats.connect_failures >= 3, 5.0
        )

        b2 = Node("b", keyring(), port=port)  # restarted: same address, new incarnation
        async with b2:
            await wait_until_async("len(b2.streams) == 20", lambda: len(b2.streams) == 20, 10)
            assert [p for _, p in b2.streams] == [b"while-down-%d" % i for i in range(20)]
            assert a.t.stats.connects == 2
            b2.t.send_stream(a.addr, b"back")
            await wait_until_async(
                "a.streams == [(b2.addr, b'back')]", lambda: a.streams == [(b2.addr, b"back")], 5.0
            )


async def test_a_peer_that_goes_away_is_reported_by_its_listen_address(
        keyring: Callable[[], Keyring]) -> None:
    """Both our outbound connection to it and its inbound one to us end: each is
    reported with the peer's listen address (what membership knows it by); our
    own close reports nothing."""
    async with Node("a", keyring()) as a:
        b = Node("b", keyring())
        await b.t.start()
        b.on_stream_hook = lambda addr, p: b.t.send_stream(addr, b"re:" + p)
        a.t.send_stream(b.addr, b"hello")
        await wait_until_async(
            "a.streams == [(b.addr, b're:hello')]", lambda: a.streams == [(b.addr, b"re:hello")], 5.0
        )
        assert a.lost == []
        await b.t.close()
        await wait_until_async("len(a.lost) == 2", lambda: len(a.lost) == 2, 5.0)
        assert a.lost == [b.addr, b.addr]
        assert b.lost == []
    assert a.lost == [b.addr, b.addr]


async def test_outbound_queue_drops_oldest_when_full(
        keyring: Callable[[], Keyring], monkeypatch: pytest.MonkeyPatch,
        free_port: Callable[[], int]) -> None:
    monkeypatch.setattr(transport_mod, "MAX_PEER_QUEUE", 10)
    port = free_port()
    async with Node("a", keyring()) as a:
        dest = f"{HOST}:{port}"
        for i in range(25):
            a.t.send_stream(dest, b"q%d" % i)
        assert a.t.stats.dropped_queue_full == 15
        assert a.t.outbound() == [(dest, False, 10)]
        async with Node("b", keyring(), port=port) as b:
            await wait_until_async("len(b.streams) == 10", lambda: len(b.streams) == 10, 10)
            assert [p for _, p in b.streams] == [b"q%d" % i for i in range(15, 25)]


# --------------------------------------------------------------------------- key rotation


async def test_key_rotation_under_continuous_traffic_loses_nothing() -> None:
    async with Node("a", Keyring.from_key(KEY_A)) as a, \
               Node("b", Keyring.from_key(KEY_A)) as b:
        sent = {"a_dg": 0, "a_st": 0, "b_dg": 0, "b_st": 0}
        running = True

        async def traffic() -> None:
            i = 0
            while running:
                i += 1
                a.t.send_datagram(b.addr, b"d%d" % i)
                a.t.send_stream(b.addr, b"s%d" % i)
                b.t.send_datagram(a.addr, b"d%d" % i)
                b.t.send_stream(a.addr, b"s%d" % i)
                for k in sent:
                    sent[k] += 1
                await asyncio.sleep(0.002)

        pump = asyncio.create_task(traffic())
        kid_a, kid_b = crypto.key_id(KEY_A).hex(), crypto.key_id(KEY_B).hex()
        steps: list[Callable[[], object]] = [
            lambda: a.t.keyring.install(KEY_B),
            lambda: b.t.keyring.install(KEY_B),
            lambda: a.t.keyring.use(kid_b),
            lambda: b.t.keyring.use(kid_b),
            lambda: a.t.keyring.remove(kid_a),
            lambda: b.t.keyring.remove(kid_a),
        ]
        for step in steps:
            await asyncio.sleep(0.15)
            step()
        await asyncio.sleep(0.15)
        running = False
        await pump
        await wait_until_async(
            "every packet sent during the rotation delivered",
            lambda: len(b.datagrams) == sent["a_dg"]
            and len(b.streams) == sent["a_st"]
            and len(a.datagrams) == sent["b_dg"]
            and len(a.streams) == sent["b_st"],
            5.0,
        )
        assert sent["a_dg"] > 200
        for node in (a, b):
            seal = node.t.stats.seal
            assert (seal.dropped_tag, seal.dropped_unknown_key, seal.dropped_replay,
                    seal.dropped_malformed) == (0, 0, 0, 0)
            assert node.t.keyring.list() == [crypto.KeyInfo(kid_b, True)]
        assert [p for _, p in b.streams] == [b"s%d" % i for i in range(1, sent["a_st"] + 1)]
        # Traffic after rotation is sealed with the new key only.
        packet = a.t.envelope.seal(Channel.DATAGRAM, b"x")
        assert packet[1:5] == crypto.key_id(KEY_B)
        with pytest.raises(crypto.SealError, match="unknown_key"):
            Keyring.from_key(KEY_A).open(packet)


async def test_udp_and_tcp_share_the_port(keyring: Callable[[], Keyring]) -> None:
    async with Node("a", keyring()) as a:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
            s.bind((HOST, a.t.port))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(OSError):
            s.bind((HOST, a.t.port))
    assert struct.calcsize(">I") == wire.FRAME_HEADER_SIZE


async def test_sends_after_close_are_quiet_no_ops(keyring: Callable[[], Keyring]) -> None:
    node = Node("a", keyring())
    await node.t.start()
    await node.t.close()
    assert not node.t.send_datagram("127.0.0.1:9", b"x")
    assert not node.t.send_stream("127.0.0.1:9", b"x")
    assert node.t.outbound() == []


async def test_advertise_can_be_set_after_start(keyring: Callable[[], Keyring]) -> None:
    async with Node("a", keyring()) as a, Node("b", keyring()) as b:
        a.t.advertise = f"localhost:{a.t.port}"
        a.t.send_stream(b.addr, b"x")
        await wait_until_async("len(b.streams) == 1", lambda: len(b.streams) == 1, 5.0)
        assert b.streams == [(f"localhost:{a.t.port}", b"x")]
        with pytest.raises(ConfigError):
            a.t.advertise = "no port"


async def test_peer_that_hangs_up_at_once_is_retried_with_growing_delays(
        keyring: Callable[[], Keyring]) -> None:
    accepts: list[float] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepts.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(hang_up, HOST, 0)
    try:
        async with Node("a", keyring()) as a:
            for _ in range(75):  # keep traffic queued, like Raft heartbeats
                a.t.send_stream(f"{HOST}:{server.sockets[0].getsockname()[1]}", b"x")
                await asyncio.sleep(0.02)
        # Without backoff this would be hundreds of reconnects; with it, the
        # gaps grow (25-50 ms, 50-100 ms, ...): a handful in 1.5 s.
        assert 3 <= len(accepts) <= 10, len(accepts)
        gaps = [b - a for a, b in itertools.pairwise(accepts)]
        assert gaps[-1] > gaps[0]
    finally:
        server.close()
