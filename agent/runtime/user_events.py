"""User events: small application messages to every node or to one, after Serf's.

Theory of operation (sans-IO: time, randomness and the member list are inputs;
what to send comes back as ``(node id, message)`` pairs for the driver,
``events_driver.py``, to put on the wire):

* ``publish`` gives a new event a random id.  An event for everyone is
  delivered here at once and sent to ``fanout`` random peers; one for a
  single node goes straight to it.  The origin remembers which nodes it
  expects (the alive members at publish time) in a bounded outbox.
* ``receive``: the first copy of an id is delivered (appended to the bounded
  inbox) and, for an event for everyone, forwarded to ``fanout`` random
  peers other than the origin and the node it came from -- an epidemic, as
  memberlist's gossip, so the origin's links alone do not decide who hears
  it.  Every copy, first or duplicate, is acknowledged to the origin:
  duplicates are never delivered twice (the last ``seen`` ids are kept), but
  their acks repair lost ones.
* ``ack`` marks a node delivered in the outbox; ``tick`` resends an event
  straight to each expected node that has not acknowledged it yet, every
  ``retransmit_interval`` up to ``retransmits`` times: delivery does not rest
  on gossip luck, and the counts say who has it.

Everything is bounded: payload and name sizes, the inbox (oldest dropped and
counted), the seen-id set and the outbox.  Nothing is persisted: an event is
best effort over the members alive when it was sent, like Serf's.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from agent.runtime.event_messages import EventAck, UserEvent


@dataclass(frozen=True, slots=True)
class UserEventsConfig:
    """Bounds and pacing of user events (defaults suit a LAN of up to a few hundred nodes)."""

    max_payload: int = 16 * 1024
    """Bytes of one event's payload (16 KiB): events are for coordination, not data --
    the replicated KV holds data."""
    max_name: int = 128
    """Characters of an event name."""
    inbox: int = 1024
    """Received events kept per node for ``events.list`` (oldest dropped first, counted)."""
    seen: int = 8192
    """Event ids remembered for deduplication: far more than arrive while copies of
    one event are still travelling (a few retransmit intervals)."""
    outbox: int = 256
    """Events this node published whose delivery it still tracks."""
    fanout: int = 3
    """Peers each node forwards an event for everyone to (memberlist's gossip fanout)."""
    retransmit_interval: float = 0.5
    """Seconds before the origin resends to a node that has not acknowledged."""
    retransmits: int = 6
    """Resends per node at most (3 s at the default interval) before it counts as missed."""

    def validate(self) -> None:
        if min(self.max_payload, self.max_name, self.inbox, self.seen, self.outbox, self.fanout) < 1:
            raise ValueError("user event bounds must be >= 1")
        if self.retransmit_interval <= 0 or self.retransmits < 0:
            raise ValueError("retransmit_interval must be > 0 and retransmits >= 0")


Send = list[tuple[str, Any]]
"""Messages to send: (node id, message)."""


@dataclass(slots=True)
class Outgoing:
    """An event this node published and the delivery it tracks."""

    event: UserEvent
    expected: set[str]
    delivered: set[str] = field(default_factory=set)
    tries: int = 0
    next_at: float = 0.0

    @property
    def pending(self) -> set[str]:
        return self.expected - self.delivered


class UserEvents:
    """One node's user events: inbox, dedup, outbox (module doc)."""

    def __init__(
        self, node_id: str, node_name: str, config: UserEventsConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.config = config or UserEventsConfig()
        self.config.validate()
        self._rng = rng or random.Random()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._inbox: deque[dict[str, Any]] = deque()
        self._next_seq = 1
        self.dropped = 0
        """Received events pushed out of the full inbox."""
        self._outbox: OrderedDict[str, Outgoing] = OrderedDict()
        self.duplicates = 0

    # ------------------------------------------------------------ publishing

    def check(self, name: str, payload: bytes) -> None:
        """``ValueError`` if the event breaks a bound."""
        if not 0 < len(name) <= self.config.max_name:
            raise ValueError(f"event name must be 1-{self.config.max_name} characters")
        if len(payload) > self.config.max_payload:
            raise ValueError(f"event payload exceeds {self.config.max_payload} bytes")

    def publish(
        self, now: float, wall: float, event_id: str, name: str, payload: bytes, *,
        to: str = "", sender: str = "", peers: list[str],
    ) -> tuple[Outgoing, Send]:
        """A new event for ``to`` (a node id, "" for everyone); ``peers``: the alive
        members' ids.  Returns what the outbox tracks and what to send now."""
        self.check(name, payload)
        event = UserEvent(
            id=event_id, origin=self.node_id, origin_name=self.node_name,
            sender=sender or self.node_name, name=name, payload=payload, to=to, at=wall,
        )
        others = sorted(set(peers) - {self.node_id})
        self._remember(event.id)
        if to in ("", self.node_id):
            self._deliver(event, wall)
        expected = {self.node_id} if to in ("", self.node_id) else set()
        expected |= set(others) if to == "" else ({to} - {self.node_id})
        out = Outgoing(event, expected, delivered=expected & {self.node_id})
        out.next_at = now + self.config.retransmit_interval
        self._outbox[event.id] = out
        while len(self._outbox) > self.config.outbox:
            self._outbox.popitem(last=False)
        if to == "":
            sends = [(p, event) for p in self._pick(others)]
        else:
            sends = [(to, event)] if to != self.node_id else []
        return out, sends

    def outgoing(self, event_id: str) -> Outgoing | None:
        return self._outbox.get(event_id)

    # ------------------------------------------------------------ receiving

    def receive(self, wall: float, event: UserEvent, via: str, peers: list[str]) -> Send:
        """A copy of ``event`` from node ``via``: deliver the first, always ack."""
        if len(event.payload) > self.config.max_payload or len(event.name) > self.config.max_name:
            return []  # a peer breaking the bounds: dropped, not acked
        if event.to not in ("", self.node_id):
            return []  # not ours (a misrouted copy)
        sends: Send = [(event.origin, EventAck(event.id, self.node_id))]
        if event.origin == self.node_id:
            return []  # our own event came back through gossip
        if event.id in self._seen:
            self.duplicates += 1
            return sends
        self._remember(event.id)
        self._deliver(event, wall)
        if event.to == "":
            others = sorted(set(peers) - {self.node_id, event.origin, via})
            sends += [(p, event) for p in self._pick(others)]
        return sends

    def ack(self, msg: EventAck) -> Outgoing | None:
        """A node acknowledged one of our events; the outgoing record if it is tracked."""
        out = self._outbox.get(msg.id)
        if out is not None and msg.node in out.expected:
            out.delivered.add(msg.node)
        return out

    def tick(self, now: float) -> Send:
        """Resend each tracked event to the expected nodes that have not acked it."""
        sends: Send = []
        for out in self._outbox.values():
            pending = out.pending
            if not pending or now < out.next_at or out.tries >= self.config.retransmits:
                continue
            out.tries += 1
            out.next_at = now + self.config.retransmit_interval
            sends += [(node, out.event) for node in sorted(pending)]
        return sends

    # ------------------------------------------------------------ reading

    def inbox(self, since: int = 0, name: str = "", limit: int = 1000) -> list[dict[str, Any]]:
        """Received events with ``seq > since`` (oldest first), optionally of one name."""
        rows = [r for r in self._inbox if r["seq"] > since and (not name or r["name"] == name)]
        return rows[: max(0, limit)]

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    # ------------------------------------------------------------ internals

    def _pick(self, candidates: list[str]) -> list[str]:
        if len(candidates) <= self.config.fanout:
            return candidates
        return self._rng.sample(candidates, self.config.fanout)

    def _remember(self, event_id: str) -> None:
        self._seen[event_id] = None
        while len(self._seen) > self.config.seen:
            self._seen.popitem(last=False)

    def _deliver(self, event: UserEvent, wall: float) -> None:
        self._inbox.append({
            "seq": self._next_seq, "id": event.id, "name": event.name, "from": event.sender,
            "origin": event.origin_name, "to": event.to, "payload": event.payload,
            "at": event.at, "received_at": wall,
        })
        self._next_seq += 1
        while len(self._inbox) > self.config.inbox:
            self._inbox.popleft()
            self.dropped += 1
