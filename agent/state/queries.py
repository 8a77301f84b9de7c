"""Read-only views of the state for the runtime, the control API and the CLI.

Reads never change the state; they are answered from the local replica after
a ReadIndex (linearizable) or directly (``stale``) by the caller's choice.
"""

from __future__ import annotations

from typing import Any

from agent.sched.snapshot import TaskView
from agent.state.kv import DEFAULT_LIST_LIMIT, KvEntry, KvStore
from agent.state.proposals import Proposal
from agent.state.sched_views import SchedViews
from agent.state.tasks import TERMINAL, TaskRecord, TaskTable

STATUS_GROUPS = {
    "queued": ("queued", "assigned"),
    "running": ("running",),
    "done": ("succeeded",),
    "failed": ("failed", "lost"),
    "cancelled": ("cancelled",),
}
"""How task states roll up into the ``status --json`` ``tasks`` counts."""


class Queries:
    """Mixed into ``StateMachine``; expects the attributes declared below."""

    kv: KvStore
    proposals: dict[int, Proposal]
    nodes: dict[str, dict[str, Any]]
    tasks: TaskTable

    # ------------------------------------------------------------ nodes

    def name_of(self, node_id: str) -> str:
        """The node's registered name, or its id when it never registered."""
        entry = self.nodes.get(node_id)
        return str(entry["name"]) if entry and entry["name"] else node_id

    def registered_name(self, node_id: str) -> str | None:
        """The name the node registered with, None if it never registered."""
        name: str | None = self.nodes.get(node_id, {}).get("name")
        return name

    def resolve_node(self, id_or_name: str) -> str | None:
        """A node id from an id or a registered name (ids win; names are matched in id order)."""
        if id_or_name in self.nodes:
            return id_or_name
        for node_id in sorted(self.nodes):
            if self.nodes[node_id]["name"] == id_or_name:
                return node_id
        return None

    def is_draining(self, node_id: str) -> bool:
        entry = self.nodes.get(node_id)
        return bool(entry and entry["draining"])

    def node_rows(self) -> list[dict[str, Any]]:
        return [
            {"id": node_id, "name": entry["name"], "draining": entry["draining"]}
            for node_id, entry in sorted(self.nodes.items())
        ]

    # ------------------------------------------------------------ kv

    def kv_get(self, ns: str, key: str, now: float | None = None) -> KvEntry | None:
        """The entry; with ``now`` (the reader's clock), None once its TTL has passed."""
        return self.kv.get(ns, key, now)

    def kv_list(
        self, ns: str, prefix: str = "", limit: int = DEFAULT_LIST_LIMIT, now: float | None = None
    ) -> list[list[Any]]:
        """``[[key, value], ...]`` sorted by key, as ``kv.list`` returns it."""
        return [[k, v] for k, v in self.kv.scan(ns, prefix, limit, now)]

    def kv_search(
        self, ns: str, pattern: str, now: float | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[list[Any]]:
        """``[[key, value], ...]`` of the keys matching a glob or prefix (``KvStore.search``)."""
        return [[k, v] for k, v in self.kv.search(ns, pattern, limit, now)]

    def kv_due(self, now: float, limit: int) -> dict[str, list[str]]:
        """Keys whose TTL has passed at ``now``, by namespace (the leader expires them)."""
        return self.kv.due(now, limit)

    # ------------------------------------------------------------ proposals

    def proposal_rows(self) -> list[dict[str, Any]]:
        return [p.row() for p in self.proposals.values()]

    def proposal(self, proposal_id: int) -> Proposal | None:
        return self.proposals.get(proposal_id)

    def vote_participation(self) -> float | None:
        """Mean participation over decided and open proposals (None without any)."""
        if not self.proposals:
            return None
        return sum(p.participation for p in self.proposals.values()) / len(self.proposals)

    # ------------------------------------------------------------ tasks

    def task_rows(self) -> list[dict[str, Any]]:
        """``tasks --json`` rows: id, state, node, epoch, attempts, migrations, exit_code, cmd."""
        return [self.tasks.row(t) for t in self.tasks]

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The full record of one task (``task.get``), or None if unknown."""
        record = self.tasks.tasks.get(task_id)
        return self.tasks.record(record) if record is not None else None

    def task_record(self, task_id: str) -> TaskRecord | None:
        return self.tasks.tasks.get(task_id)

    def task_counts(self) -> dict[str, int]:
        """Tasks per state (every state present, zero when empty)."""
        counts = dict.fromkeys(("queued", "assigned", "running", *sorted(TERMINAL)), 0)
        for t in self.tasks:
            counts[t.state] += 1
        return counts

    def status_counts(self) -> dict[str, int]:
        """``status --json`` ``tasks``: ``{queued, running, done, failed, cancelled}``."""
        by_state = self.task_counts()
        return {group: sum(by_state[s] for s in states) for group, states in STATUS_GROUPS.items()}

    def node_load(self) -> dict[str, dict[str, int]]:
        """Per node id: ``queued`` (assigned, not started) and ``running`` task counts."""
        return self._views().node_load(self.tasks)

    def tasks_for_node(self, node_id: str) -> list[TaskRecord]:
        """What a host's executor must act on: its assigned and running tasks, and
        cancelled ones it may still be running (to kill)."""
        return self.tasks.for_node(node_id)

    def node_perf(self, node_id: str) -> tuple[float, float | None]:
        """``(success_rate, mean_duration)`` of tasks finished on the host: (1.0, None) without
        history."""
        finished, succeeded, seconds = self.tasks.node_stats.get(node_id, (0, 0, 0.0))
        if not finished:
            return 1.0, None
        return succeeded / finished, seconds / finished

    def sched_tasks(self) -> tuple[TaskView, ...]:
        """Non-terminal tasks as the scheduler sees them (for ``ClusterSnapshot.tasks``),
        in submit order.  The leader asks every scheduling round; only the views of
        tasks touched since the last call are rebuilt (``sched_views.py``)."""
        return self._views().tasks(self.tasks)

    def sched_queued(self) -> tuple[TaskView, ...]:
        """The tasks of ``sched_tasks`` in state ``queued``, in the same order (kept with
        the views: a round need not look at every task to find the queue)."""
        return self._views().queued(self.tasks)

    def _views(self) -> SchedViews:
        views: SchedViews | None = getattr(self, "_sched_views", None)
        if views is None:
            views = self._sched_views = SchedViews()
        return views

    def decision_latencies(self) -> list[float]:
        """Seconds from submit to first committed assignment, most recent last (bounded)."""
        return list(self.tasks.latencies)

    def migration_times(self) -> list[float]:
        """Leader times of committed migrations, most recent last (bounded)."""
        return list(self.tasks.migration_times)
