"""Is another live process using our node id?  (A data dir copied to a second host.)

Theory of operation
-------------------
Two processes with one node id cannot both be members: peers keep the record
they had (an Alive for a live member at another address is ignored as an
address conflict), so only the *newcomer* hears news that puts its node id at
another address: a PushPull state, Alive gossip, or a PushPull reply from
"itself".  When that happens the core pings that address as ourselves (node
id as both source and target, over UDP and TCP, no piggyback so that none of
our gossip reaches the other process as news about itself) with a random
sequence at or above ``2**62``, a range ordinary probes (counting from 1)
never reach.  An Ack from our own node id means a live process answers there
as us: the newcomer learns the address (:attr:`IdentityChecks.conflict`) and
the runtime refuses to go on, while the incumbent keeps running (it only
answers the ping and notes who asked).

A check that reaches ourselves under another name for our address (a
loopback alias, an old advertise address) is recognised by its sequence and
dropped unanswered; no answer at all means nothing lives there any more (a
restart at a new address), and the ordinary refutation proceeds.  Checks are
sent at most once per probe interval per address and expire after two.
"""

from __future__ import annotations

import random

IDENTITY_SEQ = 1 << 62
"""Identity-check pings use sequences from here up (probes count from 1)."""
MAX_CHECKS = 64
"""Addresses (and checks in flight) remembered; the oldest is dropped."""


class IdentityChecks:
    """Sans-IO state of the identity checks of one node (see the module docstring)."""

    __slots__ = ("_checked", "_in_flight", "_interval", "_rng", "checks_sent", "claimed_at",
                 "conflict")

    def __init__(self, probe_interval: float, rng: random.Random) -> None:
        self._interval = probe_interval
        self._rng = rng
        self._in_flight: dict[int, tuple[str, float]] = {}  # seq -> (addr, expires)
        self._checked: dict[str, float] = {}  # addr -> when last checked
        self.conflict: str | None = None
        """Address of a live process that answered as our node id."""
        self.claimed_at: str | None = None
        """The last other address that checked us (we are the incumbent there)."""
        self.checks_sent = 0

    def start(self, now: float, addr: str) -> int | None:
        """The sequence to ping ``addr`` with, or None if checked too recently."""
        if self.conflict is not None:
            return None
        last = self._checked.get(addr)
        if last is not None and now - last < self._interval:
            return None
        self.expire(now)
        if len(self._checked) >= MAX_CHECKS:
            self._checked.pop(next(iter(self._checked)))
        self._checked[addr] = now
        if len(self._in_flight) >= MAX_CHECKS:
            self._in_flight.pop(next(iter(self._in_flight)))
        seq = IDENTITY_SEQ | self._rng.getrandbits(62)
        self._in_flight[seq] = (addr, now + 2.0 * self._interval)
        self.checks_sent += 1
        return seq

    def on_own_ping(self, seq: int, source_addr: str) -> bool:
        """A ping from our own node id: True if it is our check come back to us
        (drop it); otherwise another process is checking us, and we answer."""
        if seq in self._in_flight:  # kept: the UDP and the TCP copy both come back
            return True
        self.claimed_at = source_addr
        return False

    def on_ack(self, seq: int, from_us: bool) -> bool:
        """An Ack with an identity-check sequence; True if it convicts a duplicate
        (it came directly from a process with our node id)."""
        check = self._in_flight.pop(seq, None)
        if check is None or not from_us:
            return False
        if self.conflict is None:
            self.conflict = check[0]
        return True

    def expire(self, now: float) -> None:
        if self._in_flight:
            self._in_flight = {s: c for s, c in self._in_flight.items() if c[1] > now}
