"""The leader's KV expiry: keys whose TTL has passed leave through consensus.

Theory of operation: a ``kv.put_ttl`` entry stores ``expires_at = at + ttl``
(``at`` is the proposer's clock inside the command, so every replica holds the
same instant).  Nothing removes a key by reading a clock on its own replica --
replicas would disagree on when it is gone.  Instead the leader, on its own
clock, looks every ``SWEEP_INTERVAL`` (or sooner, when the next expiry is
nearer) for keys that are due and commits one ``kv.expire`` per namespace
naming them (at most ``MAX_EXPIRE_KEYS`` keys per entry).  Applying it removes
each named key whose expiry is at or before that entry's ``at`` -- a key
written again meanwhile keeps its new value -- identically on every replica.

Between a key's expiry and that entry's commit (a sweep plus one commit, well
under a second on a LAN) reads hide the key by the reader's clock
(``handlers/kv.py``), so no read shows an expired key.  After a leader change
the new leader sweeps on its own clock; a failed proposal (no quorum) is
simply retried at the next sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from agent.errors import MeshError
from agent.state.commands import MAX_EXPIRE_KEYS, KvExpire, encode_command
from agent.state.machine import ApplyResult

log = logging.getLogger("agent.kv_expiry")

SWEEP_INTERVAL = 0.25
"""Seconds between the leader's looks for due keys: how late (at most) a TTL key
leaves the replicated state after its expiry, beyond one commit.  Reads hide it
on time regardless; a quarter second keeps an idle leader's cost negligible."""


class ExpiryState(Protocol):
    """What the sweep reads of the replicated state."""

    def kv_due(self, now: float, limit: int) -> dict[str, list[str]]: ...


class ExpiryConsensus(Protocol):
    """What the sweep needs of consensus: am I the leader, and committing."""

    def is_leader(self) -> bool: ...

    async def propose(self, command: bytes) -> ApplyResult: ...


def expire_commands(due: dict[str, list[str]], at: float) -> list[bytes]:
    """One encoded ``kv.expire`` per namespace (and per ``MAX_EXPIRE_KEYS`` keys)."""
    out = []
    for ns in sorted(due):
        keys = due[ns]
        for start in range(0, len(keys), MAX_EXPIRE_KEYS):
            batch = tuple(keys[start : start + MAX_EXPIRE_KEYS])
            out.append(encode_command(KvExpire(ns, batch), "", at))
    return out


class KvExpiry:
    """The sweep loop; ``run()`` until cancelled (the agent's background)."""

    def __init__(self, consensus: ExpiryConsensus, state: ExpiryState) -> None:
        self._consensus = consensus
        self._state = state
        self.expired = 0
        """Keys this node removed as leader (for tests and logs)."""

    async def sweep_once(self, now: float) -> int:
        """Commit the expiry of every key due at ``now`` if this node leads; keys removed."""
        if not self._consensus.is_leader():
            return 0
        removed = 0
        for command in expire_commands(self._state.kv_due(now, MAX_EXPIRE_KEYS * 4), now):
            try:
                result = await self._consensus.propose(command)
            except MeshError as exc:  # no quorum, lost leadership: the next sweep retries
                log.debug("kv expiry not committed: %s", exc)
                return removed
            if result.ok and isinstance(result.value, dict):
                removed += len(result.value.get("expired", ()))
        self.expired += removed
        return removed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            await self.sweep_once(time.time())
