"""Moving work between hosts: work stealing, hot→cold rebalance, failover, drain.

Theory of operation: the leader calls these planners on a fresh
``ClusterSnapshot`` every scheduling round and proposes each returned ``Move``
as a ``task.migrate`` (or ``task.fail_node``) command; the state machine fences
each move on the epoch it was planned against, so a stale plan is a no-op.

* Stealing: a host with a free slot and CPU < 0.3 (a *thief*) takes waiting
  tasks from the host with the longest queue, but only while the victim's
  queue exceeds the thief's by at least ``steal_margin`` (≥ 2).  After a move
  the difference has shrunk by 2, so the reverse move can never qualify: tasks
  do not bounce.
* Rebalance: smoothed CPU > 0.8 held for ``hot_window`` seconds makes a host
  hot; it stays hot until its CPU drops below 0.7 (hysteresis).  Waiting tasks
  of hot hosts move to cold hosts (CPU < 0.3) with free slots; a running task
  moves only when restartable, at most one per hot host per round.
* Load-driven moves are rate-limited per task: at most ``max_moves_per_task``
  in a lifetime and ``min_move_interval`` seconds apart.  Failover and drain
  ignore the limit: the work has to go somewhere.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace

from agent.errors import SchedulingError
from agent.sched.config import SchedConfig
from agent.sched.placement import is_eligible, place, ring_for
from agent.sched.snapshot import (
    ClusterSnapshot,
    Move,
    MoveReason,
    NodeView,
    TaskView,
    bump_queued,
)


def may_move(task: TaskView, now: float, cfg: SchedConfig) -> bool:
    """The per-task rate limit for load-driven moves."""
    if task.load_moves >= cfg.max_moves_per_task:
        return False
    return task.last_move_at is None or now - task.last_move_at >= cfg.min_move_interval


def _steal_order(task: TaskView) -> tuple[int, float, str]:
    # Take the task that would wait longest on the victim: lowest priority, newest.
    return (task.priority, -task.created_at, task.id)


def _waiting_queues(snapshot: ClusterSnapshot) -> dict[str, list[TaskView]]:
    queues: dict[str, list[TaskView]] = {}
    for task in snapshot.tasks:
        if task.waiting_on_node and task.node is not None:
            queues.setdefault(task.node, []).append(task)
    for queue in queues.values():
        queue.sort(key=_steal_order)
    return queues


def plan_steals(snapshot: ClusterSnapshot, cfg: SchedConfig | None = None) -> list[Move]:
    """Moves that let idle hosts take waiting work from the busiest host."""
    cfg = cfg or SchedConfig()
    nodes = {n.id: n for n in snapshot.nodes}
    if not any(_may_steal(n, cfg) for n in nodes.values()):
        return []  # no thief: spare the O(tasks) queues (only a move makes a new one)
    queues = _waiting_queues(snapshot)
    moves: list[Move] = []
    while len(moves) < cfg.max_moves_per_round:
        move = _one_steal(nodes, queues, snapshot.now, cfg)
        if move is None:
            break
        moves.append(move)
        assert move.src is not None and move.to is not None
        nodes[move.src] = bump_queued(nodes[move.src], -1)
        nodes[move.to] = bump_queued(nodes[move.to], 1)
    return moves


def _may_steal(node: NodeView, cfg: SchedConfig) -> bool:
    """A thief: schedulable, a free slot, CPU below ``steal_cpu_below``."""
    return node.schedulable and node.free_slots > 0 and node.cpu < cfg.steal_cpu_below


def _one_steal(
    nodes: dict[str, NodeView], queues: dict[str, list[TaskView]], now: float, cfg: SchedConfig
) -> Move | None:
    thieves = sorted(
        (n for n in nodes.values() if _may_steal(n, cfg)), key=lambda n: (n.queued, n.cpu, n.id)
    )
    victims = sorted((n for n in nodes.values() if n.alive), key=lambda n: (-n.queued, n.id))
    for thief in thieves:
        for victim in victims:
            if victim.queued - thief.queued < cfg.steal_margin:
                break  # victims are sorted longest queue first
            if victim.id == thief.id:
                continue
            queue = queues.get(victim.id, [])
            for i, task in enumerate(queue):
                if may_move(task, now, cfg) and is_eligible(task, thief, cfg):
                    del queue[i]
                    return Move(task.id, victim.id, thief.id, MoveReason.STEAL, task.epoch)
    return None


@dataclass(frozen=True, slots=True)
class HeatState:
    """Which hosts are hot, and since when each has been above ``hot_above``."""

    since: dict[str, float] = field(default_factory=dict)
    hot: frozenset[str] = frozenset()

    def hot_for(self, node_id: str, now: float) -> float:
        """Seconds the node has been hot (0 if it is not)."""
        if node_id not in self.hot:
            return 0.0
        return max(0.0, now - self.since.get(node_id, now))


def update_heat(
    prev: HeatState, snapshot: ClusterSnapshot, cfg: SchedConfig | None = None
) -> HeatState:
    """The next heat state from the previous one and a fresh snapshot (pure)."""
    cfg = cfg or SchedConfig()
    now = snapshot.now
    since: dict[str, float] = {}
    hot: set[str] = set()
    for node in snapshot.nodes:
        if not node.alive:
            continue
        if node.id in prev.hot:
            if node.cpu >= cfg.hot_exit_below:  # hysteresis: stay hot until < 0.7
                hot.add(node.id)
                since[node.id] = prev.since.get(node.id, now)
            continue
        if node.cpu > cfg.hot_above:
            start = prev.since.get(node.id, now)
            since[node.id] = start
            if now - start >= cfg.hot_window:
                hot.add(node.id)
    return HeatState(since, frozenset(hot))


def plan_rebalance(
    snapshot: ClusterSnapshot, heat: HeatState, cfg: SchedConfig | None = None
) -> list[Move]:
    """Moves from confirmed-hot hosts to cold hosts (reason ``hot-cold``)."""
    cfg = cfg or SchedConfig()
    nodes = {n.id: n for n in snapshot.nodes}
    hot_nodes = sorted(
        (n for n in snapshot.nodes if n.id in heat.hot and n.alive), key=lambda n: (-n.cpu, n.id)
    )
    moves: list[Move] = []
    for hot in hot_nodes:
        on_host = snapshot.tasks_on(hot.id)
        waiting = sorted((t for t in on_host if t.waiting_on_node), key=_steal_order)
        running = sorted(
            (t for t in on_host if t.state == "running" and t.restartable), key=_steal_order
        )
        moved_running = False
        for task in waiting + running:
            if len(moves) >= cfg.max_moves_per_round:
                return moves
            if task.state == "running" and moved_running:
                break
            if not may_move(task, snapshot.now, cfg):
                continue
            target = _coldest(task, nodes, cfg)
            if target is None:
                continue
            moves.append(Move(task.id, hot.id, target.id, MoveReason.HOT_COLD, task.epoch))
            nodes[target.id] = bump_queued(target, 1)
            moved_running = moved_running or task.state == "running"
    return moves


def settle_heat(heat: HeatState, moves: list[Move], snapshot: ClusterSnapshot) -> HeatState:
    """The heat state after ``moves``: a host that just gave up a *running* task
    must read hot for a whole ``hot_window`` again before it gives up another.

    Its CPU figure is a smoothed, gossiped reading that trails a move by a few
    seconds; without this, one round after moving a burner off a host the host
    still reads hot and would lose its next running task too, overshooting from
    hot to idle (queued moves do not change CPU now, so they do not settle it).
    """
    hot_cold = [m for m in moves if m.src is not None and m.reason is MoveReason.HOT_COLD]
    if not hot_cold:  # the usual round: no pass over every task
        return heat
    running = {t.id for t in snapshot.tasks if t.state == "running"}
    settled = {m.src for m in hot_cold if m.src is not None and m.task in running}
    if not settled:
        return heat
    since = {n: t for n, t in heat.since.items() if n not in settled}
    since.update(dict.fromkeys(settled, snapshot.now))
    return HeatState(since, heat.hot - settled)


def _coldest(task: TaskView, nodes: dict[str, NodeView], cfg: SchedConfig) -> NodeView | None:
    cold = [
        n
        for n in nodes.values()
        if n.cpu < cfg.cold_below and n.free_slots > 0 and is_eligible(task, n, cfg)
    ]
    return min(cold, key=lambda n: (round(n.cpu, 6), n.load, n.id)) if cold else None


def _evacuate(
    snapshot: ClusterSnapshot,
    node_id: str,
    tasks: list[TaskView],
    reason: MoveReason,
    cfg: SchedConfig,
    limit: int | None = None,
) -> list[Move]:
    """Place ``tasks`` (all on ``node_id``) elsewhere by their own strategies; at most
    ``limit`` of them get a target (None: all may), the rest are not looked at."""
    nodes = {
        n.id: (
            replace(n, alive=False)
            if n.id == node_id and reason is MoveReason.FAILOVER
            else replace(n, draining=True)
            if n.id == node_id
            else n
        )
        for n in snapshot.nodes
    }
    order = sorted(tasks, key=lambda t: (-t.priority, t.created_at, t.id))
    working = snapshot.with_nodes(nodes.values())
    if not working.any_schedulable():
        # Nowhere to go (every other host drained or dead): no task can be placed, so
        # none is tried -- a drained cluster with a deep queue would otherwise pay a
        # failed placement per waiting task every round.
        return [Move(t.id, node_id, None, reason, t.epoch) for t in order]
    ring = ring_for(snapshot, cfg)
    moves: list[Move] = []
    placed = 0
    for task in order:
        if limit is not None and placed >= limit:
            break
        try:
            target: str | None = place(task, working, cfg, None, ring)
        except SchedulingError:
            target = None
        moves.append(Move(task.id, node_id, target, reason, task.epoch))
        if target is not None:
            placed += 1
            nodes[target] = bump_queued(nodes[target], 1)
            working = snapshot.with_nodes(nodes.values())
    return moves


def plan_failover(
    snapshot: ClusterSnapshot, dead_node: str, cfg: SchedConfig | None = None
) -> list[Move]:
    """Where each assigned or running task of a dead host goes (``to=None``: back to the
    global queue, no host fits).  Rate limits do not apply."""
    cfg = cfg or SchedConfig()
    tasks = [t for t in snapshot.tasks_on(dead_node) if t.state in ("assigned", "running")]
    return _evacuate(snapshot, dead_node, tasks, MoveReason.FAILOVER, cfg)


def plan_drain(
    snapshot: ClusterSnapshot,
    node_id: str,
    cfg: SchedConfig | None = None,
    limit: int | None = None,
    skip: Collection[str] = (),
) -> list[Move]:
    """Moves for the waiting tasks of a draining host; its running tasks finish in place.
    At most ``limit`` moves (None: every task that fits elsewhere); tasks in ``skip``
    (a decision already in flight for them) are left for a later round."""
    cfg = cfg or SchedConfig()
    if not snapshot.any_schedulable(excluding=node_id):
        return []  # nowhere to go (see _evacuate)
    tasks = [t for t in snapshot.tasks_on(node_id) if t.waiting_on_node and t.id not in skip]
    return [m for m in _evacuate(snapshot, node_id, tasks, MoveReason.DRAIN, cfg, limit) if m.to]
