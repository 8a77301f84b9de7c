"""Tasks in the replicated state: the lifecycle table, the model and every transition.

Theory of operation: a task is ``queued`` (on no host) until the leader
commits ``task.assign`` to a host; the assignment carries epoch = old epoch + 1
and only the host named at the current epoch may start or finish it.  Every
later move (steal, rebalance, failover, drain) increments the epoch again, so a
host that was cut off and comes back holds a stale epoch: its ``task.start`` or
``task.finish`` is rejected with "stale epoch", and when it sees the newer
epoch it kills its copy.  That fencing is what keeps a task from running twice
at once.

The lifecycle is the table ``TRANSITIONS`` below (state → event → next state,
as h11's ``_state.py``): every change of ``TaskRecord.state`` goes through
``TaskTable._next``, which refuses an event the table does not list for the
task's state.  Guards that depend on more than the state (epoch fencing, a
draining target, a running task that is not restartable, the retry budget
that picks ``retry`` or ``fail``) are checked by the transition methods.

A failed run (non-zero exit or timeout) or losing its host while running
counts one failure; while failures ≤ retries the task is queued again,
otherwise it ends failed (exit) or lost (host).  Terminal tasks are kept up to
``MAX_TERMINAL_TASKS`` (oldest evicted first), so the state stays bounded.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from agent.errors import TaskError
from agent.state.commands import (
    TaskAssign,
    TaskFailNode,
    TaskFinish,
    TaskMigrate,
    TaskPlace,
    TaskStart,
    TaskSubmit,
)

QUEUED: Final = "queued"
"""On no host, waiting for the leader to place it (the state a submitted task starts in)."""
ASSIGNED: Final = "assigned"
"""Placed on ``node`` at ``epoch``; the host has not reported a start yet."""
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
LOST: Final = "lost"
NODE_STATES: Final = frozenset({ASSIGNED, RUNNING, CANCELLED})
"""States in which a task's host acts on it (``TaskTable.for_node``)."""


class TaskEvent(StrEnum):
    """What a committed command does to one task."""

    ASSIGN = "assign"
    """``task.assign``: the leader placed a queued task."""
    START = "start"
    """``task.start``: the host started its run."""
    SUCCEED = "succeed"
    """``task.finish`` with exit code 0, in time."""
    RETRY = "retry"
    """``task.finish`` of a failed run (exit code or timeout) with a retry left."""
    FAIL = "fail"
    """``task.finish`` of a failed run with no retry left."""
    LATE_EXIT = "late_exit"
    """``task.finish`` of a run killed by a cancel: its figures are kept, its state is not."""
    CANCEL = "cancel"
    """``task.cancel``."""
    LOSE = "lose"
    """``task.lost``, or ``task.fail_node`` on a running task with no retry left."""
    MOVE = "move"
    """``task.migrate``, or ``task.fail_node`` with a target: epoch + 1 on another host."""
    REQUEUE = "requeue"
    """``task.fail_node`` without a target: epoch + 1, back to the queue."""


_E = TaskEvent
TRANSITIONS: Final[Mapping[str, Mapping[TaskEvent, str]]] = {
    QUEUED: {
        _E.ASSIGN: ASSIGNED, _E.MOVE: ASSIGNED, _E.CANCEL: CANCELLED, _E.LOSE: LOST,
    },
    ASSIGNED: {
        _E.START: RUNNING,
        # A finish on an assigned task: the start was never committed, the run happened.
        _E.SUCCEED: SUCCEEDED, _E.RETRY: QUEUED, _E.FAIL: FAILED,
        _E.CANCEL: CANCELLED, _E.LOSE: LOST, _E.MOVE: ASSIGNED, _E.REQUEUE: QUEUED,
    },
    RUNNING: {
        _E.SUCCEED: SUCCEEDED, _E.RETRY: QUEUED, _E.FAIL: FAILED,
        _E.CANCEL: CANCELLED, _E.LOSE: LOST,
        # task.migrate moves a running task only when it is restartable (guard);
        # task.fail_node moves it regardless: its host is gone.
        _E.MOVE: ASSIGNED, _E.REQUEUE: QUEUED,
    },
    CANCELLED: {_E.LATE_EXIT: CANCELLED},
    SUCCEEDED: {},
    FAILED: {},
    LOST: {},
}  # fmt: skip
"""state → event → next state; an event missing from a state's row is refused."""

