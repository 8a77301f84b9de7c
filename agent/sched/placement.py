"""Placement: which host runs a task (auction, capability routing, hash ring).

Theory of operation: a host is *eligible* for a task when it is alive, not
draining, and has at least ``min_capability_match`` (0.7) of the task's
required capabilities (1.0 when none are required).  Among eligible hosts:

* auction -- score = 0.4·match + 0.3·(1 - cpu) + 0.2·performance +
  0.1·availability, from each host's fresh ``Bid`` when it arrived in time and
  from gossiped state otherwise; the highest score wins;
* capability -- the best match wins, then the least loaded host;
* hash -- the first eligible host of the key's preference list on the ring.

Every tie is broken by node id, so the same snapshot always gives the same
answer on any replica.  With no eligible host a ``SchedulingError`` says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from agent.errors import SchedulingError
from agent.sched.config import SchedConfig
from agent.sched.messages import Bid
from agent.sched.ring import HashRing
from agent.sched.snapshot import ClusterSnapshot, NodeView, Strategy, TaskView, bump_queued

SCORE_DIGITS = 9
"""Scores are rounded to this many decimals before comparing, so float noise
never decides a tie differently on two machines."""


def capability_match(required: frozenset[str], caps: frozenset[str]) -> float:
    """Fraction of ``required`` present in ``caps``; 1.0 when nothing is required."""
    if not required:
        return 1.0
    return len(required & caps) / len(required)


def is_eligible(task: TaskView, node: NodeView, cfg: SchedConfig) -> bool:
    return node.schedulable and capability_match(task.caps, node.caps) >= cfg.min_capability_match


def eligible_nodes(task: TaskView, nodes: Iterable[NodeView], cfg: SchedConfig) -> list[NodeView]:
    return [n for n in nodes if is_eligible(task, n, cfg)]


def no_host_error(task: TaskView, nodes: Iterable[NodeView]) -> SchedulingError:
    """The clear message for "nobody can take this task"."""
    live = [n for n in nodes if n.schedulable]
    if not live:
        return SchedulingError("no eligible host: no alive, non-draining nodes")
    best = max(capability_match(task.caps, n.caps) for n in live)
    need = ",".join(sorted(task.caps))
    return SchedulingError(f"no eligible host: need caps {need} (best match {best:.2g})")


def performance(node: NodeView, fastest_mean: float | None) -> float:
    """Past performance, 0..1: half success rate, half speed relative to the fastest host.

    A host without history counts as fast, so new hosts get tried.
    """
    if node.mean_duration is None or fastest_mean is None or node.mean_duration <= 0:
        speed = 1.0
    else:
        speed = min(1.0, fastest_mean / node.mean_duration)
    return 0.5 * _clamp(node.success_rate) + 0.5 * speed


def availability(node: NodeView) -> float:
    """Resource availability, 0..1: half free-slot fraction, half free memory."""
    return 0.5 * (node.free_slots / max(1, node.slots)) + 0.5 * _clamp(node.mem_free)


def auction_score(
    task: TaskView, node: NodeView, cfg: SchedConfig, fastest_mean: float | None
) -> float:
    score = (
        cfg.weight_capability * capability_match(task.caps, node.caps)
        + cfg.weight_cpu * (1.0 - _clamp(node.cpu))
        + cfg.weight_performance * performance(node, fastest_mean)
        + cfg.weight_resources * availability(node)
    )
    return round(score, SCORE_DIGITS)


def apply_bid(node: NodeView, bid: Bid) -> NodeView:
    """The node's view with the figures from its own (fresher) bid."""
    return replace(
        node,
        cpu=bid.cpu,
        mem_free=bid.mem_free,
        slots=bid.slots,
        running=bid.running,
        queued=bid.queued,
        success_rate=bid.success_rate,
        mean_duration=bid.mean_duration,
    )


def auction_scores(
    task: TaskView,
    snapshot: ClusterSnapshot,
    bids: Mapping[str, Bid] | None = None,
    cfg: SchedConfig | None = None,
) -> dict[str, float]:
    """Score of every eligible host; a bid replaces gossip only if it is for this task/epoch."""
    cfg = cfg or SchedConfig()
    bids = bids or {}
    candidates: list[NodeView] = []
    for node in eligible_nodes(task, snapshot.nodes, cfg):
        bid = bids.get(node.id)
        if bid is not None and bid.task == task.id and bid.epoch == task.epoch:
            node = apply_bid(node, bid)
        candidates.append(node)
    # Speed is relative to the fastest host with history anywhere in the mesh.
    known = [*snapshot.nodes, *candidates]
    means = [n.mean_duration for n in known if n.mean_duration and n.mean_duration > 0]
    fastest = min(means) if means else None
    return {n.id: auction_score(task, n, cfg, fastest) for n in candidates}


