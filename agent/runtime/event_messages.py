"""Peer messages of user events and topology moves (issue 16): numbers 130-139.

User events (``agent/runtime/user_events.py``, after Serf's user events): a
``UserEvent`` travels by gossip to every node (``to`` empty) or straight to
one; every receiver answers the origin with an ``EventAck`` -- again for a
duplicate, so a lost ack is repaired by the origin's retransmission -- and
the origin counts deliveries from the acks.

Topology (``agent/runtime/topology.py``): ``RttRequest``/``RttReport`` collect
each voter's round-trip times to the others (from its SWIM probes), and
``LeaderMove``/``LeaderMoveResult`` ask the Raft leader, from any node, to hand
leadership to a named voter.

Numbers 130-139 (docs/internals.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UserEvent:
    """One user event.  ``id`` is random per event (deduplication survives restarts);
    ``to`` is the one recipient's node id, or "" for every node."""

    id: str
    origin: str
    """Node id of the node that published it (acks go there)."""
    origin_name: str
    sender: str
    """Who the publisher says it speaks for (``daa_communication``'s ``from``)."""
    name: str
    payload: bytes
    to: str
    at: float
    """The origin's wall clock when it published (unix seconds)."""


@dataclass(frozen=True, slots=True)
class EventAck:
    """Receiver → origin: ``node`` holds event ``id`` (sent for every copy received)."""

    id: str
    node: str


@dataclass(frozen=True, slots=True)
class RttRequest:
    """Ask a node for its round-trip times to its peers; answer to node ``origin``."""

    request_id: int
    origin: str


@dataclass(frozen=True, slots=True)
class RttReport:
    """Answer to RttRequest: node id → RTT in milliseconds (SWIM's probe acks)."""

    request_id: int
    node: str
    rtts: dict[str, float]


@dataclass(frozen=True, slots=True)
class LeaderMove:
    """Ask the leader to transfer leadership to voter ``to`` (a node id); answer to ``origin``."""

    request_id: int
    origin: str
    to: str


@dataclass(frozen=True, slots=True)
class LeaderMoveResult:
    """Answer to LeaderMove: ``ok`` once the transfer started, else why not."""

    request_id: int
    ok: bool
    message: str


WIRE_TYPES: dict[int, type] = {
    130: UserEvent,
    131: EventAck,
    132: RttRequest,
    133: RttReport,
    134: LeaderMove,
    135: LeaderMoveResult,
}