_REFUSED_UNLESS: Final[Mapping[TaskEvent, str]] = {_E.ASSIGN: QUEUED, _E.START: ASSIGNED}
"""Events refused with "is <state>, not <state>"; every other refusal reads "already <state>"."""

MAX_CHANGES = 65_536
"""Touched task ids kept for the scheduler's views (``SchedViews``); past it they are
dropped and the next reader rebuilds everything (a follower never reads them)."""
MAX_TERMINAL_TASKS = 10_000
"""Finished (succeeded/failed/cancelled/lost) tasks kept; older ones are evicted."""
MAX_SAMPLES = 10_000
"""Decision-latency and migration-time samples kept for metrics."""
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, LOST})
LOAD_REASONS = frozenset({"steal", "hot-cold", "rebalance"})
"""Migration reasons that count against a task's move limit."""

Event = dict[str, Any]


@dataclass(slots=True)
class TaskRecord:
    id: str
    argv: list[str] | None
    shell: str | None
    env: dict[str, str]
    cwd: str | None
    caps: list[str]
    key: str | None
    strategy: str
    priority: int
    retries: int
    timeout: float | None
    restartable: bool
    submitter: str
    created_at: float
    state: str = QUEUED
    node: str | None = None
    epoch: int = 0
    attempts: int = 0
    migrations: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    cpu_time: float = 0.0
    peak_rss: int = 0
    timed_out: bool = False
    replicas: list[str] = field(default_factory=list)
    assigned_at: float | None = None
    """First assignment time: decision latency = assigned_at - created_at."""
    load_moves: int = 0
    last_move_at: float | None = None
    reason: str = ""
    """Why the task was lost or last requeued."""
    failures: int = 0
    """Failed runs and lost hosts so far; the task gives up when it exceeds ``retries``.
    (``attempts`` counts every run started, including restarts after a load move.)"""
    mem: int = 0
    """Memory limit of each run, bytes (0: none).  Fields are appended with
    defaults so snapshot rows written before them still load."""
    pids: int = 0
    """Process limit of each run (0: none)."""
    artifacts: list[str] = field(default_factory=list)
    """Files collected from the run's working directory when it ends."""

    @property
    def cmd(self) -> str:
        return shlex.join(self.argv) if self.argv is not None else self.shell or ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def dump(self) -> list[Any]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @classmethod
    def load(cls, row: list[Any]) -> TaskRecord:
        return cls(*row)


