"""Tasks in the replicated state: the model and every transition, fenced by epoch.

Theory of operation: a task is ``queued`` (on no host) until the leader
commits ``task.assign`` to a host; the assignment carries epoch = old epoch + 1
and only the host named at the current epoch may start or finish it.  Every
later move (steal, rebalance, failover, drain) increments the epoch again, so a
host that was cut off and comes back holds a stale epoch: its ``task.start`` or
``task.finish`` is rejected with "stale epoch", and when it sees the newer
epoch it kills its copy.  That fencing is what keeps a task from running twice
at once.

States: queued → assigned → running → succeeded | failed, plus cancelled and
lost from any non-terminal state.  A failed run (non-zero exit or timeout) or
losing its host while running counts one failure; while failures ≤ retries the
task is queued again, otherwise it ends failed (exit) or lost (host).  Terminal tasks are kept up to
``MAX_TERMINAL_TASKS`` (oldest evicted first), so the state stays bounded.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.errors import TaskError
from agent.state.commands import (
    TaskAssign,
    TaskFailNode,
    TaskFinish,
    TaskMigrate,
    TaskStart,
    TaskSubmit,
)

MAX_TERMINAL_TASKS = 10_000
"""Finished (succeeded/failed/cancelled/lost) tasks kept; older ones are evicted."""
MAX_SAMPLES = 10_000
"""Decision-latency and migration-time samples kept for metrics."""
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "lost"})
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
    state: str = "queued"
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

    # ------------------------------------------------------------ queries

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
            "cmd": t.cmd,
        }

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
        )
        self.tasks[task.id] = task
        return {"id": task.id}, [self._event("submitted", task)]

    def assign(self, cmd: TaskAssign, at: float, draining: bool) -> tuple[Any, list[Event]]:
        task = self._live(cmd.task)
        if task.state != "queued":
            raise TaskError(f"task {task.id} is {task.state}, not queued")
        if cmd.epoch != task.epoch + 1:
            raise TaskError("stale epoch")
        if draining:
            raise TaskError(f"node {self.name_of(cmd.node)} is draining")
        task.state, task.node, task.epoch = "assigned", cmd.node, cmd.epoch
        if task.assigned_at is None:
            task.assigned_at = at
            self.latencies.append(at - task.created_at)
        return {"task": task.id, "epoch": task.epoch}, [self._event("assigned", task)]

    def start(self, cmd: TaskStart, at: float) -> tuple[Any, list[Event]]:
        task = self.get(cmd.task)
        self._fence(task, cmd.node, cmd.epoch)
        if task.state != "assigned":
            raise TaskError(f"task {task.id} is {task.state}, not assigned")
        task.state, task.started_at = "running", at
        task.attempts += 1
        return {"task": task.id, "epoch": task.epoch}, [self._event("started", task)]

    def finish(self, cmd: TaskFinish, at: float) -> tuple[Any, list[Event]]:
        task = self.get(cmd.task)
        self._fence(task, cmd.node, cmd.epoch)
        if task.state not in ("assigned", "running", "cancelled"):
            raise TaskError(f"task {task.id} already {task.state}")
        stats = cmd.stats
        task.exit_code, task.duration, task.timed_out = (
            cmd.exit_code,
            stats.duration,
            stats.timed_out,
        )
        task.cpu_time, task.peak_rss = stats.cpu_time, stats.peak_rss
        task.replicas = list(cmd.replicas)
        if task.state == "cancelled":  # the executor killed it: keep the record, not the state
            return {"task": task.id, "state": task.state}, []
        if task.state == "assigned":  # the start entry was never committed; it did run
            task.attempts += 1
            task.started_at = at - stats.duration
        ok = cmd.exit_code == 0 and not stats.timed_out
        history = self.node_stats.setdefault(cmd.node, [0, 0, 0.0])
        history[0] += 1
        history[1] += 1 if ok else 0
        history[2] += stats.duration
        if ok:
            self._end(task, "succeeded", at)
        elif self._fail_once(task):
            task.reason = "timed out" if stats.timed_out else f"exit code {cmd.exit_code}"
            task.state, task.node = "queued", None
            return {"task": task.id, "state": task.state}, [self._event("requeued", task)]
        else:
            self._end(task, "failed", at)
        return {"task": task.id, "state": task.state}, [self._event("finished", task)]

    def cancel(self, task_id: str, at: float) -> tuple[Any, list[Event]]:
        task = self._live(task_id)
        self._end(task, "cancelled", at)
        return {}, [self._event("cancelled", task)]

    def lost(self, task_id: str, reason: str, at: float) -> tuple[Any, list[Event]]:
        task = self._live(task_id)
        task.reason = reason
        self._end(task, "lost", at)
        return {"task": task.id}, [self._event("lost", task)]

    def migrate(self, cmd: TaskMigrate, at: float, draining: bool) -> tuple[Any, list[Event]]:
        task = self._live(cmd.task)
        if cmd.epoch is not None and cmd.epoch != task.epoch:
            raise TaskError("stale epoch")
        if task.state == "running" and not task.restartable:
            raise TaskError(f"task {task.id} is running and not restartable")
        if task.node == cmd.to:
            raise TaskError(f"task {task.id} is already on {self.name_of(cmd.to)}")
        if draining:
            raise TaskError(f"node {self.name_of(cmd.to)} is draining")
        if cmd.reason in LOAD_REASONS:
            task.load_moves += 1
            task.last_move_at = at
        return {"task": task.id, "epoch": task.epoch + 1}, self._move(task, cmd.to, cmd.reason, at)

    def fail_node(self, cmd: TaskFailNode, at: float) -> tuple[Any, list[Event]]:
        moved = requeued = lost = 0
        events: list[Event] = []
        victims = [t for t in self.tasks.values()
                   if t.node == cmd.node and t.state in ("assigned", "running")]  # fmt: skip
        for task in victims:
            if task.state == "running" and not self._fail_once(task):
                task.reason = f"host {self.name_of(cmd.node)} failed; no attempts left"
                self._end(task, "lost", at)
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
        src = task.node
        task.epoch += 1
        task.node = to
        task.state = "assigned" if to is not None else "queued"
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
        self.terminal_order.append(task.id)
        while len(self.terminal_order) > MAX_TERMINAL_TASKS:
            self.tasks.pop(self.terminal_order.popleft(), None)

    def _event(self, kind: str, task: TaskRecord) -> Event:
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
        self.terminal_order = deque(data["terminal_order"])
        self.node_stats = {k: list(v) for k, v in data["node_stats"].items()}
        self.latencies = deque(data["latencies"], maxlen=MAX_SAMPLES)
        self.migration_times = deque(data["migration_times"], maxlen=MAX_SAMPLES)
