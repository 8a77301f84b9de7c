"""The metrics of ``agent.metrics.catalog``, computed (sans-IO: no clock, no I/O).

Theory of operation
-------------------
``MetricsEngine`` holds the state the figures need between samples -- the
message counter's rate windows, the hotspot and partition-recovery trackers
(``trackers.py``) -- and computes every figure from an ``Inputs`` snapshot:
the member list as SWIM gossips it, what Raft committed (the leader-change
count, proposals, decisions, migrations) and this node's own counters.
``tick`` runs once a second (the metrics service's loop): it feeds the
windows and trackers and returns the values the history keeps; ``figures``
is the report's metric part, computed at call time from the same inputs.
Every node runs the same code on the same gossiped and committed state, so
cluster-scope figures agree across nodes (``catalog`` module doc).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.metrics import catalog
from agent.metrics.catalog import MIGRATION_WINDOW_S, RATE_WINDOWS
from agent.metrics.trackers import HotspotTracker, RecoveryTracker
from agent.metrics.windows import CounterRate, count_within, percentiles, pstdev
from agent.sched.config import SchedConfig
from agent.swim.members import MemberView


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything one computation of the figures reads (one consistent look)."""

    members: Sequence[MemberView]
    """SWIM's member list, this node included."""
    messages_in: int
    """Peer messages received so far (datagrams + stream messages)."""
    leader_changes: int
    engine: str = "raft"
    voters: int = 0
    engine_byzantine_f: int | None = None
    """The engine's own Byzantine tolerance, when it reports one (PBFT)."""
    cpu: float | None = None
    """The CPU figure this node gossips (0..1)."""
    decision_latencies: Sequence[float] = ()
    """Seconds, submit to first committed assignment (committed)."""
    commit_latencies: Sequence[float] = ()
    """Seconds, proposal to apply of this node's writes."""
    participation: Mapping[int, float] = field(default_factory=dict)
    """Proposal id -> votes cast / eligible (committed)."""
    migration_times: Sequence[float] = ()
    """Leader wall times of committed migrations."""
    sched: SchedConfig = field(default_factory=SchedConfig)
    """The scheduling thresholds in force (committed ``[sched]`` over the local defaults)."""


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _p50_p99_ms(values: Sequence[float]) -> dict[str, float | None]:
    p50, p99 = percentiles(values, 0.5, 0.99)
    return {"p50": _ms(p50), "p99": _ms(p99)}


def member_states(members: Sequence[MemberView]) -> dict[str, int]:
    counts = dict.fromkeys(("alive", "suspect", "dead", "left"), 0)
    for m in members:
        counts[m.state] = counts.get(m.state, 0) + 1
    return counts


class MetricsEngine:
    """Rate windows and trackers, and the figures over them (module doc)."""

    def __init__(self) -> None:
        self.messages = CounterRate(max(seconds for _, seconds in RATE_WINDOWS))
        self.hotspots = HotspotTracker()
        self.recovery = RecoveryTracker()
        self.ticks = 0

    # ------------------------------------------------------------ inputs over time

    def on_member(self, at: float, member: str, state: str) -> None:
        """A member changed state (SWIM event; ``at`` monotonic seconds)."""
        self.recovery.observe(at, member, state)

    def tick(self, mono: float, wall: float, inputs: Inputs) -> dict[str, float | None]:
        """One sample: feed the windows and trackers; the values the history keeps."""
        self.ticks += 1
        self.messages.add(mono, float(inputs.messages_in))
        loads = [
            (m.id, m.state == "alive", m.load.cpu if m.load is not None else 0.0)
            for m in inputs.members if m.state != "left"
        ]
        self.hotspots.update(wall, loads, inputs.sched)
        self.recovery.tick(mono, (m.id for m in inputs.members))
        fig = self.figures(wall, inputs)
        return {
            "cpu": inputs.cpu,
            "members_alive": float(fig["members"]["alive"]),
            "connectivity_pct": fig["connectivity_pct"],
            "throughput": fig["throughput_msgs_per_s"]["10s"],
            "rtt_p50_ms": fig["latency_ms"]["p50"],
            "commit_p99_ms": fig["commit_latency_ms"]["p99"],
            "decision_p99_ms": fig["decision_latency_ms"]["p99"],
            "leader_changes": float(inputs.leader_changes),
            "load_stddev": fig["load_variance_stddev"],
            "utilisation": fig["utilisation"],
            "migrations_per_minute": float(fig["migrations_per_minute"]),
            "hotspots": float(len(fig["hotspots"])),
        }

    # ------------------------------------------------------------ figures

    def rates(self) -> dict[str, float | None]:
        """Messages received per second over each window (catalog ``throughput``)."""
        out: dict[str, float | None] = {}
        for label, seconds in RATE_WINDOWS:
            rate = self.messages.rate(seconds)
            out[label] = None if rate is None else round(rate, 2)
        return out

    def hot_names(self, members: Sequence[MemberView]) -> list[str]:
        names = {m.id: m.meta.name for m in members}
        return sorted(names.get(node, node) for node in self.hotspots.hot())

    def figures(self, wall: float, inputs: Inputs) -> dict[str, Any]:
        """The report's metric part (catalog keys)."""
        members = inputs.members
        known = [m for m in members if m.state != "left"]
        alive = [m for m in known if m.state == "alive"]
        rtts = [m.rtt_ms for m in known if m.rtt_ms is not None]
        cpus = [m.load.cpu for m in alive if m.load is not None]
        used = sum(m.load.running for m in alive if m.load is not None)
        slots = sum(max(0, m.meta.slots) for m in alive)
        participation = {str(pid): round(share, 4) for pid, share in sorted(inputs.participation.items())}
        recovery = self.recovery.last
        return {
            "connectivity_pct": round(100.0 * len(alive) / max(1, len(known)), 1),
            "members": member_states(members),
            "latency_ms": {
                "per_peer": {m.meta.name: round(m.rtt_ms, 3) for m in known if m.rtt_ms is not None},
                **dict(zip(("p50", "p99"), percentiles(rtts, 0.5, 0.99), strict=True)),
            },
            "throughput_msgs_per_s": self.rates(),
            "partition_recovery_s": recovery.seconds if recovery is not None else None,
            "partition_recovery": None if recovery is None else {
                "seconds": recovery.seconds,
                "split_to_heal_s": round(recovery.healed_at - recovery.split_at, 3),
                "lost": recovery.lost,
                "recoveries": self.recovery.recoveries,
            },
            "decision_latency_ms": _p50_p99_ms(inputs.decision_latencies),
            "commit_latency_ms": _p50_p99_ms(inputs.commit_latencies),
            "vote_participation": (
                round(sum(participation.values()) / len(participation), 4) if participation else None
            ),
            "vote_participation_by_proposal": participation,
            "byzantine_tolerance_f": catalog.byzantine_f(
                inputs.engine, inputs.voters, inputs.engine_byzantine_f
            ),
            "crash_tolerance_f": catalog.crash_f(inputs.voters),
            "leader_changes": inputs.leader_changes,
            "load_variance_stddev": round(pstdev(cpus), 4),
            "migrations_per_minute": count_within(inputs.migration_times, wall, MIGRATION_WINDOW_S),
            "hotspots": self.hot_names(members),
            "utilisation": round(used / slots, 4) if slots else 0.0,
        }
