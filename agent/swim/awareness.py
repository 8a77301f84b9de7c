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
* ``load`` (when load-aware health is on): the sum of a *lag* part, +1 for
  each one-second sample in which the event loop lags more than half a probe
  timeout and -1 for each that does not, and a *CPU* part, 1 while the host's
  CPU is saturated, else 0.  Lag is what makes a node miss its own deadlines,
  so it may drive the score to the top; a saturated CPU alone (a host whose
  tasks fill every core, the normal state of a busy orchestrator) only
  doubles the probe interval, or crash detection everywhere would slow 8x
  while the loop still meets its deadlines (measured on namespace hosts:
  median crash-to-everyone 19 s instead of 6 s).  No anchor does this: it lets
  a busy host slow down before it falsely accuses anyone.
"""

from __future__ import annotations


class Awareness:
    """The local health score and its two components."""

    def __init__(self, max_multiplier: int) -> None:
        assert max_multiplier >= 1
        self._max = max_multiplier
        self.protocol = 0
        self._lag = 0
        self._cpu = 0

    def _clamp(self, value: int) -> int:
        return max(0, min(self._max - 1, value))

    def apply_delta(self, delta: int) -> None:
        """Protocol evidence: positive is bad news about ourselves."""
        self.protocol = self._clamp(self.protocol + delta)

    def note_load(self, lagging: bool, saturated: bool) -> None:
        """One load sample: a lagging loop raises the lag part (a prompt one decays
        it); a saturated CPU holds the CPU part at 1."""
        self._lag = self._clamp(self._lag + (1 if lagging else -1))
        self._cpu = 1 if saturated else 0

    def clear_load(self) -> None:
        self._lag = self._cpu = 0

    @property
    def load(self) -> int:
        return self._clamp(self._lag + self._cpu)

    @property
    def score(self) -> int:
        """The health score: 0 is healthy; multipliers are ``score + 1``."""
        return self._clamp(self.protocol + self.load)
