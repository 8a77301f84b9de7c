"""The Prometheus exposition: a custom ``prometheus_client`` Collector.

Theory of operation
-------------------
Nothing is kept in ``prometheus_client``'s own metric objects: at each scrape
``MeshCollector.collect()`` asks the metrics service for one ``ScrapeView``
(the figures of ``agent.metrics.engine`` plus the live member list and
counters) and turns it into metric families, so per-peer series are computed
at scrape time -- a member that left has no series any more, and nothing grows
between scrapes.  ``registry()`` puts it beside ``prometheus_client``'s
process, platform and GC collectors (``process_cpu_seconds_total``,
``process_resident_memory_bytes``, open fds, ...), and ``render()`` is
``generate_latest`` over that registry (text format 0.0.4).

Naming follows Prometheus' conventions: every family starts ``meshtui_``,
values are in base units (seconds, ratios 0..1, bytes), counters end in
``_total``, metadata is an ``_info`` family valued 1, and what varies (peer,
member, state, quantile, direction) is a label, never part of the name.
``tests/integration/test_prometheus.py`` runs ``promtool check metrics`` on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from agent.metrics.windows import percentile
from agent.swim.members import MemberView

PREFIX = "meshtui"


@dataclass(frozen=True, slots=True)
class ScrapeView:
    """What one scrape shows, read at once from the agent (``MetricsService.scrape_view``)."""

    node: str
    node_id: str
    version: str
    engine: str
    role: str
    term: int
    commit_index: int
    voters: int
    partitioned: bool
    members: tuple[MemberView, ...]
    hot: frozenset[str]
    """Member ids that are hotspots."""
    figures: Mapping[str, Any]
    """``MetricsEngine.figures`` (catalog keys)."""
    messages_in: int
    traffic: Mapping[str, Any] = field(default_factory=dict)
    history_bytes: int = 0
    latencies: Mapping[str, Sequence[float]] = field(default_factory=dict)
    """Seconds: ``commit`` (this node's writes) and ``decision`` (committed), the
    windows the report's p50/p99 are taken over."""


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


class MeshCollector(Collector):
    """Metric families from one ``ScrapeView`` per scrape (module doc)."""

    def __init__(self, view: Callable[[], ScrapeView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        v = self._view()
        yield from self._identity(v)
        yield from self._membership(v)
        yield from self._peers(v)
        yield from self._consensus(v)
        yield from self._work(v)
        yield from self._traffic(v)

    def _identity(self, v: ScrapeView) -> Iterator[Metric]:
        info = InfoMetricFamily(f"{PREFIX}_node", "This agent: name, node id, version, engine.")
        info.add_metric([], {"node": v.node, "id": v.node_id, "version": v.version, "engine": v.engine})
        yield info
        hist = _gauge("history_bytes", "Bytes the bounded metrics history holds (fixed).")
        hist.add_metric([], float(v.history_bytes))
        yield hist

    def _membership(self, v: ScrapeView) -> Iterator[Metric]:
        fig = v.figures
        states = _gauge("members", "Members by SWIM state, this node included.", ("state",))
        for state, count in sorted(fig["members"].items()):
            states.add_metric([state], float(count))
        yield states
        conn = _gauge("connectivity_ratio", "Alive members / members not left.")
        conn.add_metric([], fig["connectivity_pct"] / 100.0)
        yield conn
        part = _gauge("partitioned", "1 while this node reaches fewer than half of the members.")
        part.add_metric([], 1.0 if v.partitioned else 0.0)
        yield part
        recovery = fig.get("partition_recovery_s")
        if recovery is not None:
            rec = _gauge("partition_recovery_seconds",
                         "Last partition recovery: first member heard again to one membership.")
            rec.add_metric([], float(recovery))
            yield rec

    def _peers(self, v: ScrapeView) -> Iterator[Metric]:
        rtt = _gauge("peer_rtt_seconds", "SWIM probe round-trip time to each peer.", ("peer",))
        cpu = _gauge("member_cpu_ratio", "Each member's gossiped CPU (0..1).", ("member",))
        hot = _gauge("member_hot", "1 when the member is a hotspot (scheduler's rule).", ("member",))
        slots = _gauge("member_slots", "Each alive member's task slots.", ("member",))
        for m in v.members:
            name = m.meta.name or m.id
            if m.state == "left":
                continue
            if m.rtt_ms is not None:
                rtt.add_metric([name], m.rtt_ms / 1000.0)
            if m.load is not None:
                cpu.add_metric([name], float(m.load.cpu))
            hot.add_metric([name], 1.0 if m.id in v.hot else 0.0)
            if m.state == "alive":
                slots.add_metric([name], float(m.meta.slots))
        yield from (rtt, cpu, hot, slots)

    def _consensus(self, v: ScrapeView) -> Iterator[Metric]:
        fig = v.figures
        changes = _counter("leader_changes", "New leader terms in the committed log.")
        changes.add_metric([], float(fig["leader_changes"]))
        yield changes
        term = _gauge("raft_term", "This node's current Raft term.")
        term.add_metric([], float(v.term))
        commit = _gauge("raft_commit_index", "This node's Raft commit index.")
        commit.add_metric([], float(v.commit_index))
        voters = _gauge("raft_voters", "Raft voters in the configuration.")
        voters.add_metric([], float(v.voters))
        leader = _gauge("raft_leader", "1 on the leader.")
        leader.add_metric([], 1.0 if v.role == "leader" else 0.0)
        yield from (term, commit, voters, leader)
        tolerance = _gauge("fault_tolerance", "Failed voters the engine survives, by kind.", ("kind",))
        tolerance.add_metric(["crash"], float(fig["crash_tolerance_f"]))
        tolerance.add_metric(["byzantine"], float(fig["byzantine_tolerance_f"]))
        yield tolerance
        for key, name, doc in (
            ("commit", "commit_latency_seconds", "Proposal to apply on this node"),
            ("decision", "decision_latency_seconds", "Submit to first committed assignment"),
        ):
            values = v.latencies.get(key, ())
            fam = SummaryMetricFamily(
                f"{PREFIX}_{name}", f"{doc} (nearest-rank quantiles over the kept window).",
                count_value=len(values), sum_value=float(sum(values)),
            )
            for q in (0.5, 0.99):
                value = percentile(values, q)
                if value is not None:
                    fam.samples.append(Sample(fam.name, {"quantile": str(q)}, value, None))
            yield fam
        votes = _gauge("vote_participation_ratio", "Votes cast / eligible, per proposal.", ("proposal",))
        for pid, share in fig["vote_participation_by_proposal"].items():
            votes.add_metric([pid], float(share))
        yield votes

    def _work(self, v: ScrapeView) -> Iterator[Metric]:
        fig = v.figures
        for name, value, doc in (
            ("load_stddev_ratio", fig["load_variance_stddev"], "Std deviation of alive members' CPU."),
            ("utilisation_ratio", fig["utilisation"], "Running tasks / slots over alive members."),
            ("migrations_last_minute", fig["migrations_per_minute"], "Migrations committed in 60 s."),
            ("hotspots", len(fig["hotspots"]), "Members that are hotspots."),
        ):
            fam = _gauge(name, doc)
            fam.add_metric([], float(value))
            yield fam

    def _traffic(self, v: ScrapeView) -> Iterator[Metric]:
        received = _counter("peer_messages_received", "Peer messages received (datagrams + stream messages).")
        received.add_metric([], float(v.messages_in))
        yield received
        rates = _gauge("peer_messages_received_per_second",
                       "Peer messages received per second over a trailing window.", ("window",))
        for window, rate in v.figures["throughput_msgs_per_s"].items():
            if rate is not None:
                rates.add_metric([window], float(rate))
        yield rates
        t = v.traffic
        if not t:
            return
        labels = ("channel", "direction")
        msgs = _counter("transport_messages", "Peer messages by channel and direction.", labels)
        data = _counter("transport_bytes", "On-the-wire bytes by channel and direction.", labels)
        for channel, prefix in (("udp", "datagram"), ("tcp", "stream")):
            for direction in ("in", "out"):
                count_key = f"{prefix}s_{direction}" if prefix == "datagram" else f"stream_msgs_{direction}"
                msgs.add_metric([channel, direction], float(t.get(count_key, 0)))
                data.add_metric([channel, direction], float(t.get(f"{prefix}_bytes_{direction}", 0)))
        yield from (msgs, data)


def registry(view: Callable[[], ScrapeView]) -> CollectorRegistry:
    """A registry of our collector plus the process, platform and GC collectors."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MeshCollector(view))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry) -> bytes:
    """The text exposition of ``reg``."""
    return generate_latest(reg)
