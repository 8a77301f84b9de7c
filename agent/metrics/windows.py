"""Trailing windows, rates and percentiles (sans-IO: time is an argument).

Theory of operation
-------------------
A rate is computed from a cumulative counter sampled about once a second:
``CounterRate.add(now, value)`` keeps ``(now, value)`` pairs for the longest
window plus one sample, and ``rate(window)`` is::

    (value_last - value_base) / (t_last - t_base)

where ``base`` is the newest sample at least ``window`` seconds older than the
last one (the oldest one kept while the history is still shorter than the
window).  With samples every second this is the exact mean rate over the
window, not a lifetime average; a counter that went down (a restart) drops
the older samples and starts again.

Percentiles are nearest-rank (the smallest value with at least ``q`` of the
values at or below it), as ``agent.load.percentile`` and Prometheus' summary
quantiles read them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

MAX_RATE_SAMPLES = 4096
"""Samples one ``CounterRate`` keeps at most (a bound even if ``add`` is called
far more often than once a second)."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank ``q`` quantile (0..1) of ``values``; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def percentiles(values: Sequence[float], *qs: float) -> list[float | None]:
    """``percentile`` for each of ``qs``, sorting ``values`` once."""
    if not values:
        return [None] * len(qs)
    ordered = sorted(values)
    n = len(ordered)
    return [ordered[min(n, max(1, math.ceil(q * n))) - 1] for q in qs]


def count_within(times: Iterable[float], now: float, window: float) -> int:
    """How many of ``times`` fall in ``(now - window, now]``."""
    start = now - window
    return sum(1 for t in times if start < t <= now)


def pstdev(values: Sequence[float]) -> float:
    """Population standard deviation; 0.0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


class CounterRate:
    """The rate of one cumulative counter over trailing windows (module doc)."""

    def __init__(self, horizon: float) -> None:
        """``horizon``: the longest window ``rate`` will be asked for, seconds."""
        if horizon <= 0:
            raise ValueError("horizon must be positive")
        self.horizon = horizon
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_RATE_SAMPLES)

    def add(self, now: float, value: float) -> None:
        samples = self._samples
        if samples and (value < samples[-1][1] or now < samples[-1][0]):
            samples.clear()  # the counter restarted (or time went back): start again
        samples.append((now, value))
        # Keep exactly one sample at or beyond the horizon, as the longest window's base.
        while len(samples) > 2 and now - samples[1][0] >= self.horizon:
            samples.popleft()

    def rate(self, window: float) -> float | None:
        """Mean increase per second over the trailing ``window`` (None with < 2 samples)."""
        samples = self._samples
        if len(samples) < 2:
            return None
        t_last, v_last = samples[-1]
        base = samples[0]
        for sample in reversed(samples):
            if t_last - sample[0] >= window:
                base = sample
                break
        span = t_last - base[0]
        if span <= 0:
            return None
        return (v_last - base[1]) / span

    @property
    def last(self) -> float | None:
        return self._samples[-1][1] if self._samples else None

    def __len__(self) -> int:
        return len(self._samples)
