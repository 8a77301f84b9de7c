"""This host's side of tasks: runs what the replicated state assigns here, reports back.

Theory of operation, on every host (leader or not):

* Reconcile.  After every applied batch that touched tasks, the executor is
  brought in line with the state: a local run whose task now has a newer
  epoch, another host, or is gone or finished is killed as stale (fencing); a
  cancelled one is cancelled.  Then every task assigned here at its current
  epoch that is not running starts, while slots are free -- except one that
  already ran here at that epoch (its report is not committed yet: starting it
  again would run it twice).  A command that cannot start at all (missing
  binary, permission) is reported as exit 127, as a shell would, so the task
  is retried elsewhere or fails instead of hanging.
* Executor events.  A start registers the run with the watchdog lease and
  the CPU sampler and queues a ``task.start`` report; a finish forgets it,
  replicates the output, and queues a ``task.finish`` report (a stale kill
  only asks for another reconcile).  A queued start that has not been sent is
  dropped when its finish arrives: a finish on an ``assigned`` task records
  the run itself, one commit instead of two for short tasks.
* Reports.  Everything queued is proposed at once, as one ``batch`` entry
  (one forward and one Raft append per batch, not per report);
  a report that cannot be committed (no quorum, leader change) is retried,
  ahead of anything queued after it, until it is -- so results from a
  minority are committed after the partition heals.  A report refused for
  another reason (a bug, not the cluster) is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.errors import MeshError, TaskError
from agent.executor import ExecEvent
from agent.runtime.sched_submit import split
from agent.runtime.task_cpu import TaskCpuSampler
from agent.runtime.watchdog_lease import WatchdogLease
from agent.state import builders
from agent.state.commands import TaskStats
from agent.state.machine import ApplyResult
from agent.state.tasks import TaskRecord

log = logging.getLogger(__name__)

MAX_REPORTS_PER_BATCH = 256
"""Executor reports proposed at once (default 256): bounds one batch's burst into the log."""
CANNOT_START_EXIT = 127
"""Exit code reported for a command that could not be started (a shell's "not found")."""


class RunControl(Protocol):
    """The executor (``agent.executor.Executor``), as the runner drives it."""

    @property
    def free_slots(self) -> int: ...

    def running(self) -> dict[str, int]: ...

    async def start(
        self, task_id: str, epoch: int, cmd: Sequence[str] | str,
        env: Mapping[str, str] | None = None, cwd: str | None = None,
        timeout: float | None = None, mem: int = 0, pids: int = 0,
    ) -> None: ...

    async def cancel(self, task_id: str) -> object: ...

    async def kill_stale(self, task_id: str, epoch: int) -> object: ...

    def done_with(self, task_id: str, epoch: int) -> None: ...


class TaskRecords(Protocol):
    """The replicated task state, as the runner reads it."""

    def task_record(self, task_id: str) -> TaskRecord | None: ...

    def tasks_for_node(self, node_id: str) -> list[TaskRecord]: ...


@dataclass(frozen=True, slots=True)
class Report:
    """A ``task.start``/``task.finish`` command waiting to be committed."""

    task: str
    epoch: int
    kind: str
    cmd: bytes


