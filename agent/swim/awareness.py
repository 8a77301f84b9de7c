"""Lifeguard local health ("awareness"), extended with the host's own load.

Theory of operation
-------------------
A node that misses its own deadlines (a slow CPU, a stalled event loop, a lossy
NIC) sees other nodes' Acks arrive late and would accuse healthy peers.
Lifeguard makes it distrust itself instead: a health score in
``[0, max_multiplier - 1]`` rises on evidence of local trouble and falls on
success, and the probe interval and timeouts are multiplied by ``score + 1``.

Two components, each clamped to the range and summed (then clamped again):

* ``protocol``: memberlist's evidence: +1 per missing Nack from an indirect
  prober after a failed probe (or +1 per failed probe when there is nobody to
  ask), +1 when we must refute a suspicion about ourselves, -1 per successful
  probe;
* ``load`` (when load-aware health is on): +1 for each one-second sample in which
  the host's CPU is saturated or its event loop lags more than half a probe
  timeout, -1 for each sample that is not.  No anchor does this: it lets a busy
  host slow down before it falsely accuses anyone.
"""

from __future__ import annotations


class Awareness:
    """The local health score and its two components."""

    def __init__(self, max_multiplier: int) -> None:
        assert max_multiplier >= 1
        self._max = max_multiplier
        self.protocol = 0
        self.load = 0

    def _clamp(self, value: int) -> int:
        return max(0, min(self._max - 1, value))

    def apply_delta(self, delta: int) -> None:
        """Protocol evidence: positive is bad news about ourselves."""
        self.protocol = self._clamp(self.protocol + delta)

    def note_load(self, busy: bool) -> None:
        """One load sample: busy raises the load component, idle decays it."""
        self.load = self._clamp(self.load + (1 if busy else -1))

    def clear_load(self) -> None:
        self.load = 0

    @property
    def score(self) -> int:
        """The health score: 0 is healthy; multipliers are ``score + 1``."""
        return self._clamp(self.protocol + self.load)