class TaskTable:
    """All tasks plus per-host history; ``name_of`` maps a node id to its display name."""

    def __init__(self, name_of: Callable[[str], str]) -> None:
        self.name_of = name_of
        self.tasks: dict[str, TaskRecord] = {}
        self.seq = 0
        self.terminal_order: deque[str] = deque()
        self.node_stats: dict[str, list[Any]] = {}  # node → [finished, succeeded, seconds]
        self.latencies: deque[float] = deque(maxlen=MAX_SAMPLES)
        self.migration_times: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._changes: dict[str, None] | None = {}
        """Ids of the tasks touched since ``take_changes`` (ordered: first touch first);
        None once more than ``MAX_CHANGES``."""
        self._cmds: dict[str, str] = {}
        """Task id -> its ``cmd`` line (``shlex.join`` of a list that never changes),
        joined once for the many event rows of its life; evicted with the task."""
        self._by_node: dict[str, dict[str, None]] = {}
        """Node id -> ids of its tasks a host acts on (``for_node``), in the order they
        came to it; brought up to date from ``_unindexed`` when read."""
        self._indexed_at: dict[str, str] = {}
        """Task id -> the node ``_by_node`` lists it under."""
        self._unindexed: dict[str, None] | None = {}
        """Ids touched since the index was last brought up to date (None: rebuild)."""
        self.rows = True
        """Put the task's ``tasks --json`` row in each ``tasks`` event (False: nobody
        here follows the topic, so the event keeps only its ``kind``, which is all the
        agent's own readers look at; about 3 us a task per node saved)."""

    # ------------------------------------------------------------ queries

    def touch(self, task_id: str) -> None:
        """``task_id``'s record may have changed (or it was added or evicted)."""
        changes = self._changes
        if changes is not None:
            changes[task_id] = None
            if len(changes) > MAX_CHANGES:
                self._changes = None
        unindexed = self._unindexed
        if unindexed is not None:
            unindexed[task_id] = None
            if len(unindexed) > MAX_CHANGES:  # nobody reads the index here: rebuild if asked
                self._unindexed = None

    def for_node(self, node_id: str) -> list[TaskRecord]:
        """What a host's executor must act on: its assigned and running tasks, and
        cancelled ones it may still be running (to kill) -- from an index kept up to
        date with ``touch`` (each read costs what changed since, not every task)."""
        unindexed, self._unindexed = self._unindexed, {}
        if unindexed is None:
            self._by_node.clear()
            self._indexed_at.clear()
            unindexed = dict.fromkeys(self.tasks)
        for task_id in unindexed:
            self._reindex(task_id)
        ids = self._by_node.get(node_id)
        return [self.tasks[i] for i in ids] if ids else []

    def _reindex(self, task_id: str) -> None:
        task = self.tasks.get(task_id)
        node = task.node if task is not None and task.state in NODE_STATES else None
        old = self._indexed_at.get(task_id)
        if old == node:
            return
        if old is not None:
            del self._by_node[old][task_id]
            del self._indexed_at[task_id]
        if node is not None:
            self._by_node.setdefault(node, {})[task_id] = None
            self._indexed_at[task_id] = node

    def take_changes(self) -> dict[str, None] | None:
        """The ids touched since the last call, in first-touch order; None when too many
        were (rebuild from the whole table)."""
        changes, self._changes = self._changes, {}
        return changes

    def get(self, task_id: str) -> TaskRecord:
        task = self.tasks.get(task_id)
        if task is None:
            raise TaskError(f"unknown task {task_id}")
        return task

    def __iter__(self) -> Iterator[TaskRecord]:
        return iter(self.tasks.values())

    def row(self, t: TaskRecord) -> dict[str, Any]:
        """The ``tasks --json`` row (``migrations`` is the number of moves)."""
        return {
            "id": t.id,
            "state": t.state,
            "node": self.name_of(t.node) if t.node else None,
            "epoch": t.epoch,
            "attempts": t.attempts,
            "migrations": len(t.migrations),
            "exit_code": t.exit_code,
            "cmd": self._cmd(t),
        }

    def _cmd(self, t: TaskRecord) -> str:
        cmd = self._cmds.get(t.id)
        if cmd is None:
            cmd = self._cmds[t.id] = t.cmd
        return cmd

    def record(self, t: TaskRecord) -> dict[str, Any]:
        """Everything about one task (``task.get``); ``node`` stays an id here."""
        out = {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}
        out["node_name"] = self.name_of(t.node) if t.node else None
        out["cmd"] = t.cmd
        return out

    # ------------------------------------------------------------ transitions

    def submit(self, spec: TaskSubmit, at: float) -> tuple[Any, list[Event]]:
        self.seq += 1
        task = TaskRecord(
            id=f"t{self.seq}",
            argv=list(spec.argv) if spec.argv is not None else None,
            shell=spec.shell,
            env=dict(spec.env),
            cwd=spec.cwd,
            caps=list(spec.caps),
            key=spec.key,
            strategy=spec.strategy,
            priority=spec.priority,
            retries=spec.retries,
            timeout=spec.timeout,
            restartable=spec.restartable,
            submitter=spec.submitter,
            created_at=at,
            mem=spec.mem,
            pids=spec.pids,
            artifacts=list(spec.artifacts),
        )
        self.tasks[task.id] = task
        self.touch(task.id)
        return {"id": task.id}, [self._event("submitted", task)]

    def assign(self, cmd: TaskAssign, at: float, draining: bool) -> tuple[Any, list[Event]]:
        task = self._assign(cmd.task, cmd.node, cmd.epoch, at, draining)
        return {"task": task.id, "epoch": task.epoch}, [self._event("assigned", task)]

    def place(
        self, cmd: TaskPlace, at: float, draining: Callable[[str], bool]
    ) -> tuple[Any, list[Event]]:
        """A round's placements: each item as ``assign``; the refused ones are listed
        (``[task, reason]``) and leave the others applied."""
        events: list[Event] = []
        refused: list[list[str]] = []
        nodes = cmd.nodes
        drained = [draining(n) for n in nodes]
        for task_id, host, epoch in zip(cmd.tasks, cmd.hosts, cmd.epochs, strict=True):
            try:
                task = self._assign(task_id, nodes[host], epoch, at, drained[host])
            except TaskError as exc:
                refused.append([task_id, str(exc)])
                continue
            events.append(self._event("assigned", task))
        return {"placed": len(events), "refused": refused}, events

    def _assign(self, task_id: str, node: str, epoch: int, at: float, draining: bool) -> TaskRecord:
        """A queued task to ``node`` at ``epoch`` (its epoch + 1); ``TaskError`` if refused."""
        task = self._live(task_id)
        state = self._next(task, TaskEvent.ASSIGN)
        if epoch != task.epoch + 1:
            raise TaskError("stale epoch")
        if draining:
            raise TaskError(f"node {self.name_of(node)} is draining")
        task.state, task.node, task.epoch = state, node, epoch
        self.touch(task_id)
        if task.assigned_at is None:
            task.assigned_at = at
            self.latencies.append(at - task.created_at)
        return task

    def start(self, cmd: TaskStart, at: float) -> tuple[Any, list[Event]]:
        task = self.get(cmd.task)
        self._fence(task, cmd.node, cmd.epoch)
        task.state, task.started_at = self._next(task, TaskEvent.START), at
        self.touch(task.id)
        task.attempts += 1
        return {"task": task.id, "epoch": task.epoch}, [self._event("started", task)]

    def finish(self, cmd: TaskFinish, at: float) -> tuple[Any, list[Event]]:
        task = self.get(cmd.task)
        self._fence(task, cmd.node, cmd.epoch)
        stats = cmd.stats
        ok = cmd.exit_code == 0 and not stats.timed_out
        event = self._exit_event(task, ok)
        state = self._next(task, event)
        self.touch(task.id)
        task.exit_code, task.duration, task.timed_out = (
            cmd.exit_code,
            stats.duration,
            stats.timed_out,
        )
        task.cpu_time, task.peak_rss = stats.cpu_time, stats.peak_rss
        task.replicas = list(cmd.replicas)
        if event is TaskEvent.LATE_EXIT:  # the executor killed it: keep the record, not the state
            return {"task": task.id, "state": task.state}, []
        if task.state == ASSIGNED:  # the start entry was never committed; it did run
            task.attempts += 1
            task.started_at = at - stats.duration
        history = self.node_stats.setdefault(cmd.node, [0, 0, 0.0])
        history[0] += 1
        history[1] += 1 if ok else 0
        history[2] += stats.duration
        if event is not TaskEvent.SUCCEED:
            task.failures += 1
        if event is TaskEvent.RETRY:
            task.reason = "timed out" if stats.timed_out else f"exit code {cmd.exit_code}"
            task.state, task.node = state, None
            return {"task": task.id, "state": task.state}, [self._event("requeued", task)]
        self._end(task, state, at)
        return {"task": task.id, "state": task.state}, [self._event("finished", task)]

    def cancel(self, task_id: str, at: float) -> tuple[Any, list[Event]]:
        task = self._live(task_id)
        self._end(task, self._next(task, TaskEvent.CANCEL), at)
        return {}, [self._event("cancelled", task)]

    def lost(self, task_id: str, reason: str, at: float) -> tuple[Any, list[Event]]:
        task = self._live(task_id)
        state = self._next(task, TaskEvent.LOSE)
        task.reason = reason
        self._end(task, state, at)
        return {"task": task.id}, [self._event("lost", task)]

    def migrate(self, cmd: TaskMigrate, at: float, draining: bool) -> tuple[Any, list[Event]]:
        task = self._live(cmd.task)
        if cmd.epoch is not None and cmd.epoch != task.epoch:
            raise TaskError("stale epoch")
        if task.state == RUNNING and not task.restartable:
            raise TaskError(f"task {task.id} is running and not restartable")
        if task.node == cmd.to:
            raise TaskError(f"task {task.id} is already on {self.name_of(cmd.to)}")
        if draining:
            raise TaskError(f"node {self.name_of(cmd.to)} is draining")
        self.touch(task.id)
        if cmd.reason in LOAD_REASONS:
            task.load_moves += 1
            task.last_move_at = at
        return {"task": task.id, "epoch": task.epoch + 1}, self._move(task, cmd.to, cmd.reason, at)

    def fail_node(self, cmd: TaskFailNode, at: float) -> tuple[Any, list[Event]]:
        moved = requeued = lost = 0
        events: list[Event] = []
        victims = [t for t in self.tasks.values()
                   if t.node == cmd.node and t.state in (ASSIGNED, RUNNING)]  # fmt: skip
        for task in victims:
            if task.state == RUNNING and not self._fail_once(task):
                task.reason = f"host {self.name_of(cmd.node)} failed; no attempts left"
                self._end(task, self._next(task, TaskEvent.LOSE), at)
                events.append(self._event("lost", task))
                lost += 1
                continue
            target = cmd.targets.get(task.id)
            if target == cmd.node:
                target = None
            events.extend(self._move(task, target, "failover", at))
            if target is None:
                requeued += 1
            else:
                moved += 1
        return {"moved": moved, "requeued": requeued, "lost": lost}, events

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _next(task: TaskRecord, event: TaskEvent) -> str:
        """The state ``event`` takes ``task`` to (``TRANSITIONS``); TaskError if it may not."""
        state = TRANSITIONS[task.state].get(event)
        if state is None:
            expected = _REFUSED_UNLESS.get(event)
            if expected is None:
                raise TaskError(f"task {task.id} already {task.state}")
            raise TaskError(f"task {task.id} is {task.state}, not {expected}")
        return state

    @staticmethod
    def _exit_event(task: TaskRecord, ok: bool) -> TaskEvent:
        """Which event a ``task.finish`` is for ``task`` (reads the retry budget, changes nothing)."""
        if task.state == CANCELLED:
            return TaskEvent.LATE_EXIT
        if ok:
            return TaskEvent.SUCCEED
        return TaskEvent.RETRY if task.failures + 1 <= task.retries else TaskEvent.FAIL

    def _live(self, task_id: str) -> TaskRecord:
        task = self.get(task_id)
        if task.terminal:
            raise TaskError(f"task {task.id} already {task.state}")
        return task

    @staticmethod
    def _fail_once(task: TaskRecord) -> bool:
        """Count a failure; True if the task has a retry left."""
        task.failures += 1
        return task.failures <= task.retries

    def _fence(self, task: TaskRecord, node: str, epoch: int) -> None:
        if epoch != task.epoch or node != task.node:
            raise TaskError("stale epoch")

    def _move(self, task: TaskRecord, to: str | None, reason: str, at: float) -> list[Event]:
        """Epoch + 1 and a new home (``None``: back to the queue); records the migration."""
        state = self._next(task, TaskEvent.MOVE if to is not None else TaskEvent.REQUEUE)
        src = task.node
        self.touch(task.id)
        task.epoch += 1
        task.node = to
        task.state = state
        events = [self._event("assigned" if to is not None else "requeued", task)]
        if to is not None and task.assigned_at is None:
            task.assigned_at = at
            self.latencies.append(at - task.created_at)
        if src is not None:
            move = {"from": src, "to": to, "reason": reason, "epoch": task.epoch, "at": at}
            task.migrations.append(move)
            self.migration_times.append(at)
            shown = {**move, "from": self.name_of(src), "to": self.name_of(to) if to else None}
            events.append({"topic": "migrations", "data": {"task": task.id, **shown}})
        return events

    def _end(self, task: TaskRecord, state: str, at: float) -> None:
        task.state, task.finished_at = state, at
        self.touch(task.id)
        self.terminal_order.append(task.id)
        while len(self.terminal_order) > MAX_TERMINAL_TASKS:
            evicted = self.terminal_order.popleft()
            self.tasks.pop(evicted, None)
            self._cmds.pop(evicted, None)
            self.touch(evicted)

    def _event(self, kind: str, task: TaskRecord) -> Event:
        if not self.rows:
            return {"topic": "tasks", "data": {"kind": kind}}
        return {"topic": "tasks", "data": {"kind": kind, "task": self.row(task)}}

    # ------------------------------------------------------------ snapshots

    def dump(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "tasks": [t.dump() for t in self.tasks.values()],
            "terminal_order": list(self.terminal_order),
            "node_stats": self.node_stats,
            "latencies": list(self.latencies),
            "migration_times": list(self.migration_times),
        }

    def load(self, data: dict[str, Any]) -> None:
        self.seq = int(data["seq"])
        self.tasks = {row[0]: TaskRecord.load(row) for row in data["tasks"]}
        self._cmds = {}
        self._changes = None  # every view is rebuilt
        self._unindexed = None
        self.terminal_order = deque(data["terminal_order"])
        self.node_stats = {k: list(v) for k, v in data["node_stats"].items()}
        self.latencies = deque(data["latencies"], maxlen=MAX_SAMPLES)
        self.migration_times = deque(data["migration_times"], maxlen=MAX_SAMPLES)