class LocalRunner:
    """Reconcile loop, executor events and report retry for one host."""

    def __init__(
        self,
        *,
        node_id: str,
        executor: RunControl,
        records: Callable[[], TaskRecords],
        propose: Callable[[bytes], Awaitable[object]],
        replicate: Callable[[str, int], list[str]],
        lease: WatchdogLease,
        cpu: TaskCpuSampler,
        retry_delay: float = 0.5,
        on_run: Callable[[ExecEvent], None] | None = None,
        after_run: Callable[[ExecEvent], Awaitable[list[str]]] | None = None,
        after_run_now: Callable[[ExecEvent], list[str] | None] | None = None,
    ) -> None:
        """``records()`` is the replicated state now; ``propose`` commits a command
        (forwarded to the leader); ``replicate(task, epoch)`` copies a finished run's
        output to other hosts and names them."""
        self.node_id = node_id
        self._retry_delay = retry_delay
        """Seconds before an uncommitted result is sent again (runtime.report_retry_delay)."""
        self.executor = executor
        self._records = records
        self._propose = propose
        self._replicate = replicate
        self._on_run = on_run
        """Told of every run that starts here (its output starts replicating)."""
        self._after_run = after_run
        """Awaited when a run ends, before its finish is reported (artifacts are
        collected, output completed); its hosts replace ``replicate``'s."""
        self._after_run_now = after_run_now
        """Tried first when a run ends: its hosts when nothing needs awaiting (a run
        without artifacts), so most finishes need no task of their own; None: use
        ``after_run``."""
        self._finishing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._lease = lease
        self._cpu = cpu
        self._reports: list[Report] = []
        self._started: dict[str, int] = {}
        """Task id -> epoch of the latest run this host started (running or finished)."""
        self._reconcile_needed = asyncio.Event()
        self._report_wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._report_loop(), name="reports"),
        ]

    async def close(self) -> None:
        self._closed = True
        for loop in [*self._loops, *self._finishing]:
            loop.cancel()
        for loop in [*self._loops, *self._finishing]:
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    def wake(self) -> None:
        """The task state changed: reconcile soon."""
        self._reconcile_needed.set()

    # ------------------------------------------------------------ reconcile

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_needed.wait()
            self._reconcile_needed.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("task reconcile failed")

    async def reconcile(self) -> None:
        """Kill what the state moved past, forget finished runs, start what is ours."""
        state = self._records()
        await self._kill_stale(state)
        self._forget_moved(state)
        await self._start_assigned(state)

    async def _kill_stale(self, state: TaskRecords) -> None:
        for task_id, epoch in list(self.executor.running().items()):
            rec = state.task_record(task_id)
            if rec is not None and rec.node == self.node_id and rec.epoch == epoch \
                    and not rec.terminal:
                continue
            if rec is not None and rec.state == "cancelled":
                log.info("killing %s epoch %d (cancelled)", task_id, epoch)
                await self.executor.cancel(task_id)
            else:
                log.info("killing %s epoch %d (stale)", task_id, epoch)
                await self.executor.kill_stale(task_id, epoch + 1)

    def _forget_moved(self, state: TaskRecords) -> None:
        """Forget runs the state has moved past (finished, moved away, newer epoch)."""
        for task_id, epoch in list(self._started.items()):
            rec = state.task_record(task_id)
            if rec is None or rec.terminal or rec.node != self.node_id or rec.epoch != epoch:
                del self._started[task_id]

    async def _start_assigned(self, state: TaskRecords) -> None:
        if self.executor.free_slots <= 0:
            return  # (every applied batch that touched tasks wakes this; most find no slot)
        running = self.executor.running()
        for rec in state.tasks_for_node(self.node_id):
            if rec.state != "assigned" or rec.id in running:
                continue
            if self._started.get(rec.id) == rec.epoch:
                # Already ran here at this epoch; its reports are not committed
                # yet.  Starting it again would run the task twice.
                continue
            if self.executor.free_slots <= 0:
                break
            await self._start_one(rec)
            running = self.executor.running()

    async def _start_one(self, rec: TaskRecord) -> None:
        cmd: list[str] | str = rec.argv if rec.argv else (rec.shell or "")
        try:
            await self.executor.start(rec.id, rec.epoch, cmd, rec.env, rec.cwd, rec.timeout,
                                      rec.mem, rec.pids)
        except TaskError as exc:
            # A slot was free, so the command itself cannot start (missing
            # binary, permission): report it as a shell would.
            log.warning("cannot start %s: %s", rec.id, exc)
            self._started[rec.id] = rec.epoch
            self._queue(Report(rec.id, rec.epoch, "finish", builders.cmd_task_finish(
                rec.id, self.node_id, rec.epoch, CANNOT_START_EXIT, TaskStats(), "", time.time()
            )))

    # ------------------------------------------------------------ executor events

    def on_exec_event(self, event: ExecEvent) -> None:
        if event.kind == "started":
            self._on_started(event)
        else:
            self._on_finished(event)

    def _on_started(self, event: ExecEvent) -> None:
        self._cpu.track(event.task_id, event.pid)
        self._started[event.task_id] = event.epoch
        self._lease.register(event.pid, event.cgroups, event.reaper)
        if self._on_run is not None:
            self._on_run(event)
        cmd = builders.cmd_task_start(event.task_id, self.node_id, event.epoch, "", time.time())
        self._queue(Report(event.task_id, event.epoch, "start", cmd))

    def _on_finished(self, event: ExecEvent) -> None:
        now = time.time()
        pid = self._cpu.forget(event.task_id)
        if pid is not None:
            self._lease.unregister(pid)
        # Its slot is free now: the next task assigned here starts without waiting
        # for this run's output and report (``_started`` keeps it from running again).
        self._reconcile_needed.set()
        if self._after_run is not None:
            if self._closed:  # shutting down: nobody would report it
                return
            replicas = self._after_now(event)
            if replicas is not None:
                self._finished(event, now, replicas)
                return
            finishing = asyncio.create_task(self._finish_after(event, now))
            self._finishing.add(finishing)
            finishing.add_done_callback(self._finishing.discard)
            return
        self.executor.done_with(event.task_id, event.epoch)
        if event.reason == "stale":
            self._reconcile_needed.set()
            return
        self._report_finish(event, now, self._replicate(event.task_id, event.epoch))

    async def _finish_after(self, event: ExecEvent, now: float) -> None:
        if self._after_run is None:
            return
        try:
            replicas = await self._after_run(event)
        except Exception:
            log.exception("task %s: replicating the run failed", event.task_id)
            replicas = []
        self._finished(event, now, replicas)

    def _after_now(self, event: ExecEvent) -> list[str] | None:
        if self._after_run_now is None:
            return None
        try:
            return self._after_run_now(event)
        except Exception:
            log.exception("task %s: replicating the run failed", event.task_id)
            return []

    def _finished(self, event: ExecEvent, now: float, replicas: list[str]) -> None:
        # (its artifacts are collected: a quiet run's directories may go to the next run)
        self.executor.done_with(event.task_id, event.epoch)
        if event.reason == "stale":
            self._reconcile_needed.set()
            return
        self._report_finish(event, now, replicas)

    def _report_finish(self, event: ExecEvent, now: float, replicas: list[str]) -> None:
        stats = TaskStats(
            event.duration, event.cpu_time, event.peak_rss, event.reason == "timeout"
        )
        code = event.exit_code if event.exit_code is not None else -1
        cmd = builders.cmd_task_finish(
            event.task_id, self.node_id, event.epoch, code, stats, "", now, replicas
        )
        self._queue(Report(event.task_id, event.epoch, "finish", cmd))
        self._reconcile_needed.set()

    # ------------------------------------------------------------ reports

    def _queue(self, report: Report) -> None:
        if report.kind == "finish":
            # A start not yet sent is redundant: a finish on an "assigned" task
            # records the run itself (one commit instead of two for short tasks).
            self._reports = [
                r for r in self._reports
                if not (r.kind == "start" and r.task == report.task and r.epoch == report.epoch)
            ]
        self._reports.append(report)
        self._report_wake.set()

    async def _report_loop(self) -> None:
        """Commit reports, retrying through a lost quorum.  Raft keeps the order of one
        node's proposals; a report that fails is retried before anything queued after it."""
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            while self._reports:
                batch, self._reports = self._reports[:MAX_REPORTS_PER_BATCH], \
                    self._reports[MAX_REPORTS_PER_BATCH:]
                failed = await self._propose_batch(batch)
                if failed:
                    log.debug("%d task report(s) not committed yet; retrying", len(failed))
                    self._reports = failed + self._reports
                    await asyncio.sleep(self._retry_delay)

    async def _propose_batch(self, batch: list[Report]) -> list[Report]:
        """Propose every report of ``batch`` in one ``batch`` entry (one forward to the
        leader, one Raft append, one apply pass; each report is applied, fenced and
        answered as its own entry would be); the ones to retry -- all of them when the
        entry could not be committed."""
        if len(batch) == 1:
            command = batch[0].cmd
        else:
            command = builders.cmd_batch([r.cmd for r in batch], "", time.time())
        try:
            result = await self._propose(command)
        except MeshError:
            return batch
        except Exception as exc:  # a bug, not the cluster: drop them
            log.error("%d task report(s) failed: %r", len(batch), exc)
            return []
        if len(batch) > 1 and isinstance(result, ApplyResult):
            for report, res in zip(batch, split(result, len(batch)), strict=True):
                if not res.ok:  # refused (a stale epoch, a finished task): nothing to retry
                    log.debug("task report %s %s refused: %s", report.kind, report.task, res.error)
        return []
