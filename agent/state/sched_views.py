"""The scheduler's view of the replicated tasks, kept up to date from what changed.

Theory of operation: the leader builds a ``ClusterSnapshot`` every scheduling
round, and a round may run after every applied submit (``ApplyResult.placeable``).
Rebuilding the ``TaskView`` of every live task and recounting every host's queue
each round cost O(tasks) -- milliseconds with a few thousand tasks waiting, most
of a busy leader's scheduling time.  Instead ``TaskTable`` notes the id of every
task a command touches (``TaskTable.touch``), and ``SchedViews.refresh`` rebuilds
only those views, adjusting the per-host counts by each view's old and new
state.  The views keep the table's order (submit order: a new task is added at
the end, a changed one keeps its place, a finished one leaves), so the result
equals a rebuild from scratch; ``tests/unit/test_state_sched_views.py`` checks
that over random command sequences.  A replaced table (a restored snapshot) or
more changes than ``TaskTable`` keeps count of means a full rebuild.
"""

from __future__ import annotations

from agent.sched.snapshot import Strategy, TaskView
from agent.state.tasks import TaskRecord, TaskTable

_COUNTED = {"assigned": "queued", "running": "running"}
"""Task state -> the per-host count it adds to (``node_load``)."""


def task_view(t: TaskRecord) -> TaskView:
    return TaskView(
        id=t.id,
        state=t.state,
        node=t.node,
        caps=frozenset(t.caps),
        key=t.key,
        strategy=Strategy(t.strategy),
        priority=t.priority,
        restartable=t.restartable,
        epoch=t.epoch,
        load_moves=t.load_moves,
        last_move_at=t.last_move_at,
        created_at=t.created_at,
    )


class SchedViews:
    """Non-terminal tasks as ``TaskView``s, in table order, and per-host counts."""

    __slots__ = ("_counts", "_table", "_tuple", "_views")

    def __init__(self) -> None:
        self._table: TaskTable | None = None
        self._views: dict[str, TaskView] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._tuple: tuple[TaskView, ...] = ()

    def tasks(self, table: TaskTable) -> tuple[TaskView, ...]:
        self._refresh(table)
        return self._tuple

    def node_load(self, table: TaskTable) -> dict[str, dict[str, int]]:
        """Per node id: ``queued`` (assigned, not started) and ``running`` counts (a copy)."""
        self._refresh(table)
        counts = self._counts.items()
        return {node: dict(row) for node, row in counts if row["queued"] or row["running"]}

    def _refresh(self, table: TaskTable) -> None:
        changed = table.take_changes()
        if table is not self._table or changed is None:
            self._rebuild(table)
        elif changed:
            for task_id in changed:
                self._update(task_id, table.tasks.get(task_id))
            self._tuple = tuple(self._views.values())

    def _rebuild(self, table: TaskTable) -> None:
        self._table = table
        self._views = {}
        self._counts = {}
        for t in table:
            self._update(t.id, t)
        self._tuple = tuple(self._views.values())

    def _update(self, task_id: str, t: TaskRecord | None) -> None:
        old = self._views.get(task_id)
        if old is not None:
            self._count(old, -1)
        if t is None or t.terminal:
            self._views.pop(task_id, None)
            return
        view = self._views[task_id] = task_view(t)  # a new id goes last: table order
        self._count(view, 1)

    def _count(self, view: TaskView, delta: int) -> None:
        field = _COUNTED.get(view.state)
        if field is not None and view.node is not None:
            row = self._counts.setdefault(view.node, {"queued": 0, "running": 0})
            row[field] += delta
