"""SWIM peer messages: frozen dataclasses the generic codec in ``agent.wire`` carries.

Field types are limited to those of docs/internals.md section 1.  Numbers 10-39
belong to SWIM and are append-only (``WIRE_TYPES``).  Fields are only ever
appended, with defaults.

UDP messages (Ping, IndirectPingReq, Ack, Nack, Gossip, PushSum) are sized to
fit one datagram; Ping, Ack, IndirectPingReq, Nack and Gossip carry a
:class:`Piggyback` of queued membership and load broadcasts (memberlist's
compound messages, typed).  PushPull is always sent reliably (sealed TCP): it
is the only way a node is admitted into a membership.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MemberState(enum.IntEnum):
    """A member's state in someone's view.  Order matters for precedence at an equal
    incarnation: alive < suspect < dead; left is a dead that the node announced."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """What a node says about itself on gossip."""

    name: str
    addr: str  # "host:port": UDP and TCP
    caps: tuple[str, ...]
    slots: int
    version: str
    role: str  # voter | learner | leader | none


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """One psutil sample of a host's load."""

    cpu: float  # 0..1 over all CPUs
    load1: float
    mem_free: int  # bytes
    mem_percent: float  # 0..100
    queued: int
    running: int


@dataclass(frozen=True, slots=True)
class LoadReport:
    """A node's load, ordered by ``(incarnation, seq)`` so a newer one wins."""

    node: str
    incarnation: int
    seq: int
    load: NodeLoad


@dataclass(frozen=True, slots=True)
class Alive:
    """``node`` is alive at ``incarnation`` with ``meta`` (a refutation when bumped)."""

    incarnation: int
    node: str
    addr: str
    meta: NodeMeta


@dataclass(frozen=True, slots=True)
class Suspect:
    """``from_node`` suspects ``node`` at ``incarnation``; ``refused``: and its own
    connect to ``node``'s port was refused (the kernel's word that nothing listens
    there; see rules.py, "Refused")."""

    incarnation: int
    node: str
    from_node: str
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Dead:
    """``from_node`` declares ``node`` dead; ``from_node == node`` means it left."""

    incarnation: int
    node: str
    from_node: str


@dataclass(frozen=True, slots=True)
class Piggyback:
    """Broadcasts riding on a UDP message, at most one membership item per node."""

    alive: tuple[Alive, ...] = ()
    suspect: tuple[Suspect, ...] = ()
    dead: tuple[Dead, ...] = ()
    loads: tuple[LoadReport, ...] = ()


EMPTY_PIGGYBACK = Piggyback()


@dataclass(frozen=True, slots=True)
class Ping:
    """Probe ``target`` (node id, "" if unknown); answer with Ack(seq) to ``source_addr``.
    ``via_stream``: sent over TCP (fallback probe), so answer over TCP too."""

    seq: int
    target: str
    source: str
    source_addr: str
    via_stream: bool = False
    load: LoadReport | None = None
    gossip: Piggyback = EMPTY_PIGGYBACK


@dataclass(frozen=True, slots=True)
class IndirectPingReq:
    """Ask the receiver to ping ``target`` at ``target_addr`` for ``source`` and relay
    the Ack (and a Nack if it gets none and ``want_nack``)."""

    seq: int
    target: str
    target_addr: str
    source: str
    source_addr: str
    want_nack: bool = True
    gossip: Piggyback = EMPTY_PIGGYBACK


@dataclass(frozen=True, slots=True)
class Ack:
    """``source`` (the probed node) answers probe ``seq``; ``relay`` is the id of the
    member that forwarded it ("" if direct)."""

    seq: int
    source: str
    relay: str = ""
    load: LoadReport | None = None
    gossip: Piggyback = EMPTY_PIGGYBACK


@dataclass(frozen=True, slots=True)
class Nack:
    """An indirect prober (``source``) could not reach the target of probe ``seq``:
    it is alive itself, which Lifeguard uses as evidence about our own health."""

    seq: int
    source: str
    gossip: Piggyback = EMPTY_PIGGYBACK


@dataclass(frozen=True, slots=True)
class Gossip:
    """A gossip-round datagram: only broadcasts."""

    source: str
    gossip: Piggyback


@dataclass(frozen=True, slots=True)
class PushPullState:
    """One member as the sender sees it (anti-entropy full state)."""

    node: str
    addr: str
    incarnation: int
    state: MemberState
    meta: NodeMeta
    load: LoadReport | None = None


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full membership exchange over TCP.  A non-reply is answered with the
    receiver's own PushPull(reply=True); both sides merge.  ``join``: the sender is
    (re)joining and wants to be admitted."""

    source: str
    source_addr: str
    join: bool
    reply: bool
    states: tuple[PushPullState, ...]


@dataclass(frozen=True, slots=True)
class PushSum:
    """Kempe et al. push-sum share for ``epoch``: estimate of the average CPU is
    ``total / weight``; a share from an older epoch is discarded."""

    source: str
    epoch: int
    total: float
    weight: float


WIRE_TYPES: dict[int, type] = {
    10: Ping,
    11: IndirectPingReq,
    12: Ack,
    13: Nack,
    14: Alive,
    15: Suspect,
    16: Dead,
    17: Gossip,
    18: PushPull,
    19: PushSum,
    20: LoadReport,
}
"""Message number -> class.  Append-only: a number is never reused."""

UDP_MESSAGES: tuple[type, ...] = (Ping, IndirectPingReq, Ack, Nack, Gossip, PushSum)
"""Classes that may travel as a single datagram (``reliable=False``)."""
