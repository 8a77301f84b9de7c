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

The queued views (the global queue) are kept apart as well, in the same order
(``queued``): each round's placement steps start from the queue, and finding it
by a pass over every task's view cost O(tasks) a round again.  A task that comes
back to the queue (a requeue) may belong before later ones: the next read then
restores the order from the views.
"""

from __future__ import annotations

from agent.sched.snapshot import Strategy, TaskView
from agent.state.tasks import TaskRecord, TaskTable

_COUNTED = {"assigned": "queued", "running": "running"}
"""Task state -> the per-host count it adds to (``node_load``)."""


_STRATEGIES = {str(s): s for s in Strategy}
_NO_CAPS: frozenset[str] = frozenset()


def task_view(t: TaskRecord) -> TaskView:
    # Positional, a shared empty caps set and a dict lookup of the strategy: built for
    # every task a command touched, each round (an unknown strategy still raises).
    strategy = _STRATEGIES.get(t.strategy) or Strategy(t.strategy)
    return TaskView(
        t.id, t.state, t.node, frozenset(t.caps) if t.caps else _NO_CAPS, t.key, strategy,
        t.priority, t.restartable, t.epoch, t.load_moves, t.last_move_at, t.created_at,
    )


class SchedViews:
    """Non-terminal tasks as ``TaskView``s, in table order, and per-host counts.

    The counts are kept from the records themselves (every host asks for its own
    count to bid, each round); the views are rebuilt only when asked for (the
    leader's rounds), so a follower never builds one."""

    __slots__ = (
        "_counted", "_counts", "_queued", "_queued_tuple", "_stale", "_table", "_tuple",
        "_unordered", "_views",
    )  # fmt: skip

    def __init__(self) -> None:
        self._table: TaskTable | None = None
        self._views: dict[str, TaskView] = {}
        self._tuple: tuple[TaskView, ...] = ()
        self._queued: dict[str, TaskView] = {}
        """The views in state ``queued`` (the global queue), in table order unless
        ``_unordered``: kept with the views, so a round need not scan every task."""
        self._queued_tuple: tuple[TaskView, ...] | None = ()
        self._unordered = False
        """A task came back to the queue (a requeue) behind later ones: the next
        ``queued`` restores table order from the views."""
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
            self._queued = {i: v for i, v in self._views.items() if v.state == "queued"}
            self._unordered = False
        elif stale:
            views, records, queued = self._views, table.tasks, self._queued
            for task_id in stale:
                t = records.get(task_id)
                if t is None or t.terminal:
                    views.pop(task_id, None)
                    queued.pop(task_id, None)
                    continue
                view = task_view(t)
                if view.state == "queued":
                    if task_id not in queued and task_id in views:
                        self._unordered = True  # back in the queue: not necessarily last
                    queued[task_id] = view
                else:
                    queued.pop(task_id, None)
                views[task_id] = view  # a new id goes last: table order
        else:
            return self._tuple
        self._stale = {}
        self._tuple = tuple(self._views.values())
        self._queued_tuple = None
        return self._tuple

    def queued(self, table: TaskTable) -> tuple[TaskView, ...]:
        """The views of ``tasks`` in state ``queued``, in the same order (what
        ``ClusterSnapshot.queued`` finds by a pass over every task)."""
        self.tasks(table)
        found = self._queued_tuple
        if found is None:
            if self._unordered:
                self._queued = {i: v for i, v in self._views.items() if v.state == "queued"}
                self._unordered = False
            found = self._queued_tuple = tuple(self._queued.values())
        return found

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
