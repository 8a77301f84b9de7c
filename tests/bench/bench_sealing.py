"""Benchmark: the cost of sealing.

Prints, from one run:

1. seal+open of a 100-byte datagram per second (Envelope: AES-256-GCM plus the
   cookie and replay-window checks, after the cookie handshake), against the
   50k/s target;
2. TCP echo round trips per second on loopback, 100-byte messages, one
   outstanding at a time and pipelined (64 outstanding), for
   (a) plain asyncio streams with length framing, no sealing, and
   (b) the same code with every message sealed and opened on both sides,
   and the share of throughput per-message sealing costs;
3. the full sealed ``Transport`` (pooled connection, queue, batching, Hello,
   replies over the peer's own connection) echoing the same messages, and its
   cost against (a): the figure the 25% target is about.

Each variant runs in alternating short rounds and the median is printed, so
load from other processes on the box hits all of them alike.

Run: ``.venv/bin/python tests/bench/bench_sealing.py [--seconds S]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)

from agent import wire
from agent.crypto import Keyring
from agent.envelope import Channel, CookieNeeded, Envelope, Grant, StreamGate
from agent.runtime.transport import Transport

PAYLOAD = os.urandom(100)
KEY = os.urandom(32)
HOST = "127.0.0.1"


def cookie_for(sender: Envelope, receiver: Envelope) -> bytes:
    """The cookie handshake the transport does on first contact."""
    try:
        receiver.open_datagram(sender.seal(Channel.DATAGRAM, b"hello?"))
    except CookieNeeded as refused:
        grant = sender.open_datagram(receiver.seal_grant(refused, "bench:1"))
        assert isinstance(grant, Grant)
        return grant.cookie
    raise AssertionError("a cookieless datagram was accepted")


def bench_seal_open(seconds: float) -> float:
    alice = Envelope(Keyring.from_key(KEY), "alice")
    bob = Envelope(Keyring.from_key(KEY), "bob")
    cookie = cookie_for(alice, bob)
    seal, open_ = alice.seal, bob.open_datagram
    n = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(1000):
            open_(seal(Channel.DATAGRAM, PAYLOAD, cookie))
        n += 1000
    return n / (time.perf_counter() - start)


Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]


def codecs(sealed: bool) -> tuple[Codec, Codec]:
    """(client codec, server codec): (wrap, unwrap) pairs."""
    if not sealed:
        ident = (lambda b: b, lambda b: b)
        return ident, ident
    client = Envelope(Keyring.from_key(KEY), "client")
    server = Envelope(Keyring.from_key(KEY), "server")
    # One connection each way, each guarded by its acceptor's challenge.
    at_server, at_client = StreamGate(), StreamGate()
    up, down = at_server.challenge, at_client.challenge
    return ((lambda b: client.seal(Channel.STREAM, b, up),
             lambda b: client.open_stream(b, at_client)),
            (lambda b: server.seal(Channel.STREAM, b, down),
             lambda b: server.open_stream(b, at_server)))


async def bench_echo(sealed: bool, seconds: float, window: int) -> float:
    (c_wrap, c_unwrap), (s_wrap, s_unwrap) = codecs(sealed)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = wire.FrameDecoder()
        while data := await reader.read(65536):
            for body in decoder.feed(data):
                writer.write(wire.frame(s_wrap(s_unwrap(body))))
        writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(HOST, port)
    decoder = wire.FrameDecoder()
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(window):
            writer.write(wire.frame(c_wrap(PAYLOAD)))
        got = 0
        while got < window:
            for body in decoder.feed(await reader.read(65536)):
                assert c_unwrap(body) == PAYLOAD
                got += 1
        done += window
    elapsed = time.perf_counter() - start
    writer.close()
    server.close()
    return done / elapsed


async def bench_transport(seconds: float, window: int) -> float:
    """Callback-driven, as the runtime uses it: each reply that arrives sends
    the next request from inside the receive callback, keeping ``window``
    requests outstanding."""
    done = 0
    finished = asyncio.Event()
    deadline = 0.0
    holder: list[Transport] = []

    def on_a(addr: str, payload: bytes) -> None:
        nonlocal done
        done += 1
        if time.perf_counter() < deadline:
            holder[0].send_stream(addr, PAYLOAD)
        else:
            finished.set()

    a = Transport(HOST, 0, Keyring.from_key(KEY), "a", lambda *_: None, on_a)
    b = Transport(HOST, 0, Keyring.from_key(KEY), "b", lambda *_: None,
                  lambda addr, p: b.send_stream(addr, p))
    holder.append(a)
    await a.start()
    await b.start()
    start = time.perf_counter()
    deadline = start + seconds
    for _ in range(window):
        a.send_stream(b.listen_addr, PAYLOAD)
    await finished.wait()
    elapsed = time.perf_counter() - start
    await a.close()
    await b.close()
    return done / elapsed


async def measure(seconds: float, window: int) -> tuple[float, float, float]:
    """Median of alternating short rounds, so load from elsewhere on the box
    hits all three variants alike."""
    rounds = 5
    results: list[tuple[float, float, float]] = []
    for _ in range(rounds):
        plain = await bench_echo(False, seconds / rounds, window)
        sealed = await bench_echo(True, seconds / rounds, window)
        full = await bench_transport(seconds / rounds, window)
        results.append((plain, sealed, full))
    return (statistics.median(r[0] for r in results),
            statistics.median(r[1] for r in results),
            statistics.median(r[2] for r in results))


async def main_async(seconds: float) -> None:
    for window in (1, 64):
        plain, sealed, full = await measure(seconds, window)
        print(f"TCP echo, 100-byte messages, {window} outstanding (median of 5 rounds):")
        print(f"  plain asyncio echo, no sealing : {plain:10,.0f} round trips/s")
        print(f"  same echo, every message sealed: {sealed:10,.0f} round trips/s "
              f"(sealing costs {1 - sealed / plain:6.1%} of plain)")
        cost = 1 - full / plain
        verdict = "OK" if cost <= 0.25 else "OVER TARGET"
        print(f"  meshtui Transport (sealed)     : {full:10,.0f} round trips/s "
              f"(costs {cost:6.1%} of plain; target <= 25%: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = parser.parse_args()
    rate = bench_seal_open(args.seconds)
    print(f"seal+open, 100-byte message: {rate:,.0f}/s (target > 50,000/s: "
          f"{'OK' if rate > 50_000 else 'BELOW TARGET'})")
    asyncio.run(main_async(args.seconds))


if __name__ == "__main__":
    main()
