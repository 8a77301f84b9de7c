"""``TaskCpuSampler`` on real processes: a busy run reads above an idle one, CPU of
children counts, a forgotten run stops counting, and the figure stays in 0..1."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.runtime.task_cpu import TaskCpuSampler

BUSY = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"
# A shell whose busy work is a child process: the tree is walked, not just the leader.
BUSY_CHILD = [sys.executable, "-c",
              f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BUSY!r}])"]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def spawn(procs: list[subprocess.Popen[bytes]], argv: list[str]) -> int:
    proc = subprocess.Popen(argv, start_new_session=True)
    procs.append(proc)
    return proc.pid


def test_a_busy_run_reads_above_an_idle_one(procs: list[subprocess.Popen[bytes]]) -> None:
    busy, idle = TaskCpuSampler(), TaskCpuSampler()
    busy.track("t1", spawn(procs, BUSY_CHILD))
    idle.track("t2", spawn(procs, ["sleep", "30"]))
    busy.sample(1)
    idle.sample(1)
    deadline = time.monotonic() + 10.0
    readings: list[tuple[float, float]] = []
    while time.monotonic() < deadline:  # a loaded box may give the burner little CPU at first
        time.sleep(0.3)
        readings.append((busy.sample(1), idle.sample(1)))
        if readings[-1][0] > 0.05:
            break
    hot, cold = readings[-1]
    assert 0.05 < hot <= 1.0, readings
    assert cold < 0.02, readings


def test_a_forgotten_run_stops_counting(procs: list[subprocess.Popen[bytes]]) -> None:
    sampler = TaskCpuSampler()
    pid = spawn(procs, [sys.executable, "-c", BUSY])
    sampler.track("t1", pid)
    assert sampler.forget("t1") == pid and sampler.forget("t1") is None
    sampler.sample(1)
    time.sleep(0.2)
    assert sampler.sample(1) == 0.0 and sampler.last == 0.0


def test_a_process_that_does_not_exist_reads_zero() -> None:
    sampler = TaskCpuSampler()
    with open("/proc/sys/kernel/pid_max") as fh:
        sampler.track("t1", int(fh.read()) + 1)  # no process can have this pid
    assert sampler.sample(4) == 0.0
