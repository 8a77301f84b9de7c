"""Placement: which host runs a task (auction, capability routing, hash ring).

Theory of operation: a host is *eligible* for a task when it is alive, not
draining, and has at least ``min_capability_match`` (0.7) of the task's
required capabilities (1.0 when none are required).  Among eligible hosts:

* auction -- a host with a free slot always beats a host without one
  (``queue_wait``: 0 while a slot is free, else the tasks ahead of one more per
  slot; the least wait wins among full hosts).  Among hosts of equal wait, score
  = 0.4·match + 0.3·(1 - cpu) + 0.2·performance + 0.1·availability, from each
  host's fresh ``Bid`` when it arrived in time and from gossiped state
  otherwise; the highest score wins.  A host's tasks are its running and
  queued ones as the leader's committed state counts them (never fewer than
  its bid says), plus the placements proposed and not yet applied, plus this
  round's decisions: CPU is a reading that trails a burst (a just-started host
  reads 0 until its tasks run), so it must never outweigh a full queue;
* capability -- the best match wins, then the least loaded host;
* hash -- the first eligible host of the key's preference list on the ring.

Every tie is broken by node id, so the same snapshot always gives the same
answer on any replica.  With no eligible host a ``SchedulingError`` says why.
"""

from __future__ import annotations

import functools
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
    return _performance(node.success_rate, node.mean_duration, fastest_mean)


def availability(node: NodeView) -> float:
    """Resource availability, 0..1: half slot headroom, half free memory.

    Slot headroom is ``slots / (slots + busy)`` (busy = running + queued): 1 when
    idle, 0.5 when full, and still falling as a full host's queue grows.  It weighs
    little (0.1 of the score, half of it the queue) beside CPU (0.3), so it orders
    hosts only among those with the same ``queue_wait``; the wait, ranked before the
    score, is what keeps a burst from piling onto the host whose CPU reads lowest."""
    return _availability(node.slots, node.running + node.queued, node.mem_free)


def queue_wait(slots: int, busy: int) -> float:
    """How long a task placed on a host would wait, in slots' worth of tasks: 0 while
    the host has a free slot (``busy < slots``), else the tasks ahead of it per slot,
    ``(busy + 1 - slots) / slots``.  The auction's first key: a host with a free slot
    never loses to one without, and among full hosts the shortest queue per slot wins
    (so a burst larger than the mesh's slots spreads evenly, whatever the CPU terms)."""
    slots = max(1, slots)
    if busy < slots:
        return 0.0
    return round((busy + 1 - slots) / slots, SCORE_DIGITS)


def _performance(success_rate: float, mean_duration: float | None, fastest: float | None) -> float:
    if mean_duration is None or fastest is None or mean_duration <= 0:
        speed = 1.0
    else:
        speed = min(1.0, fastest / mean_duration)
    return 0.5 * _clamp(success_rate) + 0.5 * speed


def _availability(slots: int, busy: int, mem_free: float) -> float:
    slots = max(1, slots)
    return 0.5 * (slots / (slots + max(0, busy))) + 0.5 * _clamp(mem_free)


def auction_score(
    task: TaskView, node: NodeView, cfg: SchedConfig, fastest_mean: float | None
) -> float:
    """The score of one host for one task, from scratch (``AuctionBoard`` is the fast path)."""
    score = (
        cfg.weight_capability * capability_match(task.caps, node.caps)
        + cfg.weight_cpu * (1.0 - _clamp(node.cpu))
        + cfg.weight_performance * performance(node, fastest_mean)
        + cfg.weight_resources * availability(node)
    )
    return round(score, SCORE_DIGITS)


def bid_applies(bid: Bid, task: TaskView) -> bool:
    """A bid for this task at its current epoch, or a round bid (``task == ""``): the
    host's figures offered for every task placed in this scheduling round."""
    return bid.task == "" or (bid.task == task.id and bid.epoch == task.epoch)


