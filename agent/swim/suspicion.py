"""One suspicion timer with Lifeguard's confirmations (memberlist's suspicion.go).

A suspicion starts at the ceiling ``hi`` and shrinks towards the floor ``lo`` as
independent members confirm it (each distinct accuser counts once, the first
accuser included in the set but not the count).  The owner stores the deadline
in its timer heap; :meth:`confirm` returns whether it moved.  Time is an input.
"""

from __future__ import annotations

from agent.swim.timing import suspicion_total


class Suspicion:
    """Timer state for one suspected member."""

    __slots__ = ("_accusers", "_refusers", "confirmations", "hi", "incarnation", "k", "lo", "started")

    def __init__(self, accuser: str, incarnation: int, k: int, lo: float, hi: float, now: float) -> None:
        self._accusers = {accuser}
        self._refusers: set[str] = set()
        self.confirmations = 0
        self.incarnation = incarnation
        self.k = k
        self.lo = lo
        self.hi = hi
        self.started = now

    @property
    def deadline(self) -> float:
        """When the member is declared dead unless refuted."""
        return self.started + suspicion_total(self.confirmations, self.k, self.lo, self.hi)

    def confirm(self, accuser: str) -> bool:
        """Count an independent accusation; True if it was new and shortened the
        timer (then it is worth re-broadcasting, as memberlist does)."""
        if self.confirmations >= self.k or accuser in self._accusers:
            return False
        self._accusers.add(accuser)
        self.confirmations += 1
        return True

    def refuse(self, accuser: str) -> bool:
        """Count a member whose connect to the suspect's port was refused; True if new."""
        if accuser in self._refusers:
            return False
        self._refusers.add(accuser)
        return True

    @property
    def refusals(self) -> int:
        """Distinct members that found the suspect's port refusing connections."""
        return len(self._refusers)
