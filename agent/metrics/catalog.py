"""Every metric ``meshtui report`` and ``/metrics`` show, defined once.

Each row says what the metric is called in ``report`` (its key), its unit, the
formula, its scope and where its inputs come from:

* scope ``cluster``: a figure about the whole mesh, computed on *every* node
  from state every node has -- what SWIM gossips (members, their load and
  slots) or what Raft committed (terms, proposals, tasks, migrations) -- so two
  nodes that have heard the same gossip and applied the same log show the same
  figure (gossip arrives at slightly different times, so gossiped figures may
  differ for a second or two);
* scope ``node``: this node's own view or work (its RTTs to its peers, the
  messages it received, the commits it proposed).

``prom`` names the Prometheus family (``agent.metrics.prom``: ``meshtui_``
prefix, base units, ``_total`` for counters, labels rather than names); a row
without one is not exported (a list, or a figure Prometheus derives better
itself from a counter, as rates are).

The formulas are computed in ``agent.metrics.engine``; the windows and
percentiles in ``agent.metrics.windows``.  README's "Metrics" section is
written from this table (a unit test keeps the two in step).

Fault tolerance: ``crash_tolerance_f`` is ``(voters - 1) // 2`` for Raft (a
majority must survive).  ``byzantine_tolerance_f`` is computed, not a
constant: an engine that reports its own figure (PBFT: ``(n - 1) // 3`` for
``n`` replicas) is shown as it reports it; Raft tolerates no Byzantine replica
at all -- one lying voter can elect itself and rewrite the log -- so for Raft it
is 0 by definition, whatever the number of voters (``byzantine_f``).
"""

from __future__ import annotations

from dataclasses import dataclass

RATE_WINDOWS: tuple[tuple[str, float], ...] = (("10s", 10.0), ("1m", 60.0))
"""The trailing windows rates are reported over: (label, seconds)."""

MIGRATION_WINDOW_S = 60.0
"""``migrations_per_minute`` counts committed migrations in this many trailing seconds."""


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric: its report key, unit, formula, scope and source."""

    key: str
    unit: str
    scope: str
    """``node`` or ``cluster`` (module doc)."""
    source: str
    """``gossiped``, ``committed`` or ``local``."""
    formula: str
    prom: str = ""
    """The Prometheus family name; "" when not exported."""
    kind: str = "gauge"
    """The Prometheus type: gauge, counter or info."""


CATALOG: tuple[Metric, ...] = (
    Metric("connectivity_pct", "percent", "cluster", "gossiped",
           "100 * alive members / members not left (this node included)",
           "meshtui_connectivity_ratio"),
    Metric("members", "members", "cluster", "gossiped",
           "members by SWIM state (alive, suspect, dead, left), this node included",
           "meshtui_members"),
    Metric("latency_ms", "milliseconds", "node", "local",
           "SWIM probe RTT to each peer, and p50/p99 (nearest rank) over the peers",
           "meshtui_peer_rtt_seconds"),
    Metric("throughput_msgs_per_s", "messages/s", "node", "local",
           "peer messages received (every datagram and stream message, SWIM included) "
           "per second over the trailing 10 s and 1 min windows",
           "meshtui_peer_messages_received_total", "counter"),
    Metric("partition_recovery_s", "seconds", "node", "gossiped",
           "from the first member of the other side heard again (the heal, as this node "
           "sees it) to one membership again on this node (every member lost since the "
           "split alive or left); the last recovery, null before any",
           "meshtui_partition_recovery_seconds"),
    Metric("partition_recovery", "seconds", "node", "gossiped",
           "the last recovery in detail: seconds, split_to_heal_s (first loss to first "
           "return), lost (members lost in the split), recoveries (how many so far)"),
    Metric("decision_latency_ms", "milliseconds", "cluster", "committed",
           "submit to first committed assignment, p50/p99 (nearest rank) over the "
           "last 1,000 decisions", "meshtui_decision_latency_seconds"),
    Metric("commit_latency_ms", "milliseconds", "node", "local",
           "proposal to apply for writes proposed on this node, p50/p99 (nearest rank) "
           "over its last 10,000 commits", "meshtui_commit_latency_seconds"),
    Metric("vote_participation", "ratio", "cluster", "committed",
           "mean over all proposals of votes cast / eligible voters",
           "meshtui_vote_participation_ratio"),
    Metric("vote_participation_by_proposal", "ratio", "cluster", "committed",
           "per proposal id: votes cast / eligible voters (a proposal voted by 2 of 3 "
           "reads 0.6667)", "meshtui_vote_participation_ratio"),
    Metric("byzantine_tolerance_f", "replicas", "cluster", "committed",
           "Byzantine replicas the engine tolerates: the engine's own figure (PBFT: "
           "(n - 1) // 3), 0 for Raft by definition", "meshtui_fault_tolerance"),
    Metric("crash_tolerance_f", "replicas", "cluster", "committed",
           "crashed voters the cluster survives: (voters - 1) // 2",
           "meshtui_fault_tolerance"),
    Metric("leader_changes", "changes", "cluster", "committed",
           "new leader terms in the committed log: entries whose term differs from the "
           "entry before them (each leader commits a no-op at its start)",
           "meshtui_leader_changes_total", "counter"),
    Metric("load_variance_stddev", "ratio", "cluster", "gossiped",
           "population standard deviation of the gossiped CPU (0..1) of alive members",
           "meshtui_load_stddev_ratio"),
    Metric("migrations_per_minute", "migrations", "cluster", "committed",
           "committed migrations (steal, hot-cold, failover, drain) in the last 60 s",
           "meshtui_migrations_last_minute"),
    Metric("hotspots", "members", "cluster", "gossiped",
           "alive members whose gossiped CPU stayed above sched.hot_above for "
           "sched.hot_window and has not yet fallen below sched.hot_exit_below (the "
           "scheduler's rule, agent/sched/balance.update_heat, on every node)",
           "meshtui_member_hot"),
    Metric("utilisation", "ratio", "cluster", "gossiped",
           "running tasks / task slots over alive members", "meshtui_utilisation_ratio"),
    Metric("history", "samples", "node", "local",
           "this node's bounded history (agent/metrics/history.py), summarised over "
           "``--timeframe``"),
)
"""Every metric, once (module doc)."""

BY_KEY: dict[str, Metric] = {m.key: m for m in CATALOG}


def byzantine_f(engine: str, voters: int, engine_f: int | None = None) -> int:
    """Byzantine replicas tolerated: the engine's own figure when it gives one,
    ``(n - 1) // 3`` for PBFT, and 0 for Raft (module doc)."""
    if engine_f is not None:
        return max(0, int(engine_f))
    if engine == "pbft":
        return max(0, (voters - 1) // 3)
    return 0


def crash_f(voters: int) -> int:
    """Crashed voters a majority quorum survives."""
    return max(0, (voters - 1) // 2)


def markdown_table() -> str:
    """The catalog as the README's table (key, unit, scope, formula)."""
    lines = ["| metric | unit | scope | formula |", "|---|---|---|---|"]
    for m in CATALOG:
        lines.append(f"| `{m.key}` | {m.unit} | {m.scope} ({m.source}) | {m.formula} |")
    return "\n".join(lines)