def apply_bid(node: NodeView, bid: Bid) -> NodeView:
    """The node's view with the figures from its own (fresher) bid; its task counts
    never below the leader's (``bid_load``)."""
    return replace(
        node,
        cpu=bid.cpu,
        mem_free=bid.mem_free,
        slots=bid.slots,
        running=bid.running,
        queued=bid_load(node, bid) - bid.running,
        success_rate=bid.success_rate,
        mean_duration=bid.mean_duration,
    )


def bid_load(node: NodeView, bid: Bid) -> int:
    """A host's tasks (running + queued) for scoring: its bid's count, but never fewer
    than the leader's committed state gives it.  A host answers from the state it has
    applied, which may not hold the placements the leader has just committed to it
    yet (rounds woken by each submit run back to back): a count from before them
    would pile the next tasks onto that host."""
    return max(bid.running + bid.queued, node.running + node.queued)


@dataclass(slots=True)
class _RoundBids:
    """``AuctionBoard._round``: a round-bids mapping, its bids for known hosts, the
    fastest mean duration under them, and each schedulable host's (wait, base)."""

    bids: Mapping[str, Bid]
    fresh: dict[str, Bid]
    fastest: float | None
    table: dict[str, tuple[float, float]]


class AuctionBoard:
    """The task-independent part of every host's auction score, computed once per snapshot.

    score = w_cap·match(task) + base(host), base = w_cpu·(1 - cpu) + w_perf·performance +
    w_res·availability.  Only the capability match depends on the task, so one board
    serves a whole burst of decisions; ``bump`` counts a decision on one host (its base
    recomputed from the counts, no new ``NodeView`` per decision).
    """

    __slots__ = (
        "_added", "_base", "_bumped", "_round", "_schedulable", "_views", "_wait", "cfg",
        "fastest",
    )  # fmt: skip

    def __init__(self, nodes: Iterable[NodeView], cfg: SchedConfig) -> None:
        self.cfg = cfg
        self._views = {n.id: n for n in nodes}
        self._schedulable = [(n.id, n.caps) for n in self._views.values() if n.schedulable]
        # Speed is relative to the fastest host with history anywhere in the mesh.
        self.fastest = _fastest(self._views.values())
        self._base = {n.id: self._base_of(n, self.fastest) for n in self._views.values()}
        self._wait = {n.id: queue_wait(n.slots, n.running + n.queued) for n in self._views.values()}
        self._added: dict[str, int] = {}  # decisions made on this board, per host
        self._bumped: dict[str, NodeView] | None = None
        self._round: _RoundBids | None = None
        """The last round-bids mapping ``ranks`` saw, with each host's (wait, base)
        under it (``_round_table``), kept up to date by ``bump``."""

    @property
    def nodes(self) -> dict[str, NodeView]:
        """Every host's view with this board's decisions counted in its queue (built
        when first asked for, then kept up to date by ``bump``)."""
        if self._bumped is None:
            self._bumped = {
                node_id: bump_queued(node, self._added[node_id]) if node_id in self._added else node
                for node_id, node in self._views.items()
            }
        return self._bumped

    def _base_of(self, node: NodeView, fastest: float | None, added: int = 0) -> float:
        return self._base_from(
            node.cpu, node.mem_free, node.slots, node.running + node.queued + added,
            node.success_rate, node.mean_duration, fastest,
        )  # fmt: skip

    def _base_from(
        self,
        cpu: float,
        mem_free: float,
        slots: int,
        busy: int,
        success_rate: float,
        mean_duration: float | None,
        fastest: float | None,
    ) -> float:
        # The terms of auction_score() minus the match, without building a NodeView.
        cfg = self.cfg
        return (
            cfg.weight_cpu * (1.0 - _clamp(cpu))
            + cfg.weight_performance * _performance(success_rate, mean_duration, fastest)
            + cfg.weight_resources * _availability(slots, busy, mem_free)
        )

    def bump(self, node_id: str, queued: int = 1) -> None:
        """Count ``queued`` more tasks on ``node_id`` (a decision just landed there)."""
        # Bids were sampled before these decisions: counted on top of bid figures too.
        added = self._added[node_id] = self._added.get(node_id, 0) + queued
        view = self._views[node_id]
        # Its base is recomputed when next read (``_base_now``): under round bids every
        # read goes through the round table, so it is seldom read at all.
        self._base.pop(node_id, None)
        self._wait[node_id] = queue_wait(view.slots, view.running + view.queued + added)
        if self._bumped is not None:
            self._bumped[node_id] = bump_queued(view, added)
        cached = self._round
        if cached is not None and node_id in cached.table:
            cached.table[node_id] = self._wait_base(
                node_id, cached.fresh.get(node_id), cached.fastest, cached.fastest == self.fastest
            )

    def scores(self, task: TaskView, bids: Mapping[str, Bid] | None = None) -> dict[str, float]:
        """Score of every eligible host; a bid replaces gossip only for this task and epoch."""
        return {node_id: score for node_id, (_, score) in self.ranks(task, bids).items()}

    def ranks(
        self, task: TaskView, bids: Mapping[str, Bid] | None = None
    ) -> dict[str, tuple[float, float]]:
        """``(queue_wait, score)`` of every eligible host (the wait first: lower wins)."""
        table = self._round_table(bids) if bids else None
        if table is None:
            fresh: dict[str, Bid] = {}
            for node_id, bid in (bids or {}).items():
                if node_id in self._views and bid_applies(bid, task):
                    fresh[node_id] = bid
            fastest = self._fastest_with(fresh)
            reuse = fastest == self.fastest
            table = {
                node_id: self._wait_base(node_id, fresh.get(node_id), fastest, reuse)
                for node_id, _ in self._schedulable
            }
        required = task.caps
        need = len(required)
        weight_cap, min_match = self.cfg.weight_capability, self.cfg.min_capability_match
        ranks: dict[str, tuple[float, float]] = {}
        for node_id, caps in self._schedulable:
            match = len(required & caps) / need if need else 1.0
            if match < min_match:
                continue
            wait, base = table[node_id]
            ranks[node_id] = (wait, round(weight_cap * match + base, SCORE_DIGITS))
        return ranks

    def _fastest_with(self, fresh: Mapping[str, Bid]) -> float | None:
        """The fastest mean duration, counting the bids' own figures."""
        fastest = self.fastest
        bid_means = [b.mean_duration for b in fresh.values() if b.mean_duration]
        bid_means = [m for m in bid_means if m > 0]
        if bid_means and (fastest is None or min(bid_means) < fastest):
            fastest = min(bid_means)
        return fastest

    def _wait_base(
        self, node_id: str, offered: Bid | None, fastest: float | None, reuse: bool
    ) -> tuple[float, float]:
        """A host's ``(queue_wait, score without the capability match)``: from its bid
        when it offered one, else from the snapshot (``reuse``: kept, as ``fastest``
        is the board's own)."""
        if offered is not None:
            busy = bid_load(self._views[node_id], offered) + self._added.get(node_id, 0)
            return queue_wait(offered.slots, busy), self._base_from(
                offered.cpu, offered.mem_free, offered.slots, busy,
                offered.success_rate, offered.mean_duration, fastest,
            )  # fmt: skip
        base = (
            self._base_now(node_id) if reuse
            else self._base_of(self._views[node_id], fastest, self._added.get(node_id, 0))
        )  # fmt: skip
        return self._wait[node_id], base

    def _base_now(self, node_id: str) -> float:
        """The host's base with this board's decisions counted (kept until ``bump``)."""
        base = self._base.get(node_id)
        if base is None:
            view = self._views[node_id]
            base = self._base[node_id] = self._base_of(
                view, self.fastest, self._added.get(node_id, 0))
        return base

    def _round_table(self, bids: Mapping[str, Bid]) -> dict[str, tuple[float, float]] | None:
        """Each schedulable host's ``_wait_base`` under ``bids`` when they are all round
        bids (``task == ""``: the same figures for every task of the round), made once
        per mapping and kept up to date by ``bump``; None for task bids."""
        cached = self._round
        if cached is not None and cached.bids is bids:
            return cached.table
        if not all(bid.task == "" for bid in bids.values()):
            return None
        fresh = {node_id: bid for node_id, bid in bids.items() if node_id in self._views}
        fastest = self._fastest_with(fresh)
        reuse = fastest == self.fastest
        table = {
            node_id: self._wait_base(node_id, fresh.get(node_id), fastest, reuse)
            for node_id, _ in self._schedulable
        }
        self._round = _RoundBids(bids, fresh, fastest, table)
        return table

    def winner(self, task: TaskView, bids: Mapping[str, Bid] | None = None) -> str:
        """The least ``queue_wait``, then the highest score, then the smallest node id;
        ``SchedulingError`` if no host is eligible."""
        ranks = self.ranks(task, bids)
        if not ranks:
            raise no_host_error(task, self.nodes.values())
        return min(ranks, key=lambda node_id: (ranks[node_id][0], -ranks[node_id][1], node_id))


