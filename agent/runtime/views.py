"""Read-only views of a running agent for the control API: status, members, report.

Units: ``cpu`` and ``mem`` are fractions 0..1 (``mem`` is memory in use),
``rtt_ms`` milliseconds, times in seconds.  ``leader`` is a member name or null.
``alarms`` lists what needs an operator: today a full Raft disk, as
``{kind: "disk_full", node, what, dir, since (unix time), error, retries,
message}`` (``runtime/diskfull.py``); ``consensus.paused`` is true while the
WAL does not fit and Raft is paused on this node.

Every view reads one ``StatusSources``: the few read-only things a status,
report or member row is made of, not the agent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.links.state import PairView
from agent.metrics.service import MetricsReport
from agent.runtime.names import NodeNames
from agent.runtime.ports import (
    ConsensusStatus,
    MembershipStatus,
    StateQueries,
    TaskFigures,
    TrafficStats,
)
from agent.swim.members import MemberView


class LinkFigures(Protocol):
    """Link state and relay counters (``PeerRouter``; issue 20)."""

    def links(self) -> list[PairView]: ...

    def broken_links(self) -> int: ...

    @property
    def relay_stats(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class StatusSources:
    """What ``status``, ``report``, metrics samples and member rows are made of."""

    name: str
    """This node's name (``config.name``)."""
    node_id: str
    addr: str
    """The advertised "host:port"."""
    started: float
    """Monotonic time the agent started (for ``uptime``)."""
    members: MembershipStatus
    consensus: ConsensusStatus
    state: StateQueries
    names: NodeNames
    tasks: TaskFigures
    traffic: TrafficStats
    decode_errors: Callable[[], int]
    """Peer packets dropped as undecodable or unrouted (``PeerRouter``)."""
    metrics: MetricsReport | None = None
    """The metrics of ``agent/metrics/catalog.py`` and their history (``MetricsService``)."""
    link_figures: LinkFigures | None = None
    """Direct/relayed/down links and relay counters (``PeerRouter``)."""
    under_replicated: Callable[[], list[dict[str, Any]]] | None = None
    """Output/artifact items held here with fewer holders than targets (issue 17)."""
    cluster: str = ""
    """The cluster's name (``config.cluster``): the swarm id MCP clients see (issue 16)."""


def member_row(src: StatusSources, m: MemberView) -> dict[str, Any]:
    load = m.load
    counts = src.state.node_load().get(m.id, {})
    return {
        "name": m.meta.name,
        "id": m.id,
        "addr": m.addr,
        "state": m.state,
        "incarnation": m.incarnation,
        "cpu": load.cpu if load is not None else None,
        "mem": round(load.mem_percent / 100.0, 4) if load is not None else None,
        "load1": load.load1 if load is not None else None,
        "caps": list(m.meta.caps),
        "slots": m.meta.slots,
        "tasks": int(counts.get("running", 0)) + int(counts.get("queued", 0)),
        "queued": load.queued if load is not None else 0,
        "role": m.meta.role,
        "rtt_ms": round(m.rtt_ms, 3) if m.rtt_ms is not None else None,
        "version": m.meta.version,
        "draining": src.state.is_draining(m.id),
    }


def status(src: StatusSources) -> dict[str, Any]:
    cons = src.consensus.status()
    swim = src.members
    counts = src.state.status_counts()
    read_only = not cons["quorum"]
    name_of = src.names.name_of
    return {
        "node": src.name,
        "id": src.node_id,
        "cluster": src.cluster,
        "addr": src.addr,
        "members": [member_row(src, m) for m in src.members.members()],
        "consensus": {
            "engine": cons["engine"],
            "role": cons["role"],
            "term": cons["term"] if src.consensus.bootstrapped else None,
            "leader": name_of(cons["leader_id"]),
            "commit_index": cons["commit_index"] if src.consensus.bootstrapped else None,
            "applied_index": cons["applied_index"],
            "voters": [name_of(v) or v for v in cons["voters"]],
            "learners": [name_of(v) or v for v in cons["learners"]],
            "paused": cons["paused"],
            "pbft": _pbft_status(src, cons),
        },
        "tasks": {
            "queued": counts.get("queued", 0),
            "running": counts.get("running", 0),
            "done": counts.get("done", 0),
            "failed": counts.get("failed", 0),
        },
        "partitioned": swim.partitioned,
        "read_only": read_only,
        "alarms": cons["alarms"],
        "health_score": swim.health_score,
        "cluster_avg_cpu": swim.cluster_avg_cpu,
        "links": link_rows(src),
        "uptime": round(time.monotonic() - src.started, 1),
    }


