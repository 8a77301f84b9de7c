"""The read-only view of the cluster every placement policy works on.

The leader's runtime builds a ``ClusterSnapshot`` from SWIM metadata (CPU,
memory, slots, capabilities, liveness) and the replicated state (tasks, drain
flags, per-host history) and hands it to the pure functions of ``agent.sched``.
Nothing here reads the clock: ``now`` is a field.

A node's *queue* is the tasks assigned to it that have not started yet; a task
in the global ``queued`` state is not on any node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Strategy(StrEnum):
    """How a task picks its host."""

    AUCTION = "auction"
    CAPABILITY = "capability"
    HASH = "hash"


class MoveReason(StrEnum):
    """Why a task moved; recorded with every migration."""

    STEAL = "steal"
    HOT_COLD = "hot-cold"
    FAILOVER = "failover"
    DRAIN = "drain"


@dataclass(frozen=True, slots=True)
class NodeView:
    """One host as the scheduler sees it."""

    id: str
    name: str = ""
    alive: bool = True
    draining: bool = False
    caps: frozenset[str] = frozenset()
    slots: int = 1
    running: int = 0
    """Tasks running on the host now."""
    queued: int = 0
    """Tasks assigned to the host that have not started (its local queue)."""
    cpu: float = 0.0
    """Smoothed CPU load, 0..1."""
    mem_free: float = 1.0
    """Free memory as a fraction of total, 0..1."""
    success_rate: float = 1.0
    """Fraction of tasks that succeeded on this host (1.0 without history)."""
    mean_duration: float | None = None
    """Mean wall-clock seconds of tasks finished on this host, None without history."""

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self.running - self.queued)

    @property
    def load(self) -> float:
        """Tasks on the host per slot (running + queued) / slots."""
        return (self.running + self.queued) / max(1, self.slots)

    @property
    def schedulable(self) -> bool:
        return self.alive and not self.draining


@dataclass(frozen=True, slots=True)
class TaskView:
    """One task as the scheduler sees it."""

    id: str
    state: str = "queued"
    node: str | None = None
    caps: frozenset[str] = frozenset()
    key: str | None = None
    strategy: Strategy = Strategy.AUCTION
    priority: int = 0
    restartable: bool = False
    epoch: int = 0
    load_moves: int = 0
    """Load-driven moves (steal, hot-cold) made so far; rate-limited."""
    last_move_at: float | None = None
    created_at: float = 0.0

    @property
    def waiting_on_node(self) -> bool:
        """Assigned to a node that has not started it: stealable."""
        return self.state == "assigned" and self.node is not None


@dataclass(frozen=True, slots=True)
class Move:
    """A planned migration; ``to=None`` sends the task back to the global queue."""

    task: str
    src: str | None
    to: str | None
    reason: MoveReason
    epoch: int
    """The task's epoch the plan was made against (the state machine fences on it)."""


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Nodes and tasks at one instant ``now`` (seconds, the leader's clock)."""

    nodes: tuple[NodeView, ...]
    tasks: tuple[TaskView, ...] = ()
    now: float = 0.0
    _by_id: dict[str, NodeView] = field(default_factory=dict, compare=False, repr=False)
    cache: dict[object, object] = field(default_factory=dict, compare=False, repr=False)
    """Derived data policies keep with the snapshot (e.g. auction base scores per config);
    valid because a snapshot never changes."""

    def __post_init__(self) -> None:
        self._by_id.update((n.id, n) for n in self.nodes)

    def node(self, node_id: str) -> NodeView | None:
        return self._by_id.get(node_id)

    def any_schedulable(self, excluding: str = "") -> bool:
        """Can any node (other than ``excluding``) take a task at all?  When none can,
        a round tries no placement and no drain move (every host drained or dead)."""
        return any(n.schedulable for n in self.nodes if n.id != excluding)

    def tasks_on(self, node_id: str) -> list[TaskView]:
        return [t for t in self.tasks if t.node == node_id]

    def queued(self) -> tuple[TaskView, ...]:
        """The tasks in the global queue (state ``queued``), in snapshot order: found
        once per snapshot (one pass over every task) and kept in ``cache``, so a round's
        placement steps look at the few queued tasks, not at every task again."""
        found = self.cache.get(_QUEUED)
        if not isinstance(found, tuple):
            found = self.cache[_QUEUED] = tuple(t for t in self.tasks if t.state == "queued")
        return found

    def note_queued(self, queued: tuple[TaskView, ...]) -> None:
        """Keep ``queued`` as what ``queued()`` answers: the caller kept the queued tasks
        of ``tasks`` (in the same order) and spares the round its pass over every task."""
        self.cache[_QUEUED] = queued

    def with_nodes(self, nodes: Iterable[NodeView]) -> ClusterSnapshot:
        """The same tasks and time with other node views (derived task data kept)."""
        snapshot = ClusterSnapshot(tuple(nodes), self.tasks, self.now)
        if _QUEUED in self.cache:
            snapshot.cache[_QUEUED] = self.cache[_QUEUED]
        return snapshot


_QUEUED = "queued"
"""``ClusterSnapshot.cache`` key of the queued tasks (they depend on the tasks only)."""


def bump_queued(node: NodeView, delta: int) -> NodeView:
    """The node after ``delta`` more (or fewer) tasks landed in its queue."""
    return replace(node, queued=max(0, node.queued + delta))