def run_auction(
    task: TaskView,
    snapshot: ClusterSnapshot,
    bids: Mapping[str, Bid] | None = None,
    cfg: SchedConfig | None = None,
) -> str:
    """The winning host: highest score, ties to the smallest node id."""
    scores = auction_scores(task, snapshot, bids, cfg)
    if not scores:
        raise no_host_error(task, snapshot.nodes)
    return min(scores, key=lambda node_id: (-scores[node_id], node_id))


def place_by_capability(
    task: TaskView, snapshot: ClusterSnapshot, cfg: SchedConfig | None = None
) -> str:
    """Best capability match, then least loaded (tasks per slot, then CPU), then node id."""
    cfg = cfg or SchedConfig()
    candidates = eligible_nodes(task, snapshot.nodes, cfg)
    if not candidates:
        raise no_host_error(task, snapshot.nodes)
    best = min(
        candidates,
        key=lambda n: (-capability_match(task.caps, n.caps), n.load, round(n.cpu, 6), n.id),
    )
    return best.id


def ring_for(snapshot: ClusterSnapshot, cfg: SchedConfig) -> HashRing:
    """The ring over every known member (liveness is applied when walking it)."""
    return HashRing((n.id for n in snapshot.nodes), cfg.vnodes)


def preference_list(
    key: str, snapshot: ClusterSnapshot, cfg: SchedConfig | None = None, n: int | None = None
) -> list[str]:
    """Primary + successors among alive nodes: the hosts that keep a key's output."""
    cfg = cfg or SchedConfig()
    ring = ring_for(snapshot, cfg)

    def alive(node_id: str) -> bool:
        node = snapshot.node(node_id)
        return node is not None and node.alive

    return ring.preference_list(key, n or cfg.replication, alive)


def place_by_hash(
    task: TaskView,
    snapshot: ClusterSnapshot,
    cfg: SchedConfig | None = None,
    ring: HashRing | None = None,
) -> str:
    """The first eligible host on the ring from the task's key (its id when it has none)."""
    cfg = cfg or SchedConfig()
    ring = ring or ring_for(snapshot, cfg)

    def accept(node_id: str) -> bool:
        node = snapshot.node(node_id)
        return node is not None and is_eligible(task, node, cfg)

    chosen = ring.primary(task.key if task.key is not None else task.id, accept)
    if chosen is None:
        raise no_host_error(task, snapshot.nodes)
    return chosen


def place(
    task: TaskView,
    snapshot: ClusterSnapshot,
    cfg: SchedConfig | None = None,
    bids: Mapping[str, Bid] | None = None,
    ring: HashRing | None = None,
) -> str:
    """The host for ``task`` by its strategy; raises ``SchedulingError`` if none fits."""
    cfg = cfg or SchedConfig()
    if task.strategy is Strategy.HASH:
        return place_by_hash(task, snapshot, cfg, ring)
    if task.strategy is Strategy.CAPABILITY:
        return place_by_capability(task, snapshot, cfg)
    return run_auction(task, snapshot, bids, cfg)


@dataclass(frozen=True, slots=True)
class Placement:
    """One decision of ``place_many``: a node, or the reason there is none."""

    task: str
    node: str | None
    error: str | None = None


def place_many(
    tasks: Iterable[TaskView],
    snapshot: ClusterSnapshot,
    cfg: SchedConfig | None = None,
    bids: Mapping[str, Mapping[str, Bid]] | None = None,
) -> list[Placement]:
    """Place tasks in order (highest priority first, then oldest), counting each decision
    against its host so a burst of submissions spreads out instead of piling on one host.
    ``bids`` maps task id → node id → bid."""
    cfg = cfg or SchedConfig()
    ring = ring_for(snapshot, cfg)
    nodes = {n.id: n for n in snapshot.nodes}
    working = snapshot
    decisions: list[Placement] = []
    ordered = sorted(tasks, key=lambda t: (-t.priority, t.created_at, t.id))
    for task in ordered:
        try:
            node_id = place(task, working, cfg, (bids or {}).get(task.id), ring)
        except SchedulingError as exc:
            decisions.append(Placement(task.id, None, str(exc)))
            continue
        decisions.append(Placement(task.id, node_id))
        nodes[node_id] = bump_queued(nodes[node_id], 1)
        working = ClusterSnapshot(tuple(nodes.values()), snapshot.tasks, snapshot.now)
    return decisions


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))