def _pbft_status(src: StatusSources, cons: dict[str, Any]) -> dict[str, Any] | None:
    """PBFT's view, watermarks, window phases, evidence and the replicas' key
    fingerprints by name (issue 13); None under Raft."""
    pbft = cons.get("pbft")
    if not isinstance(pbft, dict):
        return None
    prints = pbft.get("fingerprints") or {}
    return {
        **pbft,
        "primary": src.names.name_of(pbft.get("primary")) or pbft.get("primary"),
        "fingerprints": {src.names.name_of(n) or n: fp for n, fp in prints.items()},
    }


def _pbft_report(src: StatusSources) -> dict[str, Any]:
    """``report``'s PBFT figures: view changes, checkpoint lag, evidence (issue 13)."""
    pbft = src.consensus.status().get("pbft")
    if not isinstance(pbft, dict):
        return {}
    return {
        "pbft": {
            "view": pbft.get("view"),
            "view_changes": pbft.get("view_changes"),
            "checkpoint_lag": pbft.get("checkpoint_lag"),
            "low_watermark": pbft.get("low"),
            "executed": pbft.get("executed"),
            "evidence": len(pbft.get("evidence") or []),
            "rejected_signatures": pbft.get("rejected_signatures"),
        }
    }


def metrics_sample(src: StatusSources) -> dict[str, Any]:
    load = src.members.latest_load
    members = src.members.members()
    return {
        "cpu": src.members.cpu_now,
        "host_cpu": load.cpu if load is not None else None,
        "mem": load.mem_used if load is not None else None,
        "load1": load.load1 if load is not None else None,
        "members_alive": sum(1 for m in members if m.state == "alive"),
        "loop_lag_p99_ms": round(src.members.loop_lag_p99() * 1000.0, 2),
        "at": time.time(),
    }


def report(src: StatusSources, timeframe: str | None = None) -> dict[str, Any]:
    """The metrics of ``agent/metrics/catalog.py`` -- each defined there once and
    computed by the metrics service the same way on every node -- then this node's
    transport, WAL, alarms and the rest; with ``timeframe`` (``24h``, ``7d``,
    ``30d``, ...) also ``history``: the bounded history summarised over it."""
    figures = src.metrics.report(timeframe) if src.metrics is not None else {}
    return {
        **figures,
        "transport": src.traffic.as_dict(),
        "wal": src.consensus.wal_stats(),
        "alarms": src.consensus.alarms(),
        "decode_errors": src.decode_errors(),
        "links": link_counters(src),
        **_replicas(src),
        **_pbft_report(src),
    }


def _replicas(src: StatusSources) -> dict[str, Any]:
    """``under_replicated``: how many items this host holds lack a copy on a
    target host, and the first 20 of them (``{task, epoch, item, holders, want, error}``,
    ``error`` the last one-line refusal a target sent)."""
    items = src.under_replicated() if src.under_replicated is not None else []
    return {"under_replicated": len(items), "under_replicated_items": items[:20]}


def link_rows(src: StatusSources) -> list[dict[str, Any]]:
    """``status.links``: every directed link known here, as
    ``{from, to, state: direct|relayed|down, via, rtt_ms}`` with member names."""
    if src.link_figures is None:
        return []
    name_of = src.names.name_of
    return [{"from": name_of(p.a) or p.a, "to": name_of(p.b) or p.b, "state": p.state.label,
             "via": (name_of(p.via) or p.via) if p.via else None, "rtt_ms": p.rtt_ms}
            for p in src.link_figures.links()]


def link_counters(src: StatusSources) -> dict[str, int]:
    """``report.links``: relayed messages, broken links now, relay drops, and the
    rest of the relay counters (``agent/runtime/relay.py`` ``RelayStats``)."""
    if src.link_figures is None:
        return {}
    stats: dict[str, int] = src.link_figures.relay_stats.as_dict()
    return {"relayed_messages": stats["relayed_out"], "broken_links": src.link_figures.broken_links(),
            **stats}


