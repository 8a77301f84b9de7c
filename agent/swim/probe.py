"""Bookkeeping for probes: our own pending probe and the relays we run for others.

A relay is an indirect probe we perform on behalf of a requester: we ping the
target under a sequence number of our own, forward its Ack under the
requester's number, or send a Nack when our timeout passes first.  The table is
bounded: when full, new requests are refused (the requester then simply counts
a missing Nack), so a flood of requests cannot grow our memory.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from agent.swim.members import Member, MemberTable
from agent.swim.messages import MemberState

N = TypeVar("N")

HelperScore = Callable[[str, str], float]
"""``(helper, target) -> score``: how likely a helper reaches the target (the
link-state reputation, ``agent.links.state.LinkTable.relay_score``)."""
ProbeObserver = Callable[[str, str, float | None], None]
"""``(target, helper, rtt)``: a probe's Ack came directly (helper "", with its
RTT) or only through ``helper`` -- link-state observations for the runtime."""


def rank_helpers(candidates: Sequence[N], k: int, node_of: Callable[[N], str],
                 target: str, score: HelperScore | None) -> list[N]:
    """The ``k`` best indirect-probe helpers for ``target``: by ``score`` (the
    order of ``candidates``, random, breaks ties), or the first ``k`` without one."""
    if score is None:
        return list(candidates[:k])
    return sorted(candidates, key=lambda c: -score(node_of(c), target))[:k]


def pick_helpers(table: MemberTable, rng: random.Random, k: int, target: str,
                 score: HelperScore | None) -> list[Member]:
    """The indirect-probe helpers for ``target``: ``k`` random live members, or,
    with a ``score``, the ``k`` best of *all* live members (a random sample could
    miss the one member that still reaches the target across a partial partition)."""
    if score is None:
        return table.sample(rng, k, lambda m: m.state == MemberState.ALIVE, exclude=target)
    pool = [m for m in table if m.state == MemberState.ALIVE and m.node != target]
    rng.shuffle(pool)
    return rank_helpers(pool, k, lambda m: m.node, target, score)


@dataclass(slots=True)
class PendingProbe:
    """Our probe of ``target`` in flight."""

    seq: int
    target: str
    addr: str
    started: float
    timeout_at: float  # direct Ack deadline: then indirect + TCP fallback
    end_at: float  # no Ack by then: suspect
    indirect_sent: bool = False
    expected_nacks: int = 0
    nackers: list[str] = field(default_factory=list)  # helpers that could not reach it

    @property
    def nacks(self) -> int:
        return len(self.nackers)


@dataclass(frozen=True, slots=True)
class Relay:
    orig_seq: int
    source_addr: str
    want_nack: bool
    deadline: float


class RelayTable:
    """Indirect probes we run for others, keyed by our local sequence number."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._by_seq: dict[int, Relay] = {}
        self._deadlines: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._by_seq)

    def add(self, local_seq: int, orig_seq: int, source_addr: str, want_nack: bool, deadline: float) -> bool:
        """Register a relay; False if the table is full."""
        if len(self._by_seq) >= self._capacity:
            return False
        self._by_seq[local_seq] = Relay(orig_seq, source_addr, want_nack, deadline)
        heapq.heappush(self._deadlines, (deadline, local_seq))
        return True

    def pop(self, local_seq: int) -> Relay | None:
        """The relay answered by an Ack with ``local_seq`` (removed), if any."""
        return self._by_seq.pop(local_seq, None)

    def expired(self, now: float) -> list[Relay]:
        """Relays whose target did not answer in time and that want a Nack (removed)."""
        out: list[Relay] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _deadline, seq = heapq.heappop(heap)
            relay = self._by_seq.pop(seq, None)
            if relay is not None and relay.want_nack:
                out.append(relay)
        return out

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None


class ProbeHints:
    """Members to probe out of turn, because the runtime saw a sign of trouble.

    A broken stream connection to a member is not evidence of failure (a peer
    restarts, an idle link is dropped), so it never suspects anyone by itself;
    it only moves that member's next probe forward.  With round-robin probing a
    crashed member is otherwise first probed up to one full round later (on
    average about ``n / (survivors + 1)`` probe intervals).  Each member gets at
    most one hinted probe per ``min_gap`` seconds, and the queue is bounded, so
    a flapping link cannot turn into a probe storm.
    """

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._queue: list[str] = []
        self._last: dict[str, float] = {}

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, node: str, now: float, min_gap: float) -> bool:
        """Queue ``node`` for an early probe; False if it is queued or was hinted recently."""
        last = self._last.get(node)
        if node in self._queue or (last is not None and now - last < min_gap):
            return False
        if len(self._queue) >= self._capacity:
            return False
        if len(self._last) >= 4 * self._capacity:
            self._last = {n: t for n, t in self._last.items() if now - t < min_gap}
        self._last[node] = now
        self._queue.append(node)
        return True

    def pop(self) -> str | None:
        return self._queue.pop(0) if self._queue else None
