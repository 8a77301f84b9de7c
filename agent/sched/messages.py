"""Auction messages between the leader and candidate hosts (wire types 70-89).

Theory of operation: for an auction-placed task the leader sends a
``BidRequest`` to every eligible host and waits a short, bounded time.  Each
host answers with a ``Bid`` carrying its *fresh* local figures (CPU, free
memory, free slots, history); the leader computes the score itself from those
figures, so a host cannot inflate its own score.  Hosts whose bid did not
arrive in time are scored from gossiped state instead (``run_auction``).
"""

from __future__ import annotations

from dataclasses import dataclass

BID_REQUEST = 70
BID = 71


@dataclass(frozen=True, slots=True)
class BidRequest:
    """Leader → candidate: please bid for ``task``."""

    request_id: int
    task: str
    """The task bid for, or "" for a round: one bid per host covers every task placed in
    this scheduling round (the leader then counts its own decisions on top)."""
    caps: tuple[str, ...]
    epoch: int
    """The task's epoch at the time of the request; a bid for another epoch is ignored."""


@dataclass(frozen=True, slots=True)
class Bid:
    """Candidate → leader: my current figures for ``task``."""

    request_id: int
    task: str
    node: str
    epoch: int
    cpu: float
    """Smoothed CPU load now, 0..1."""
    mem_free: float
    """Free memory fraction now, 0..1."""
    slots: int
    running: int
    queued: int
    success_rate: float
    mean_duration: float | None


WIRE_TYPES: dict[int, type] = {BID_REQUEST: BidRequest, BID: Bid}
"""Message type number → class, for ``agent/wire.py`` to register (range 70-89)."""
