"""LeaderLossWatch (agent/runtime/leader_loss.py): a lost connection, then a
refused connect to that port, is told to membership (SWIM) and, for the leader,
to the consensus driver; a live peer (its port accepts) to neither."""

from __future__ import annotations

import asyncio
import socket

from support.wait import wait_until_async

from agent.runtime.leader_loss import LeaderLossWatch, refuses_connections


class Directory:
    def __init__(self, addrs: dict[str, str]) -> None:
        self.addrs = addrs
        self.lost: list[str] = []
        self.refusals: list[str] = []

    def addr_of(self, node_id: str) -> str | None:
        return self.addrs.get(node_id)

    def connection_lost(self, addr: str) -> None:
        self.lost.append(addr)

    def refused(self, addr: str) -> None:
        self.refusals.append(addr)


class Consensus:
    def __init__(self, leader: str) -> None:
        self.leader_id = leader
        self.gone: list[str] = []

    def is_leader(self) -> bool:
        return False

    async def leader_gone(self, leader: str) -> None:
        self.gone.append(leader)


def closed_port() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_a_refused_leader_port_is_told_to_the_driver() -> None:
    dead = closed_port()
    assert await refuses_connections(dead)
    directory, consensus = Directory({"L": dead, "F": "127.0.0.1:1"}), Consensus("L")
    watch = LeaderLossWatch(directory, consensus)
    watch.connection_lost(dead)
    await wait_until_async("the driver told", lambda: consensus.gone == ["L"], 5.0)
    assert directory.lost == [dead] and directory.refusals == [dead] and watch.refusals == 1
    await watch.close()


async def test_a_live_leader_is_not_reported_and_another_dead_peer_only_to_membership() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    live = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    other = closed_port()
    directory, consensus = Directory({"L": live, "F": other}), Consensus("L")
    watch = LeaderLossWatch(directory, consensus)
    watch.connection_lost(live)  # the leader's port still accepts: its process is alive
    watch.connection_lost(other)  # not the leader: SWIM's business only
    await watch.checked()  # every attempt of the leader check made
    await watch.close()
    server.close()
    assert consensus.gone == [] and directory.refusals == [other] and watch.refusals == 1
    assert directory.lost == [live, other]
