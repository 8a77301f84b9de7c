"""Real load readings for gossip, scheduling and the executor.

Theory of operation
-------------------
``LoadSampler.sample(now)`` is called by the runtime once a second.  It reads
the kernel's cumulative CPU times through psutil and turns the difference from
the previous call into the busy fraction of *all* cores over that interval
(0..1; iowait and idle count as not busy).  We difference the counters
ourselves instead of calling ``psutil.cpu_percent(None)`` because that keeps
one hidden process-global baseline that any other caller would disturb.

The smoothed figure the scheduler uses for hot/cold decisions is a
time-based EWMA::

    alpha = 1 - exp(-dt / window)        (window default 10 s)
    ewma  = ewma + alpha * (cpu - ewma)

With 1 s samples alpha is about 0.095: a host that goes from idle to
saturated crosses 0.8 after ~16 s and a single one-second spike moves the
figure by under 0.1, which is what "sustained" means in DESIGN.md.  Being
time-based, a late or missed sample is weighted by the time it covers.

``LoopLagMonitor`` schedules a callback every 100 ms on the running event
loop and records how late it ran; ``p99()`` is over the last ``window``
seconds (default 30 s, so at most 300 samples are kept).  Lifeguard's
local-health score reads it: a lagging loop means our own probes are late.

``tree_usage(pid)`` sums CPU time and RSS over a process and its live
descendants; the executor polls it to account tasks.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

DEFAULT_EWMA_WINDOW_S = 10.0
"""Time constant of the smoothed CPU figure, seconds."""

LAG_INTERVAL_S = 0.1
"""How often the loop-lag probe is scheduled, seconds."""

LAG_WINDOW_S = 30.0
"""How much loop-lag history p99 is computed over, seconds."""


@dataclass(frozen=True, slots=True)
class CpuCounters:
    """Cumulative CPU seconds summed over all cores."""

    busy: float
    total: float


@dataclass(frozen=True, slots=True)
class MemoryReading:
    total: int
    available: int


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One reading of this host's load."""

    at: float
    """Monotonic time of the reading (seconds), as passed to ``sample``."""
    cpu: float
    """Busy fraction of all cores since the previous sample, 0..1."""
    cpu_ewma: float
    """EWMA-smoothed ``cpu`` (time constant ``window``), 0..1."""
    load1: float
    """One-minute load average (runnable tasks, not normalised by cores)."""
    mem_total: int
    """Physical memory, bytes."""
    mem_free: int
    """Memory available to new work without swapping, bytes."""
    mem_free_pct: float
    """``mem_free`` as a percentage of ``mem_total``, 0..100."""

    @property
    def mem_used(self) -> float:
        """Used memory fraction 0..1 (what the control API reports as ``mem``)."""
        if self.mem_total <= 0:
            return 0.0
        return 1.0 - self.mem_free / self.mem_total


def read_cpu_counters() -> CpuCounters:
    times = psutil.cpu_times()
    # guest time is already included in user on Linux; idle and iowait are not busy.
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(
        getattr(times, name)
        for name in times._fields
        if name not in ("guest", "guest_nice")
    )
    return CpuCounters(busy=total - idle, total=total)


def read_memory() -> MemoryReading:
    vm = psutil.virtual_memory()
    return MemoryReading(total=int(vm.total), available=int(vm.available))


def read_load1() -> float:
    return float(psutil.getloadavg()[0])


def ewma_alpha(dt: float, window: float) -> float:
    """Weight of a new observation covering ``dt`` seconds, time constant ``window``."""
    if window <= 0:
        return 1.0
    if dt <= 0:
        return 0.0
    return 1.0 - math.exp(-dt / window)


def busy_fraction(prev: CpuCounters, cur: CpuCounters) -> float:
    """Busy share of CPU time between two counter readings, clamped to 0..1."""
    total = cur.total - prev.total
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, (cur.busy - prev.busy) / total))


class LoadSampler:
    """Samples CPU, load average and memory; keeps the EWMA between samples.

    The readers are parameters so tests can feed counters; the agent uses psutil.
    """

    def __init__(
        self,
        ewma_window: float = DEFAULT_EWMA_WINDOW_S,
        *,
        cpu_reader: Callable[[], CpuCounters] = read_cpu_counters,
        mem_reader: Callable[[], MemoryReading] = read_memory,
        load_reader: Callable[[], float] = read_load1,
    ) -> None:
        self.ewma_window = ewma_window
        self._cpu_reader = cpu_reader
        self._mem_reader = mem_reader
        self._load_reader = load_reader
        self._prev_counters = cpu_reader()
        self._prev_at: float | None = None
        self._ewma: float | None = None
        self.latest: LoadSample | None = None

    def sample(self, now: float) -> LoadSample:
        counters = self._cpu_reader()
        cpu = busy_fraction(self._prev_counters, counters)
        self._prev_counters = counters
        if self._ewma is None or self._prev_at is None:
            # The first reading seeds the average instead of dragging it up from 0.
            ewma = cpu
        else:
            ewma = self._ewma + ewma_alpha(now - self._prev_at, self.ewma_window) * (
                cpu - self._ewma
            )
        self._ewma = ewma
        self._prev_at = now
        mem = self._mem_reader()
        free_pct = 100.0 * mem.available / mem.total if mem.total > 0 else 0.0
        self.latest = LoadSample(
            at=now,
            cpu=cpu,
            cpu_ewma=ewma,
            load1=self._load_reader(),
            mem_total=mem.total,
            mem_free=mem.available,
            mem_free_pct=free_pct,
        )
        return self.latest


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; 0.0 for an empty input."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = math.ceil(q / 100.0 * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


class LoopLagMonitor:
    """Measures how late the event loop runs a callback scheduled every ``interval``."""

    def __init__(self, interval: float = LAG_INTERVAL_S, window: float = LAG_WINDOW_S) -> None:
        self.interval = interval
        self.window = window
        self._samples: deque[tuple[float, float]] = deque(
            maxlen=max(1, math.ceil(window / interval) + 1)
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start probing on the running loop (call from inside it)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.record(now, max(0.0, now - self._due))
        self._schedule()

    def record(self, now: float, lag: float) -> None:
        """Add one lag observation (seconds) taken at ``now``."""
        self._samples.append((now, lag))

    def _recent(self) -> list[float]:
        if not self._samples:
            return []
        horizon = self._samples[-1][0] - self.window
        return [lag for at, lag in self._samples if at >= horizon]

    def p99(self) -> float:
        """99th-percentile lag over the window, seconds."""
        return percentile(self._recent(), 99.0)

    def max(self) -> float:
        recent = self._recent()
        return max(recent) if recent else 0.0

    @property
    def last(self) -> float:
        return self._samples[-1][1] if self._samples else 0.0

    def __len__(self) -> int:
        return len(self._samples)


@dataclass(frozen=True, slots=True)
class TreeUsage:
    """Resource use of a process and its live descendants at one instant."""

    cpu_time: float
    """User + system CPU seconds, including already-reaped children of each process."""
    rss: int
    """Sum of resident set sizes, bytes."""
    nprocs: int


def tree_usage(pid: int) -> TreeUsage | None:
    """Usage of ``pid`` and its descendants, or None if ``pid`` is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    cpu = 0.0
    rss = 0
    count = 0
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                mem = proc.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # exited between listing and reading: its time moves to its parent
        cpu += times.user + times.system + times.children_user + times.children_system
        rss += int(mem.rss)
        count += 1
    return TreeUsage(cpu_time=cpu, rss=rss, nprocs=count)
