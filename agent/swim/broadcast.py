"""A bounded, transmit-limited broadcast queue (memberlist's TransmitLimitedQueue).

Theory of operation
-------------------
Every membership change is queued as a broadcast and piggybacked on outgoing
datagrams until it has been sent ``retransmit_limit(n)`` times, after which the
epidemic carries it on without us.  Selection prefers the least-sent items and,
among equals, the newest, so fresh news spreads first.  A broadcast is keyed by
what it is about (``("m", node)`` for alive/suspect/dead, ``("l", node)`` for
load): queueing a new one invalidates the older one with the same key, so the
queue holds at most one membership item per node.  The queue is bounded: past
``max_items`` the most-sent (then oldest) items are dropped.

Items are kept in buckets by transmit count (dicts keep insertion order), so a
selection touches only the items it considers, not the whole queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.swim.messages import Alive, Dead, LoadReport, Piggyback, Suspect
from agent.swim.sizing import value_size

BroadcastMsg = Alive | Suspect | Dead | LoadReport
BroadcastKey = tuple[str, str]


_ALIVE, _SUSPECT, _DEAD, _LOAD = range(4)

MAX_MISSES = 16
"""Items that did not fit the remaining budget after which a selection stops
looking.  Without a bound, a datagram left with less room than any large item
(an Alive carries its node's metadata) would scan the whole queue on every
send: O(queue) per datagram, quadratic cluster-wide after a partition heals
and every node refutes at once."""


@dataclass(slots=True)
class _Item:
    key: BroadcastKey
    msg: BroadcastMsg
    kind: int  # which Piggyback tuple carries it
    size: int  # upper bound of its encoding inside a Piggyback tuple
    ident: int  # insertion order; higher is newer
    transmits: int = 0


def _kind(msg: BroadcastMsg) -> int:
    if isinstance(msg, Alive):
        return _ALIVE
    if isinstance(msg, Suspect):
        return _SUSPECT
    if isinstance(msg, Dead):
        return _DEAD
    return _LOAD


@dataclass(slots=True)
class Selection:
    """Broadcasts chosen for one datagram, grouped as a Piggyback needs them."""

    alive: list[Alive] = field(default_factory=list)
    suspect: list[Suspect] = field(default_factory=list)
    dead: list[Dead] = field(default_factory=list)
    loads: list[LoadReport] = field(default_factory=list)
    size: int = 0

    def piggyback(self) -> Piggyback:
        return Piggyback(tuple(self.alive), tuple(self.suspect), tuple(self.dead), tuple(self.loads))

    def __len__(self) -> int:
        return len(self.alive) + len(self.suspect) + len(self.dead) + len(self.loads)


def broadcast_key(msg: BroadcastMsg) -> BroadcastKey:
    """What a broadcast is about: newer broadcasts with the same key replace it."""
    if isinstance(msg, LoadReport):
        return ("l", msg.node)
    return ("m", msg.node)


class BroadcastQueue:
    """Bounded queue of broadcasts with per-key invalidation and transmit limits."""

    def __init__(self, max_items: int) -> None:
        assert max_items >= 1
        self._max_items = max_items
        self._by_key: dict[BroadcastKey, _Item] = {}
        self._buckets: dict[int, dict[int, _Item]] = {}
        self._next_ident = 0
        self.dropped = 0  # items pruned because the queue was full (a counter for metrics)

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, msg: BroadcastMsg) -> None:
        """Queue ``msg``, replacing any queued broadcast about the same thing."""
        key = broadcast_key(msg)
        old = self._by_key.pop(key, None)
        if old is not None:
            self._unbucket(old)
        self._next_ident += 1
        item = _Item(key, msg, _kind(msg), value_size(msg), self._next_ident)
        self._by_key[key] = item
        self._buckets.setdefault(0, {})[item.ident] = item
        if len(self._by_key) > self._max_items:
            self._prune(self._max_items)

    def pending_about(self, key: BroadcastKey) -> BroadcastMsg | None:
        """The queued broadcast with ``key`` (for tests and introspection)."""
        item = self._by_key.get(key)
        return item.msg if item is not None else None

    def select(self, budget: int, transmit_limit: int) -> Selection:
        """Choose broadcasts whose sizes sum to at most ``budget`` bytes, least-sent and
        newest first; count a transmission for each and drop those reaching
        ``transmit_limit``."""
        chosen = Selection()
        if not self._by_key or budget <= 0:
            return chosen
        picked: list[_Item] = []
        remaining = budget
        misses = 0
        for transmits in sorted(self._buckets):
            for item in reversed(self._buckets[transmits].values()):
                if item.size <= remaining:
                    picked.append(item)
                    remaining -= item.size
                    if remaining < 24:  # smaller than any broadcast: the datagram is full
                        break
                else:
                    misses += 1
                    if misses >= MAX_MISSES:
                        break
            if remaining < 24 or misses >= MAX_MISSES:
                break
        by_kind: tuple[list[Any], ...] = (chosen.alive, chosen.suspect, chosen.dead, chosen.loads)
        buckets = self._buckets
        for item in picked:
            self._unbucket(item)
            item.transmits += 1
            if item.transmits >= transmit_limit:
                del self._by_key[item.key]
            else:
                bucket = buckets.get(item.transmits)
                if bucket is None:
                    bucket = buckets[item.transmits] = {}
                bucket[item.ident] = item
            by_kind[item.kind].append(item.msg)
        chosen.size = budget - remaining
        return chosen

    def _unbucket(self, item: _Item) -> None:
        bucket = self._buckets[item.transmits]
        del bucket[item.ident]
        if not bucket:
            del self._buckets[item.transmits]

    def _prune(self, keep: int) -> None:
        """Drop the most-sent, then oldest, items until ``keep`` remain."""
        for transmits in sorted(self._buckets, reverse=True):
            while len(self._by_key) > keep and transmits in self._buckets:
                bucket = self._buckets[transmits]
                oldest = next(iter(bucket.values()))
                self._unbucket(oldest)
                del self._by_key[oldest.key]
                self.dropped += 1
            if len(self._by_key) <= keep:
                return
