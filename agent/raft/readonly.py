"""ReadIndex bookkeeping on the leader (Raft thesis §6.4).

A read request remembers the commit index at the time it arrived; it is safe to
serve once a quorum of voters acknowledged a heartbeat sent *after* it arrived
(proving we were still the leader).  Heartbeats carry the key of the newest
pending request; an ack for it also confirms every older request, so requests
are released in arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class PendingRead:
    index: int
    ctx: bytes
    requester: str
    acks: set[str] = field(default_factory=set)


def read_key(requester: str, ctx: bytes) -> bytes:
    """Heartbeat context for a request: unique across requesters (ids never hold '/')."""
    return requester.encode() + b"/" + ctx


class ReadOnly:
    def __init__(self) -> None:
        self._pending: dict[bytes, PendingRead] = {}
        self._queue: list[bytes] = []

    def add(self, index: int, requester: str, ctx: bytes) -> bytes:
        key = read_key(requester, ctx)
        if key not in self._pending:
            self._pending[key] = PendingRead(index, ctx, requester)
            self._queue.append(key)
        return key

    def ack(self, key: bytes, voter: str) -> set[str] | None:
        """Record ``voter``'s ack; the ack set, or None if the key is unknown."""
        read = self._pending.get(key)
        if read is None:
            return None
        read.acks.add(voter)
        return read.acks

    def release_through(self, key: bytes) -> list[PendingRead]:
        """Pop every request up to and including ``key`` (arrival order)."""
        if key not in self._pending:
            return []
        pos = self._queue.index(key)
        keys, self._queue = self._queue[: pos + 1], self._queue[pos + 1 :]
        return [self._pending.pop(k) for k in keys]

    def last_key(self) -> bytes:
        return self._queue[-1] if self._queue else b""

    def reset(self) -> None:
        self._pending.clear()
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)