def _fastest(nodes: Iterable[NodeView]) -> float | None:
    means = [n.mean_duration for n in nodes if n.mean_duration and n.mean_duration > 0]
    return min(means) if means else None


def auction_board(snapshot: ClusterSnapshot, cfg: SchedConfig) -> AuctionBoard:
    """The snapshot's board for ``cfg``, built on first use and kept with the snapshot."""
    key = ("auction", cfg)
    board = snapshot.cache.get(key)
    if not isinstance(board, AuctionBoard):
        board = snapshot.cache[key] = AuctionBoard(snapshot.nodes, cfg)
    return board


def auction_scores(
    task: TaskView,
    snapshot: ClusterSnapshot,
    bids: Mapping[str, Bid] | None = None,
    cfg: SchedConfig | None = None,
) -> dict[str, float]:
    """Score of every eligible host; a bid replaces gossip only if it is for this task/epoch."""
    return auction_board(snapshot, cfg or SchedConfig()).scores(task, bids)


def run_auction(
    task: TaskView,
    snapshot: ClusterSnapshot,
    bids: Mapping[str, Bid] | None = None,
    cfg: SchedConfig | None = None,
) -> str:
    """The winning host: highest score, ties to the smallest node id."""
    return auction_board(snapshot, cfg or SchedConfig()).winner(task, bids)


