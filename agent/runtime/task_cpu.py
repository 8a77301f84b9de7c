"""The CPU this host's task runs use, as a fraction of its slots (``load_source = "tasks"``).

Theory of operation: each run's leader process is tracked from its ``started``
event to its ``finished`` event.  ``sample()`` walks every tracked process and
its descendants (psutil) and sums the CPU seconds each used since the last
sample: user + system, plus the ``children_*`` times of children that already
exited and were reaped (a shell's short commands would otherwise go unseen).
A process first seen in this sample is charged from 0 if it was born since the
last sample (so a run shorter than a sample still counts, and a host whose
runs turn over does not read idle), from its current total otherwise.

The sum over the elapsed wall time is divided by ``min(cores, slots)``: a task
is charged against the host's slots, not its cores, so a host full of busy
tasks reads 1.0 whatever its core count.  SWIM gossips the figure (smoothed)
as the host's CPU when the agent is configured to, which is what the
scheduler's steal and hot/cold thresholds then compare.
"""

from __future__ import annotations

import os
import time

import psutil

BORN_SLACK = 0.02
"""Seconds of slack when deciding a process was born since the last sample
(``create_time`` has a coarser clock than ``time.time``)."""


class TaskCpuSampler:
    """Task run id → leader pid, and the CPU those process trees used between samples."""

    def __init__(self) -> None:
        self._pids: dict[str, int] = {}
        self._prev: dict[int, float] = {}
        self._at = time.monotonic()
        self._wall = time.time()
        self.last = 0.0
        """The latest sample (0..1)."""

    def track(self, task_id: str, pid: int) -> None:
        self._pids[task_id] = pid

    def forget(self, task_id: str) -> int | None:
        """Stop tracking a run; its leader pid if it was tracked."""
        return self._pids.pop(task_id, None)

    def sample(self, slots: int) -> float:
        """CPU used by the tracked runs since the last sample, as a fraction of
        ``min(cores, slots)`` (0..1)."""
        now = time.monotonic()
        total = 0.0
        seen: dict[int, float] = {}
        for pid in self._pids.values():
            total += self._tree_delta(pid, seen)
        dt = max(1e-3, now - self._at)
        self._prev, self._at, self._wall = seen, now, time.time()
        cores = os.cpu_count() or 1
        denom = max(1, min(cores, slots))
        self.last = min(1.0, total / dt / denom)
        return self.last

    def _tree_delta(self, pid: int, seen: dict[int, float]) -> float:
        """CPU seconds the tree under ``pid`` used since the last sample; notes each
        process's total in ``seen``."""
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            cpu = t.user + t.system + t.children_user + t.children_system
            seen[p.pid] = cpu
            total += max(0.0, cpu - self._prev.get(p.pid, self._baseline(p, cpu)))
        return total

    def _baseline(self, proc: psutil.Process, cpu: float) -> float:
        """CPU time to charge a process first seen now from: 0 if it started since the
        last sample, its current total otherwise."""
        try:
            born_since_last_sample = proc.create_time() >= self._wall - BORN_SLACK
        except psutil.Error:
            return cpu
        return 0.0 if born_since_last_sample else cpu
