"""Load sampling: pure maths with fed counters, plus real psutil readings."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time

import pytest
from support.wait import wait_until_async

from agent.load import (
    CpuCounters,
    LoadSampler,
    LoopLagMonitor,
    MemoryReading,
    busy_fraction,
    ewma_alpha,
    percentile,
    tree_usage,
)


@pytest.mark.parametrize(
    ("dt", "window", "expected"),
    [
        (1.0, 10.0, 1 - math.exp(-0.1)),
        (10.0, 10.0, 1 - math.exp(-1)),
        (0.0, 10.0, 0.0),
        (-1.0, 10.0, 0.0),
        (1.0, 0.0, 1.0),
    ],
)
def test_ewma_alpha(dt: float, window: float, expected: float) -> None:
    assert ewma_alpha(dt, window) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prev", "cur", "expected"),
    [
        (CpuCounters(0, 0), CpuCounters(5, 10), 0.5),
        (CpuCounters(5, 10), CpuCounters(5, 20), 0.0),
        (CpuCounters(5, 10), CpuCounters(15, 20), 1.0),
        (CpuCounters(5, 10), CpuCounters(5, 10), 0.0),  # no time passed
        (CpuCounters(5, 10), CpuCounters(30, 20), 1.0),  # clamped
    ],
)
def test_busy_fraction(prev: CpuCounters, cur: CpuCounters, expected: float) -> None:
    assert busy_fraction(prev, cur) == pytest.approx(expected)


class FedCounters:
    def __init__(self) -> None:
        self.busy = 0.0
        self.total = 0.0

    def advance(self, seconds: float, busy_share: float, cores: int = 4) -> None:
        self.total += seconds * cores
        self.busy += seconds * cores * busy_share

    def __call__(self) -> CpuCounters:
        return CpuCounters(self.busy, self.total)


def test_sampler_ewma_follows_sustained_load() -> None:
    fed = FedCounters()
    sampler = LoadSampler(
        ewma_window=10.0,
        cpu_reader=fed,
        mem_reader=lambda: MemoryReading(total=1000, available=250),
        load_reader=lambda: 1.5,
    )
    fed.advance(1, 0.0)
    first = sampler.sample(1.0)
    assert first.cpu == 0.0 and first.cpu_ewma == 0.0
    assert (first.mem_free, first.mem_free_pct, first.mem_used, first.load1) == (
        250, 25.0, 0.75, 1.5
    )
    # one spike barely moves the smoothed figure
    fed.advance(1, 1.0)
    spike = sampler.sample(2.0)
    assert spike.cpu == 1.0
    assert spike.cpu_ewma == pytest.approx(1 - math.exp(-0.1))
    assert spike.cpu_ewma < 0.1
    # sustained saturation crosses the 0.8 "hot" line after ~16 s, not before 15
    crossed_at = None
    for second in range(3, 60):
        fed.advance(1, 1.0)
        if sampler.sample(float(second)).cpu_ewma > 0.8 and crossed_at is None:
            crossed_at = second
    assert crossed_at is not None and 15 <= crossed_at - 1 <= 18
    assert sampler.latest is not None and sampler.latest.cpu_ewma > 0.99


def test_sampler_weights_a_late_sample_by_the_time_it_covers() -> None:
    fed = FedCounters()
    sampler = LoadSampler(ewma_window=10.0, cpu_reader=fed)
    fed.advance(1, 0.0)
    sampler.sample(0.0)
    fed.advance(10, 1.0)
    late = sampler.sample(10.0)
    assert late.cpu_ewma == pytest.approx(1 - math.exp(-1))


def test_real_sampler_sees_a_busy_core() -> None:
    sampler = LoadSampler()
    sampler.sample(time.monotonic())
    end = time.process_time() + 0.5
    while time.process_time() < end:
        pass
    reading = sampler.sample(time.monotonic())
    cores = os.cpu_count() or 1
    assert reading.cpu >= 0.8 / cores
    assert 0.0 <= reading.cpu <= 1.0
    assert reading.mem_total > reading.mem_free > 0
    assert 0 < reading.mem_free_pct < 100
    assert reading.load1 >= 0.0


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 99, 0.0), ([5.0], 99, 5.0), (list(range(1, 101)), 99, 99), (list(range(1, 101)), 50, 50),
     ([3.0, 1.0, 2.0], 100, 3.0), ([3.0, 1.0, 2.0], 0, 1.0)],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_lag_window_forgets_old_samples() -> None:
    monitor = LoopLagMonitor(interval=0.1, window=1.0)
    monitor.record(0.0, 5.0)
    for i in range(1, 30):
        monitor.record(i * 0.1, 0.001)
    assert monitor.p99() == pytest.approx(0.001)
    assert monitor.max() == pytest.approx(0.001)
    assert len(monitor) <= 11


async def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    monitor = LoopLagMonitor(interval=0.02, window=30.0)
    monitor.start()
    await wait_until_async("3 lag samples", lambda: len(monitor) >= 3, 10)
    # Below what the block shows (a loaded box may add lag, but not half a second).
    assert monitor.p99() < 0.45
    time.sleep(0.5)  # block the loop on purpose
    await asyncio.sleep(0.1)
    monitor.stop()
    count = len(monitor)
    await asyncio.sleep(0.1)
    assert len(monitor) == count  # stopped
    assert monitor.max() >= 0.45
    assert monitor.p99() >= 0.45


def test_tree_usage_of_self_and_missing_pid() -> None:
    usage = tree_usage(os.getpid())
    assert usage is not None
    assert usage.rss > 0 and usage.cpu_time > 0 and usage.nprocs >= 1
    assert tree_usage(2**22 + 12345) is None


async def test_tree_usage_counts_children() -> None:
    hold_30mb = (
        "import time\n"
        "block = bytearray(30 << 20)\n"
        "for i in range(0, len(block), 4096): block[i] = 1\n"
        "time.sleep(5)\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", hold_30mb)
    try:
        await wait_until_async(  # while the child holds its 30 MB (it sleeps 5 s)
            "our tree to count the child and its 30 MB",
            lambda: (u := tree_usage(os.getpid())) is not None and u.nprocs >= 2 and u.rss > 30 << 20,
            5, 0.05,
        )
    finally:
        proc.kill()
        await proc.wait()
