"""A peer whose process died -- the leader above all: noticed from the kernel's
word, not a timeout.

When a process is killed its sockets close at once: every peer's stream to it
ends, and a new connection to its port is refused (RST), because nothing
listens there any more.  A silent network (a cable pulled, an nft ``drop``)
gives no such word and is left to the normal election timeout.

``LeaderLossWatch`` stands between the peer router and the membership driver
(it is the router's ``PeerDirectory``): it passes every call on to membership
and, when a connection ends, tries a TCP connect to that peer's port (a few
attempts in 0.17 s).  Refused: membership is told (``refused``: SWIM counts it
towards a suspicion that a failed probe started, and a majority of refusers
declares the member dead at once, swim/rules.py "Refused"); and if the peer
was the Raft leader, the consensus driver too (``leader_gone``), which forgets
the leader -- ending its lease here, so this node grants votes -- and
campaigns after a short random delay.

One node's word deposes no one (issue 14's rule): the campaign starts with a
pre-vote, which wins only if a majority of the voters also lost the leader,
each by its own evidence or its own election timeout.  A reset on a single
link (nft ``reject with tcp reset`` between the leader and one follower) is
refused too, but the other followers are still in the leader's lease and turn
the pre-vote down; the follower takes the leader back at its next heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from agent.errors import ConfigError
from agent.runtime.peer_addr import parse_addr
from agent.runtime.ports import PeerDirectory

log = logging.getLogger(__name__)

REFUSAL_PROBE_TIMEOUT = 0.5
"""Seconds one connect to the leader's port may take.  A refusal comes back in
one round trip; a connect that neither succeeds nor is refused in this time is
not evidence of anything (the normal timeouts decide)."""

REFUSAL_PROBE_DELAYS = (0.0, 0.02, 0.05, 0.1)
"""Seconds before each connect of one check.  A killed process's sockets are
closed one by one as it is torn down: the stream that told us may close a
millisecond before the listening socket does, and a connect in between is still
accepted.  A refusal on any attempt is the evidence; a live leader accepts all
four (four connects per lost connection to a live leader, rare)."""


MAX_CHECKS = 64
"""Checks under way at once (one per lost connection's address): a burst of
lost connections (our own restart of the network) cannot open hundreds of
probe connections."""


class LeaderSource(Protocol):
    """What the watch needs of the consensus driver."""

    @property
    def leader_id(self) -> str: ...

    def is_leader(self) -> bool: ...

    async def leader_gone(self, leader: str) -> None: ...


async def refuses_connections(addr: str, timeout: float = REFUSAL_PROBE_TIMEOUT) -> bool:
    """True if a TCP connect to ``addr`` is refused (nothing listens there)."""
    try:
        host, port = parse_addr(addr)
    except ConfigError:
        return False
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return False


async def _refused_soon(addr: str) -> bool:
    """``refuses_connections`` on any of the attempts ``REFUSAL_PROBE_DELAYS`` apart."""
    for delay in REFUSAL_PROBE_DELAYS:
        await asyncio.sleep(delay)
        if await refuses_connections(addr):
            return True
    return False


class LeaderLossWatch:
    """The router's ``PeerDirectory``: membership's, plus the leader-loss check."""

    def __init__(self, directory: PeerDirectory, consensus: LeaderSource) -> None:
        self._directory = directory
        self._consensus = consensus
        self._checking: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.refusals = 0
        """Leader connections found refused (each told to the consensus driver)."""

    def addr_of(self, node_id: str) -> str | None:
        return self._directory.addr_of(node_id)

    def refused(self, addr: str) -> None:
        self._directory.refused(addr)

    def connection_lost(self, addr: str) -> None:
        self._directory.connection_lost(addr)
        if addr in self._checking or len(self._checking) >= MAX_CHECKS:
            return
        leader = self._consensus.leader_id
        if not leader or self._consensus.is_leader() or self._directory.addr_of(leader) != addr:
            leader = ""
        self._checking.add(addr)
        task = asyncio.get_running_loop().create_task(self._check(leader, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, leader: str, addr: str) -> None:
        try:
            if not await _refused_soon(addr):
                return
            self.refusals += 1
            self._directory.refused(addr)  # SWIM counts it towards a suspicion
            if leader:
                log.warning("leader %s at %s refuses connections: its process is gone", leader, addr)
                await self._consensus.leader_gone(leader)
        finally:
            self._checking.discard(addr)

    async def checked(self) -> None:
        """Wait until every check under way has finished (tests, shutdown)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
