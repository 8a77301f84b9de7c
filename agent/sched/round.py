"""One scheduling round of the leader as a pure function: what it decides, given what it sees.

Theory of operation: every ``sched_interval`` the leader's runtime
(``agent/runtime/scheduler.py``) builds a ``ClusterSnapshot``, collects one
bid per live host when there is something to place (``needs_bids``), calls
``plan_round`` and proposes each decision of the returned ``RoundPlan`` as a
committed command.  The round decides, in this order (the order decisions are
proposed in, so the order the cap cuts):

1. failover -- a host that is not alive gets ``dead_since`` (the leader's
   clock when it first saw it dead); once it has been dead for ``lease``
   seconds and still holds tasks, one ``FailNode`` sends each of them to the
   host ``plan_failover`` picks, or back to the queue.  Waiting out the lease
   means the dead host's watchdog has killed its copies before new ones start.
2. placement -- queued tasks, highest priority then oldest, at most
   ``max_decisions`` of them (a deep backlog costs a round O(cap), not
   O(backlog)), each ``Assign``ed at epoch + 1 by its strategy; auction tasks
   are scored with this round's ``bids`` where they arrived.
3. moves -- the waiting tasks of draining live hosts, work steals, and
   hot→cold rebalance (heat updated from the snapshot, then ``settle_heat``
   after the moves); the first move planned for a task wins.

``busy`` holds what has a decision proposed and not yet committed (task ids,
and dead node ids for failover): rounds overlap while decisions are in the
log, and a round leaves those alone.  At most ``min(max_decisions,
max_inflight - len(busy))`` decisions come out; with no room at all nothing
is planned and ``heat``/``dead_since`` come back unchanged.  ``backlog`` says
the cap was reached, so the runtime runs the next round at once.

Nothing here reads a clock, does I/O or changes its arguments: ``snapshot.now``
is the time, and the new heat and death times are part of the plan.  The state
machine fences every decision on the epoch it was planned against, so a plan
made from a stale snapshot is refused, never applied twice.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from agent.sched.balance import (
    HeatState,
    plan_drain,
    plan_failover,
    plan_rebalance,
    plan_steals,
    settle_heat,
    update_heat,
)
from agent.sched.config import SchedConfig
from agent.sched.messages import Bid
from agent.sched.placement import place_many
from agent.sched.snapshot import ClusterSnapshot, Move, MoveReason, TaskView, bump_queued

MAX_DECISIONS_PER_ROUND: Final = 1024
"""Decisions one round may propose (default 1024).  Bounds a round's work and the
burst it puts into the log; a round that reaches it is followed at once by the next."""
MAX_INFLIGHT_DECISIONS: Final = 4096
"""Decisions proposed and not yet committed, over all overlapping rounds (default
4096).  When the log falls this far behind, rounds plan nothing until it catches up."""


@dataclass(frozen=True, slots=True)
class FailNode:
    """A host dead past the lease: its tasks go to ``targets`` (task id → host), the
    rest back to the queue (or lost when out of retries: the state machine decides)."""

    node: str
    targets: Mapping[str, str]

    @property
    def key(self) -> str:
        """What the decision is about (held in ``busy`` until it commits)."""
        return self.node


@dataclass(frozen=True, slots=True)
class Assign:
    """A queued task placed on ``node`` at ``epoch`` (its epoch + 1)."""

    task: str
    node: str
    epoch: int

    @property
    def key(self) -> str:
        return self.task


@dataclass(frozen=True, slots=True)
class Migrate:
    """A task moved to ``to``; ``epoch`` is the one it was planned against (fenced)."""

    task: str
    to: str
    reason: MoveReason
    epoch: int

    @property
    def key(self) -> str:
        return self.task


Decision = FailNode | Assign | Migrate


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """What one round decided, and the policy state to carry into the next."""

    decisions: tuple[Decision, ...]
    """To propose in this order (already capped)."""
    heat: HeatState
    dead_since: Mapping[str, float]
    """Node id → when the leader first saw it dead; alive nodes are dropped."""
    backlog: bool
    """The cap was reached: run the next round without waiting."""


def room_for(busy: Collection[str], max_inflight: int = MAX_INFLIGHT_DECISIONS) -> int:
    """How many more decisions may be in flight."""
    return max_inflight - len(busy)


def needs_bids(
    snapshot: ClusterSnapshot, busy: Collection[str], max_inflight: int = MAX_INFLIGHT_DECISIONS
) -> bool:
    """Will ``plan_round`` place anything (so bids are worth asking for)?"""
    if room_for(busy, max_inflight) <= 0 or not snapshot.any_schedulable():
        return False  # (every host drained or dead: ``placements`` tries nothing)
    # Newest first: the decisions in flight are for the oldest queued tasks, so
    # under a backlog the first task looked at answers.
    return any(t.id not in busy for t in reversed(snapshot.queued()))


def plan_round(
    snapshot: ClusterSnapshot,
    heat: HeatState,
    config: SchedConfig,
    dead_since: Mapping[str, float],
    busy: Collection[str],
    lease: float,
    bids: Mapping[str, Bid] | None,
    *,
    placing: Mapping[str, str] | None = None,
    max_decisions: int = MAX_DECISIONS_PER_ROUND,
    max_inflight: int = MAX_INFLIGHT_DECISIONS,
) -> RoundPlan:
    """One leader round (module docstring): failover, placement, then moves.

    ``bids`` maps node id → its bid for this round (``None``: none asked; every
    auction is scored from gossiped figures).  ``lease`` is in seconds.
    ``placing`` maps task id → node of placements proposed and not yet committed
    (``count_placing``).
    """
    room = room_for(busy, max_inflight)
    if room <= 0:  # the log is behind: let earlier decisions commit first
        return RoundPlan((), heat, dict(dead_since), False)
    if placing:
        snapshot, bids = count_placing(snapshot, bids, placing)
    deaths = track_deaths(snapshot, dead_since)
    decisions: list[Decision] = failovers(snapshot, config, deaths, busy, lease)
    # Each step sees the hosts as the steps before it left them (``landing``): a host
    # a failover or placement just filled has no free slot for a steal or rebalance.
    snapshot, bids = count_on_hosts(snapshot, bids, landing(decisions))
    placed = placements(snapshot, config, busy, bids, max_decisions)
    snapshot, _ = count_on_hosts(snapshot, None, landing(placed))
    decisions.extend(placed)
    limit = min(max_decisions, room)
    moves, heat = plan_moves(snapshot, heat, config, limit - len(decisions), busy)
    decisions.extend(migrations(moves, busy))
    # A full round of decisions means more may be waiting; a backlog that cannot
    # be placed yields fewer, so an unplaceable queue does not spin.
    return RoundPlan(tuple(decisions[:limit]), heat, deaths, len(decisions) >= limit)


def count_placing(
    snapshot: ClusterSnapshot, bids: Mapping[str, Bid] | None, placing: Mapping[str, str]
) -> tuple[ClusterSnapshot, Mapping[str, Bid] | None]:
    """The snapshot and bids with the placements still in flight counted in their hosts'
    queues: a round that runs before an earlier round's ``task.place`` is applied (a
    submit wakes one at once) would otherwise see those hosts emptier than they are
    and pile new tasks onto them.  A placement counts only while the snapshot still
    shows its task queued (once applied, the state and the hosts' bids count it)."""
    extra: dict[str, int] = {}
    for task in snapshot.queued():
        node = placing.get(task.id)
        if node is not None:
            extra[node] = extra.get(node, 0) + 1
    return count_on_hosts(snapshot, bids, extra)


def landing(decisions: Iterable[Decision]) -> dict[str, int]:
    """Host → how many tasks ``decisions`` put on it (failover targets and placements)."""
    extra: dict[str, int] = {}
    for d in decisions:
        if isinstance(d, FailNode):
            targets: Iterable[str] = d.targets.values()
        else:
            targets = (d.node,) if isinstance(d, Assign) else (d.to,)
        for node in targets:
            extra[node] = extra.get(node, 0) + 1
    return extra


def count_on_hosts(
    snapshot: ClusterSnapshot, bids: Mapping[str, Bid] | None, extra: Mapping[str, int]
) -> tuple[ClusterSnapshot, Mapping[str, Bid] | None]:
    """The snapshot and bids with ``extra[host]`` more tasks in each host's queue."""
    if not extra:
        return snapshot, bids
    nodes = [bump_queued(n, extra[n.id]) if n.id in extra else n for n in snapshot.nodes]
    if bids:
        bids = {
            node: replace(bid, queued=bid.queued + extra[node]) if node in extra else bid
            for node, bid in bids.items()
        }
    return snapshot.with_nodes(nodes), bids


def track_deaths(snapshot: ClusterSnapshot, dead_since: Mapping[str, float]) -> dict[str, float]:
    """``dead_since`` after this snapshot: alive nodes dropped, newly dead ones at ``now``.
    Nodes the snapshot does not show (left the cluster) keep their entry."""
    deaths = dict(dead_since)
    for node in snapshot.nodes:
        if node.alive:
            deaths.pop(node.id, None)
        else:
            deaths.setdefault(node.id, snapshot.now)
    return deaths


def failovers(
    snapshot: ClusterSnapshot,
    config: SchedConfig,
    deaths: Mapping[str, float],
    busy: Collection[str],
    lease: float,
) -> list[Decision]:
    """A ``FailNode`` per host dead for at least ``lease`` seconds that still holds tasks."""
    out: list[Decision] = []
    for node in snapshot.nodes:
        if node.alive or node.id in busy:
            continue
        if snapshot.now - deaths[node.id] < lease or not snapshot.tasks_on(node.id):
            continue
        moves = plan_failover(snapshot, node.id, config)
        out.append(FailNode(node.id, {mv.task: mv.to for mv in moves if mv.to is not None}))
    return out


def waiting_to_place(
    snapshot: ClusterSnapshot, busy: Collection[str], cap: int
) -> list[TaskView]:
    """The queued tasks this round places: not busy, the first ``cap`` in ``place_many``'s
    order (so a deep backlog is not sorted or scored past what can be proposed)."""
    queued = [t for t in snapshot.queued() if t.id not in busy]
    if len(queued) > cap:
        queued.sort(key=lambda t: (-t.priority, t.created_at, t.id))
        queued = queued[:cap]
    return queued


def placements(
    snapshot: ClusterSnapshot,
    config: SchedConfig,
    busy: Collection[str],
    bids: Mapping[str, Bid] | None,
    cap: int,
) -> list[Decision]:
    """An ``Assign`` for each placeable queued task (one with no eligible host waits)."""
    if not snapshot.any_schedulable():
        return []  # every host drained or dead: nothing can be placed, nothing is tried
    queued = waiting_to_place(snapshot, busy, cap)
    if not queued:
        return []
    by_id = {t.id: t for t in queued}
    per_task = {t.id: bids for t in queued} if bids else None
    return [
        Assign(p.task, p.node, by_id[p.task].epoch + 1)
        for p in place_many(queued, snapshot, config, per_task)
        if p.node is not None
    ]


def plan_moves(
    snapshot: ClusterSnapshot,
    heat: HeatState,
    config: SchedConfig,
    budget: int | None = None,
    busy: Collection[str] = (),
) -> tuple[list[Move], HeatState]:
    """Drain, steal and rebalance moves (in that order) and the heat state after them.

    At most ``budget`` moves are planned (None: no bound), none for a task in
    ``busy``: what the round's cap would cut is not computed (a drained host's deep
    queue costs a round O(budget), not O(queue)), and the heat is settled only for
    rebalance moves that are proposed now or still in flight."""
    moves: list[Move] = []
    room = budget if budget is not None else len(snapshot.tasks)
    for node in snapshot.nodes:
        if node.draining and node.alive and len(moves) < room:
            moves.extend(plan_drain(snapshot, node.id, config, room - len(moves), busy))
    if len(moves) < room:
        moves.extend(m for m in plan_steals(snapshot, config) if m.task not in busy)
    heat = update_heat(heat, snapshot, config)
    rebalance = plan_rebalance(snapshot, heat, config)  # only hot hosts' tasks: cheap
    fresh = [m for m in rebalance if m.task not in busy][: max(0, room - len(moves))]
    # A host that just gave up a running task must read hot for a whole window
    # again before it gives up another (its CPU figure trails the move): the moves
    # proposed now and the ones still in flight (busy) settle it, cut ones do not.
    heat = settle_heat(heat, [m for m in rebalance if m.task in busy] + fresh, snapshot)
    moves.extend(fresh)
    return moves, heat


def migrations(moves: list[Move], busy: Collection[str]) -> list[Decision]:
    """A ``Migrate`` per move with a target, the first per task, none for busy tasks."""
    seen: set[str] = set()
    out: list[Decision] = []
    for mv in moves:
        if mv.task in seen or mv.to is None or mv.task in busy:
            continue
        seen.add(mv.task)
        out.append(Migrate(mv.task, mv.to, mv.reason, mv.epoch))
    return out