def place_by_capability(
    task: TaskView, snapshot: ClusterSnapshot, cfg: SchedConfig | None = None
) -> str:
    """Best capability match, then least loaded (tasks per slot, then CPU), then node id."""
    return _pick_by_capability(task, snapshot.nodes, cfg or SchedConfig())


def _pick_by_capability(task: TaskView, nodes: Iterable[NodeView], cfg: SchedConfig) -> str:
    nodes = list(nodes)
    candidates = eligible_nodes(task, nodes, cfg)
    if not candidates:
        raise no_host_error(task, nodes)
    best = min(
        candidates,
        key=lambda n: (-capability_match(task.caps, n.caps), n.load, round(n.cpu, 6), n.id),
    )
    return best.id


def ring_for(snapshot: ClusterSnapshot, cfg: SchedConfig) -> HashRing:
    """The ring over every known member (liveness is applied when walking it)."""
    return _ring(frozenset(n.id for n in snapshot.nodes), cfg.vnodes)


@functools.lru_cache(maxsize=8)
def _ring(nodes: frozenset[str], vnodes: int) -> HashRing:
    # Immutable and the same for the same members: built once, not every round
    # (``vnodes`` blake2b hashes per host and a sort).
    return HashRing(nodes, vnodes)


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
    board = AuctionBoard(snapshot.nodes, cfg)  # private copy: bumped as decisions land
    decisions: list[Placement] = []
    for task in sorted(tasks, key=lambda t: (-t.priority, t.created_at, t.id)):
        try:
            if task.strategy is Strategy.HASH:  # the ring ignores load: no working copy needed
                node_id = place_by_hash(task, snapshot, cfg, ring)
            elif task.strategy is Strategy.CAPABILITY:
                node_id = _pick_by_capability(task, board.nodes.values(), cfg)
            else:
                node_id = board.winner(task, (bids or {}).get(task.id))
        except SchedulingError as exc:
            decisions.append(Placement(task.id, None, str(exc)))
            continue
        decisions.append(Placement(task.id, node_id))
        board.bump(node_id)
    return decisions


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))
