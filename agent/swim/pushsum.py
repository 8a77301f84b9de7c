"""Push-sum gossip aggregation of the cluster's average CPU (Kempe, Dobra, Gehrke 2003).

Theory of operation
-------------------
Every node holds a mass ``(total, weight)``, starting from ``(x_i, 1)`` where
``x_i`` is its own CPU.  Each round it keeps half and sends the other half to
one random member, which adds it to its own.  Mass is conserved, so every
node's ``total / weight`` converges to ``sum(x) / n``, the average, in
O(log n + log 1/eps) rounds.  Lost datagrams lose mass from both terms alike,
which perturbs the estimate only a little.

Push-sum averages *initial* values; CPU changes.  So time is cut into epochs:
a node that has spent ``epoch_length`` seconds in epoch ``e`` publishes its
estimate and restarts from ``(x_i, 1)`` in ``e + 1``; a node that receives a
share of a newer epoch jumps to it (restarting likewise) before adding it,
and shares from older epochs are dropped.  The epoch number spreads like a
rumour, so all nodes restart within a few rounds of the first.  The published
value is the last finished epoch's estimate.  A node that has no load sample
yet joins with weight 0: it relays mass without biasing the average.
"""

from __future__ import annotations


class PushSumAggregator:
    """Sans-IO push-sum state; the owner sends the shares :meth:`share` returns."""

    def __init__(self, epoch_length: float, now: float) -> None:
        assert epoch_length > 0
        self._epoch_length = epoch_length
        self.epoch = 0
        self._epoch_started = now
        self._value: float | None = None
        self.total = 0.0
        self.weight = 0.0
        self.published: float | None = None

    def set_value(self, value: float) -> None:
        """Our own current reading; it enters the aggregate at the next epoch (or now,
        if we have not contributed yet in this one)."""
        first = self._value is None
        self._value = value
        if first:
            self.total += value
            self.weight += 1.0

    @property
    def next_deadline(self) -> float:
        return self._epoch_started + self._epoch_length

    @property
    def estimate(self) -> float | None:
        """The current epoch's running estimate (None without mass)."""
        if self.weight <= 1e-12:
            return None
        return self.total / self.weight

    def advance(self, now: float) -> None:
        """Start a new epoch if ours has lasted ``epoch_length``."""
        if now >= self.next_deadline:
            self._enter(self.epoch + 1, now)

    def _enter(self, epoch: int, now: float) -> None:
        current = self.estimate
        if current is not None:
            self.published = current
        self.epoch = epoch
        self._epoch_started = now
        if self._value is None:
            self.total, self.weight = 0.0, 0.0
        else:
            self.total, self.weight = self._value, 1.0

    def share(self) -> tuple[int, float, float] | None:
        """Halve our mass and return ``(epoch, total, weight)`` to send, or None when
        we have nothing worth sending."""
        if self.weight <= 1e-9:
            return None
        self.total /= 2.0
        self.weight /= 2.0
        return self.epoch, self.total, self.weight

    def receive(self, now: float, epoch: int, total: float, weight: float) -> None:
        """Add a peer's share (dropping stale epochs, jumping to newer ones)."""
        if epoch < self.epoch or not weight >= 0.0 or not total >= 0.0:
            return
        if epoch > self.epoch:
            self._enter(epoch, now)
        self.total += total
        self.weight += weight

    def restore(self, total: float, weight: float) -> None:
        """Take back a share that could not be sent (no member to send it to)."""
        self.total += total
        self.weight += weight
