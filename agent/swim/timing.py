"""Timeout maths of SWIM + Lifeguard as pure functions (table-tested).

All durations are seconds (floats).  The formulas are hashicorp/memberlist's
(util.go, suspicion.go, awareness.go), which implement the Lifeguard paper
(Dadgar et al., 2018): a suspicion starts at a long timeout that shrinks as
independent members confirm it, and a node that misses its own deadlines
(local health) stretches its probe interval and timeout instead of accusing
healthy peers.
"""

from __future__ import annotations

import math


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """Floor of the suspicion timeout for a cluster of ``n`` members:
    ``suspicion_mult * max(1, log10(max(1, n))) * probe_interval``.

    memberlist rounds the node scale to milliseconds; so do we, which keeps the
    table values exact."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * math.floor(node_scale * 1000.0) / 1000.0 * probe_interval


def suspicion_bounds(
    suspicion_mult: int, max_timeout_mult: int, n: int, probe_interval: float
) -> tuple[float, float]:
    """``(lo, hi)``: the floor and ceiling (``hi = lo * max_timeout_mult``)."""
    lo = suspicion_timeout(suspicion_mult, n, probe_interval)
    return lo, lo * max_timeout_mult


def expected_confirmations(suspicion_mult: int, n: int) -> int:
    """Lifeguard's k: independent confirmations that bring a suspicion down to its
    floor: ``suspicion_mult - 2``, or 0 when the cluster is too small to supply them
    (``n - 2 < k``: the suspect and we cannot confirm)."""
    k = suspicion_mult - 2
    if n - 2 < k:
        return 0
    return max(0, k)


def suspicion_total(n_confirmations: int, k: int, lo: float, hi: float) -> float:
    """Whole timeout of a suspicion after ``n_confirmations`` of ``k``:
    ``hi - (hi - lo) * log(n + 1) / log(k + 1)``, at least ``lo``, rounded down to
    milliseconds.  With ``k < 1`` there is nothing to wait for: ``lo``."""
    if k < 1:
        return lo
    frac = math.log(n_confirmations + 1.0) / math.log(k + 1.0)
    raw = hi - frac * (hi - lo)
    timeout = math.floor(raw * 1000.0) / 1000.0
    return max(lo, timeout)


def remaining_suspicion_time(n_confirmations: int, k: int, elapsed: float, lo: float, hi: float) -> float:
    """Seconds left on a suspicion that has run ``elapsed`` seconds (may be <= 0:
    the timer has already expired)."""
    return suspicion_total(n_confirmations, k, lo, hi) - elapsed


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """Times each broadcast is sent: ``retransmit_mult * ceil(log10(n + 1))``."""
    node_scale = math.ceil(math.log10(n + 1.0))
    return retransmit_mult * int(node_scale)


def scaled_probe_interval(probe_interval: float, health_score: int) -> float:
    """Lifeguard: the probe interval stretched by the local health multiplier
    ``health_score + 1``."""
    return probe_interval * (health_score + 1)


def scaled_timeout(timeout: float, health_score: int) -> float:
    """Lifeguard: any local timeout stretched by ``health_score + 1``."""
    return timeout * (health_score + 1)


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's ``pushPullScale``: above 32 members the anti-entropy interval
    grows with ``ceil(log2(n) - log2(32)) + 1`` so that the total TCP state-sync
    load stays bounded as the cluster grows."""
    threshold = 32
    if n <= threshold:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(threshold)) + 1.0
    return interval * multiplier


def ewma(previous: float | None, sample: float, alpha: float) -> float:
    """Exponentially weighted moving average; the first sample is taken as is."""
    if previous is None:
        return sample
    return previous + alpha * (sample - previous)


def epidemic_rounds(n: int, fanout: int, fraction: float, loss: float = 0.0) -> int:
    """Rounds the mean-field push-gossip model needs to inform ``fraction`` of ``n``
    nodes when every informed node sends to ``fanout`` random peers per round and
    each message is lost with probability ``loss``.

    Model (Demers et al. 1987; the recurrence behind Serf's convergence
    calculator): with ``I_t`` informed nodes, each uninformed node stays
    uninformed with probability ``(1 - 1/n) ** (fanout * (1 - loss) * I_t)``, so
    ``I_{t+1} = n - (n - I_t) * (1 - 1/n) ** (fanout * (1 - loss) * I_t)``, starting
    from ``I_0 = 1``.  Bounded at 10,000 rounds."""
    assert n >= 1 and fanout >= 1 and 0.0 < fraction <= 1.0 and 0.0 <= loss < 1.0
    informed = 1.0
    target = fraction * n
    stay = 1.0 - 1.0 / n if n > 1 else 0.0
    rounds = 0
    while informed < target - 1e-9 and rounds < 10_000:
        informed = n - (n - informed) * stay ** (fanout * (1.0 - loss) * informed)
        rounds += 1
    return rounds
