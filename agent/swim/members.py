"""The member table: one record per known node, state counts, random sampling.

The table never decides anything; :mod:`agent.swim.core` applies the protocol
rules and calls :meth:`MemberTable.set_state` so that the per-state counts
(used for the partition check and Lifeguard's k) stay exact without scanning.
The local node is kept apart (``self_member``); ``others`` are everyone else.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from agent.swim.messages import LoadReport, MemberState, NodeLoad, NodeMeta, PushPullState
from agent.swim.suspicion import Suspicion

STATE_NAMES = {
    MemberState.ALIVE: "alive",
    MemberState.SUSPECT: "suspect",
    MemberState.DEAD: "dead",
    MemberState.LEFT: "left",
}


@dataclass(slots=True)
class Member:
    """Mutable record of one node in our view."""

    node: str
    addr: str
    meta: NodeMeta
    incarnation: int
    state: MemberState
    since: float  # when ``state`` was entered (our clock)
    load: LoadReport | None = None
    rtt: float | None = None  # seconds, EWMA of direct probe round trips
    suspicion: Suspicion | None = None
    # The last PushPullState built for this record (see push_pull_state).
    wire_state: PushPullState | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class MemberView:
    """An immutable snapshot of a member for the runtime, the control API and events."""

    id: str
    addr: str
    meta: NodeMeta
    load: NodeLoad | None
    state: str  # alive | suspect | dead | left
    incarnation: int
    rtt_ms: float | None
    since: float


def view_of(member: Member) -> MemberView:
    load = member.load
    rtt = member.rtt
    return MemberView(
        member.node,
        member.addr,
        member.meta,
        load.load if load is not None else None,
        STATE_NAMES[member.state],
        member.incarnation,
        rtt * 1000.0 if rtt is not None else None,
        member.since,
    )


def push_pull_state(m: Member) -> PushPullState:
    """A member as it travels in a PushPull.

    Reused while the record is unchanged: every PushPull (anti-entropy, reconnect,
    replies) carries the whole table, and building a frozen dataclass per member
    per exchange dominated a large cluster's healing.  The check compares the
    fields the rules mutate in place, so a stale copy is never sent."""
    cached = m.wire_state
    if (
        cached is not None
        and cached.incarnation == m.incarnation
        and cached.state == m.state
        and cached.meta is m.meta
        and cached.load is m.load
        and cached.addr == m.addr
    ):
        return cached
    cached = m.wire_state = PushPullState(m.node, m.addr, m.incarnation, m.state, m.meta, m.load)
    return cached


class MemberTable:
    """Known members (excluding ourselves) with O(1) add/remove/sample and state counts."""

    def __init__(self, self_member: Member) -> None:
        self.self_member = self_member
        self._by_id: dict[str, Member] = {}
        # ``get(node) -> Member | None``: the dict's own method, not a wrapper,
        # because every piggybacked broadcast looks its subject up (the single
        # most frequent call in a large cluster).  _by_id is only ever mutated
        # in place, so the bound method stays valid.
        self.get: Callable[[str], Member | None] = self._by_id.get
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._counts = dict.fromkeys(MemberState, 0)
        self.version = 0  # bumped on every add, remove and state change

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node: str) -> bool:
        return node in self._by_id

    def __iter__(self) -> Iterator[Member]:
        return iter(self._by_id.values())

    def ids(self) -> list[str]:
        """A copy of the member ids (for shuffling into a probe order)."""
        return list(self._ids)

    def count(self, state: MemberState) -> int:
        return self._counts[state]

    def add(self, member: Member) -> None:
        assert member.node not in self._by_id and member.node != self.self_member.node
        self._by_id[member.node] = member
        self._index[member.node] = len(self._ids)
        self._ids.append(member.node)
        self._counts[member.state] += 1
        self.version += 1

    def remove(self, node: str) -> None:
        member = self._by_id.pop(node)
        self._counts[member.state] -= 1
        self.version += 1
        pos = self._index.pop(node)
        last = self._ids.pop()
        if last != node:
            self._ids[pos] = last
            self._index[last] = pos

    def set_state(self, member: Member, state: MemberState, now: float) -> None:
        """Move ``member`` to ``state`` (no-op if unchanged), keeping counts."""
        if member.state == state:
            return
        assert self._by_id.get(member.node) is member
        self._counts[member.state] -= 1
        self._counts[state] += 1
        self.version += 1
        member.state = state
        member.since = now

    def sample(
        self, rng: random.Random, k: int, accept: Callable[[Member], bool], exclude: str = ""
    ) -> list[Member]:
        """Up to ``k`` distinct random members passing ``accept`` (memberlist's
        kRandomNodes: at most ``3 * n`` random draws, so it stays cheap when few pass)."""
        n = len(self._ids)
        chosen: list[Member] = []
        if n == 0 or k <= 0:
            return chosen
        seen: set[str] = set()
        for _ in range(3 * n):
            node = self._ids[rng.randrange(n)]
            if node in seen or node == exclude:
                continue
            seen.add(node)
            member = self._by_id[node]
            if accept(member):
                chosen.append(member)
                if len(chosen) >= k:
                    break
        return chosen
