"""The outbound stream cap and idle close (issue 20) on a 20-node loopback mesh.

The lighter form of "the stream cap holds under a 20-agent loopback mesh": 20 real
sealed transports (real sockets, one event loop) instead of 20 agent processes,
which a 2-core box shared by several suites cannot hold with their Raft, SWIM and
psutil loops.  Every node talks to every other; each keeps at most ``CAP``
outbound streams besides the exempt ones (the leader's replication streams), the
least recently used closed first, and nothing sent is lost when a stream is
closed for room only after its queue drained.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from support.wait import wait_until_async

from agent.crypto import Keyring
from agent.runtime.transport import Transport

pytestmark = pytest.mark.timeout(60)

N = 20
CAP = 4
HOST = "127.0.0.1"


class Mesh:
    def __init__(self) -> None:
        ring = Keyring.from_key(bytes(range(32)))
        self.got: list[list[tuple[str, bytes]]] = [[] for _ in range(N)]
        self.nodes = [
            Transport(HOST, 0, ring, f"node{i}", self._drop, self._sink(i), rng=random.Random(i))
            for i in range(N)]

    def _sink(self, i: int):  # type: ignore[no-untyped-def]
        def on_stream(addr: str, payload: bytes) -> None:
            self.got[i].append((addr, payload))
        return on_stream

    @staticmethod
    def _drop(addr: str, payload: bytes) -> None:
        pass


async def test_twenty_nodes_all_talking_keep_within_the_stream_cap() -> None:
    mesh = Mesh()
    for t in mesh.nodes:
        await t.start()
    try:
        addrs = [t.listen_addr for t in mesh.nodes]
        leader_peer = addrs[N - 1]  # node 0's "replication stream": exempt
        for i, t in enumerate(mesh.nodes):
            exempt = {leader_peer} if i == 0 else set()
            t.set_stream_cap(CAP, exempt.__contains__)
        most = 0
        for round_no in range(2):
            for step in range(1, N):
                for i, t in enumerate(mesh.nodes):
                    t.send_stream(addrs[(i + step) % N], f"{round_no}:{i}".encode())
                    if i == 0:
                        t.send_stream(leader_peer, b"append")
                for t in mesh.nodes:
                    capped = [a for a, _c, _q in t.outbound()
                              if a != leader_peer or t is not mesh.nodes[0]]
                    most = max(most, len(capped))
                    assert len(capped) <= CAP
                # Each step's messages arrive before the next step evicts their streams.
                expected = (round_no * (N - 1) + step)
                await wait_until_async(f"step {step} delivered", lambda e=expected: all(
                    sum(1 for _a, p in got if not p.startswith(b"append")) >= e for got in mesh.got),
                    timeout=20)
        assert most == CAP
        assert all(len(got) >= 2 * (N - 1) for got in mesh.got)
        assert mesh.nodes[0].stats.streams_evicted > 0
        # node 0 kept its exempt stream open through all of it.
        assert leader_peer in [a for a, connected, _q in mesh.nodes[0].outbound() if connected]
        # Idle streams close after the idle time.
        before = len(mesh.nodes[1].outbound())
        closed = mesh.nodes[1].close_idle(time.monotonic() + 120.0, 60.0)
        assert closed == before > 0
        assert mesh.nodes[1].outbound() == []
        assert mesh.nodes[1].stats.streams_idle_closed == closed
    finally:
        await asyncio.gather(*(t.close() for t in mesh.nodes))
