"""Scheduling policy tuning: one frozen dataclass, every field documented.

The ``[sched]`` section of the agent's TOML maps onto these fields (see
``agent/config.py``).  ``validate()`` raises ``ConfigError(field, reason)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SchedConfig:
    """Thresholds, weights, margins, windows and rate limits of the placement policies."""

    min_capability_match: float = 0.7
    """A node is eligible for a task only if it has at least this fraction of the
    task's required capabilities (0..1, default 0.7)."""

    weight_capability: float = 0.4
    """Auction weight of the capability match (default 0.4)."""

    weight_cpu: float = 0.3
    """Auction weight of ``1 - cpu`` (smoothed CPU load, 0..1; default 0.3)."""

    weight_performance: float = 0.2
    """Auction weight of past performance on the host (success rate and speed; default 0.2)."""

    weight_resources: float = 0.1
    """Auction weight of resource availability (free slots and free memory; default 0.1)."""

    vnodes: int = 64
    """Virtual nodes per host on the consistent-hash ring (default 64)."""

    replication: int = 3
    """Length of a key's preference list: primary + successors (default 3)."""

    steal_cpu_below: float = 0.3
    """A thief must have smoothed CPU below this (0..1, default 0.3) and a free slot."""

    steal_margin: int = 2
    """A steal happens only if the victim's queue exceeds the thief's by at least
    this many tasks (default 2).  With a margin of 2 a moved task can never make
    the reverse move worthwhile, so tasks do not bounce."""

    hot_above: float = 0.8
    """Smoothed CPU above this makes a node a hot candidate (0..1, default 0.8)."""

    hot_exit_below: float = 0.7
    """A confirmed hot node stays hot until its CPU falls below this (hysteresis;
    default 0.7)."""

    cold_below: float = 0.3
    """Smoothed CPU below this makes a node cold: a rebalance target (default 0.3)."""

    hot_window: float = 10.0
    """Seconds a node must stay above ``hot_above`` before it counts as hot
    (default 10 s)."""

    min_move_interval: float = 30.0
    """Seconds a task must stay put after a load-driven move before the next one
    (default 30 s).  Failover and drain moves ignore it."""

    max_moves_per_task: int = 2
    """Load-driven moves (steal, hot-cold) one task may make in its lifetime (default 2)."""

    max_moves_per_round: int = 16
    """Upper bound on moves one planning round may return (default 16)."""

    def validate(self) -> SchedConfig:
        """Check ranges; raise ``ConfigError('sched.<field>', reason)``; return self."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"sched.{f.name}", "must be a finite number")
        fractions = (
            "min_capability_match",
            "steal_cpu_below",
            "hot_above",
            "hot_exit_below",
            "cold_below",
        )
        for name in fractions:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"sched.{name}", f"must be in [0, 1], got {value}")
        weights = ("weight_capability", "weight_cpu", "weight_performance", "weight_resources")
        for name in weights:
            if getattr(self, name) < 0.0:
                raise ConfigError(f"sched.{name}", "must not be negative")
        if sum(getattr(self, name) for name in weights) <= 0.0:
            raise ConfigError("sched.weight_capability", "the auction weights sum to zero")
        if self.hot_exit_below > self.hot_above:
            raise ConfigError("sched.hot_exit_below", "must not exceed hot_above")
        if self.cold_below >= self.hot_exit_below:
            raise ConfigError("sched.cold_below", "must be below hot_exit_below")
        if not 1 <= self.vnodes <= 4096:
            raise ConfigError("sched.vnodes", f"must be in [1, 4096], got {self.vnodes}")
        if not 1 <= self.replication <= 16:
            raise ConfigError("sched.replication", f"must be in [1, 16], got {self.replication}")
        if self.steal_margin < 2:
            raise ConfigError("sched.steal_margin", "must be at least 2 or tasks bounce")
        for name in ("hot_window", "min_move_interval"):
            if getattr(self, name) < 0.0:
                raise ConfigError(f"sched.{name}", "must not be negative")
        if self.max_moves_per_task < 0:
            raise ConfigError("sched.max_moves_per_task", "must not be negative")
        if self.max_moves_per_round < 1:
            raise ConfigError("sched.max_moves_per_round", "must be at least 1")
        return self
