"""The scheduler's view of the replicated tasks, kept up to date from what changed.

Theory of operation: the leader builds a ``ClusterSnapshot`` every scheduling
round, and a round may run after every applied submit (``ApplyResult.placeable``).
Rebuilding the ``TaskView`` of every live task and recounting every host's queue
each round cost O(tasks) -- milliseconds with a few thousand tasks waiting, most
of a busy leader's scheduling time.  Instead ``TaskTable`` notes the id of every
task a command touches (``TaskTable.touch``); ``SchedViews`` adjusts the per-host
counts by each touched task's old and new state and rebuilds only those views,
when the views are next asked for.  The views keep the table's order (submit order: a new task is added at
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
    """Non-terminal tasks as ``TaskView``s, in table order, and per-host counts.

    The counts are kept from the records themselves (every host asks for its own
    count to bid, each round); the views are rebuilt only when asked for (the
    leader's rounds), so a follower never builds one."""

    __slots__ = ("_counted", "_counts", "_stale", "_table", "_tuple", "_views")

    def __init__(self) -> None:
        self._table: TaskTable | None = None
        self._views: dict[str, TaskView] = {}
        self._tuple: tuple[TaskView, ...] = ()
        self._stale: dict[str, None] | None = None
        """Ids whose view may be out of date (ordered: first change first); None: all."""
        self._counts: dict[str, dict[str, int]] = {}
        self._counted: dict[str, tuple[str, str]] = {}
        """Task id -> (count, node) it is counted in now."""

    def tasks(self, table: TaskTable) -> tuple[TaskView, ...]:
        self._refresh(table)
        stale = self._stale
        if stale is None:
            self._views = {t.id: task_view(t) for t in table if not t.terminal}
        elif stale:
            views, records = self._views, table.tasks
            for task_id in stale:
                t = records.get(task_id)
                if t is None or t.terminal:
                    views.pop(task_id, None)
                else:
                    views[task_id] = task_view(t)  # a new id goes last: table order
        else:
            return self._tuple
        self._stale = {}
        self._tuple = tuple(self._views.values())
        return self._tuple

    def node_load(self, table: TaskTable) -> dict[str, dict[str, int]]:
        """Per node id: ``queued`` (assigned, not started) and ``running`` counts (a copy)."""
        self._refresh(table)
        counts = self._counts.items()
        return {node: dict(row) for node, row in counts if row["queued"] or row["running"]}

    def _refresh(self, table: TaskTable) -> None:
        changed = table.take_changes()
        if table is not self._table or changed is None:
            self._table = table
            self._counts, self._counted, self._stale = {}, {}, None
            for t in table:
                self._count(t.id, t)
            return
        if not changed:
            return
        records = table.tasks
        for task_id in changed:
            self._count(task_id, records.get(task_id))
        stale = self._stale
        if stale is not None:
            stale.update(changed)
            if len(stale) > len(records):  # nobody reads the views here: stop keeping ids
                self._stale = None

    def _count(self, task_id: str, t: TaskRecord | None) -> None:
        old = self._counted.pop(task_id, None)
        if old is not None:
            self._counts[old[1]][old[0]] -= 1
        field = _COUNTED.get(t.state) if t is not None else None
        if field is not None and t is not None and t.node is not None:
            row = self._counts.setdefault(t.node, {"queued": 0, "running": 0})
            row[field] += 1
            self._counted[task_id] = (field, t.node)
