"""The SWIM driver: timers, packets in and out, psutil load, discovery re-joins.

The core says when it next has work (``next_deadline``); this loop sleeps
until then or until a packet arrives, ticks, and flushes ``ready()`` to the
transport (UDP for probes and gossip, sealed TCP for push-pull and the
fallback probe).  Membership events go to control subscribers and to the
agent (for Raft's autopilot and task failover).

Every second the host's load is sampled with psutil and handed to the core
(it rides on gossip), and Lifeguard's local health hears about CPU saturation
and event-loop lag, so a busy host slows its own probing instead of accusing
healthy peers.

The CPU figures cover the CPUs this agent may run on (its affinity: a
cpuset, a container's CPU limit by cpuset, ``taskset``), not the whole
machine: an agent confined to one busy core is busy even when other cores
idle, and an agent on idle cores is not slowed by someone else's busy core.

Re-joining never stops: candidates from seeds and mDNS that are not alive
members are joined again with capped exponential backoff.

A second live process with our node id (``agent.swim.identity``): when the
core finds one, ``on_conflict(address)`` is called once and this driver goes
silent (no more ticks or sends, and no leave: a leave would gossip our node
id as gone, which is the *other* process's id too).  When another process is
found checking us, we are the incumbent: a warning is logged and we go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import psutil

from agent.discovery import CandidateSet, backoff_delay
from agent.load import (
    CpuCounters,
    LoadSample,
    LoadSampler,
    LoopLagMonitor,
    read_cpu_counters,
)
from agent.swim.config import SwimConfig
from agent.swim.core import SwimNode
from agent.swim.members import MemberView
from agent.swim.messages import NodeLoad, NodeMeta
from agent.swim.probe import HelperScore, ProbeObserver
from agent.swim.ready import MemberEvent, SwimReady

log = logging.getLogger(__name__)

LOAD_INTERVAL = 1.0
"""Seconds between psutil load samples."""

REJOIN_BASE, REJOIN_CAP = 1.0, 15.0
"""Backoff for re-joining candidates that are not members: 1 s doubling to 15 s."""

MIN_SLEEP = 0.002
"""Shortest timer sleep, so a deadline in the past cannot spin the loop."""


def _busy_and_total(times: object) -> tuple[float, float]:
    fields: tuple[str, ...] = getattr(times, "_fields", ())
    # guest time is already counted in user on Linux; idle and iowait are not busy.
    total = sum(float(getattr(times, f)) for f in fields if f not in ("guest", "guest_nice"))
    idle = float(getattr(times, "idle", 0.0)) + float(getattr(times, "iowait", 0.0))
    return total - idle, total


def affinity_cpu_reader() -> Callable[[], CpuCounters]:
    """CPU counters summed over the CPUs this process may run on.

    The whole machine (``read_cpu_counters``) when the affinity covers every
    CPU, when it cannot be read, or when the per-CPU list does not line up with
    CPU numbers (offline CPUs leave gaps in /proc/stat)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        per_cpu = psutil.cpu_times(percpu=True)
    except (AttributeError, OSError):
        return read_cpu_counters
    online = psutil.cpu_count() or 0
    if not allowed or len(allowed) >= online or len(per_cpu) != online or allowed[-1] >= online:
        return read_cpu_counters

    def read() -> CpuCounters:
        times = psutil.cpu_times(percpu=True)
        busy = total = 0.0
        for index in allowed:
            if index < len(times):
                b, t = _busy_and_total(times[index])
                busy += b
                total += t
        return CpuCounters(busy=busy, total=total)

    return read


def _ignore_events(events: list[MemberEvent]) -> None:
    """Member events before ``connect``."""


def _no_task_load() -> tuple[float, int, int]:
    """Task load before ``connect``: no tasks."""
    return 0.0, 0, 0


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passes.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that
    lands while the event is being set (CPython gh-86296), and these loops are
    woken by the very ``flush()`` that ``close()`` runs just before cancelling
    them, so the agent hung on SIGTERM.  ``asyncio.timeout`` keeps it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class MembershipDriver:
    def __init__(
        self,
        *,
        config: SwimConfig,
        node_id: str,
        meta: NodeMeta,
        send: Callable[[str, object, bool], None],
        use_task_cpu: bool,
        on_conflict: Callable[[str], None] | None = None,
    ) -> None:
        """``send(addr, msg, reliable)`` reaches a peer (the router);
        ``on_conflict(addr)`` is called once if our node id is alive elsewhere."""
        self._swim = SwimNode(config, node_id, meta, random.Random(), time.monotonic())
        self.candidates = CandidateSet()
        self.sampler = LoadSampler(cpu_reader=affinity_cpu_reader())
        self.lag = LoopLagMonitor()
        self.latest_load: LoadSample | None = None
        self.cpu_now = 0.0
        self._send = send
        # Listeners (``connect``): the components they feed are built after this one.
        self._on_events: Callable[[list[MemberEvent]], None] = _ignore_events
        self._task_load: Callable[[], tuple[float, int, int]] = _no_task_load
        self._use_task_cpu = use_task_cpu
        self._on_conflict = on_conflict
        self._claimed_logged: str | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rejoin_attempt = 0
        self._rejoin_wake = asyncio.Event()
        self._partitioned_at: float | None = None
        self.last_recovery_s: float | None = None
        """Seconds from our last ``partitioned`` event to the following ``healed``."""

    def connect(
        self,
        *,
        on_events: Callable[[list[MemberEvent]], None],
        task_load: Callable[[], tuple[float, int, int]],
    ) -> None:
        """Attach the listeners, before ``start``: ``on_events(events)`` for member
        changes, ``task_load()`` -> (task CPU fraction, queued, running) for the
        load this node gossips."""
        self._on_events = on_events
        self._task_load = task_load

    def start(self, seeds: list[str]) -> None:
        for seed in seeds:
            self.candidates.add(seed, "seed")
        self.lag.start()
        self._tasks = [
            asyncio.create_task(self._timer_loop(), name="swim-timers"),
            asyncio.create_task(self._load_loop(), name="swim-load"),
            asyncio.create_task(self._rejoin_loop(), name="swim-rejoin"),
        ]

    async def close(self, leave_timeout: float = 2.0) -> None:
        """Leave gracefully (gossip our departure), then stop.  After a conflict
        (our node id is alive elsewhere), or if never started, stop without a word."""
        if not self._tasks:
            return
        if not self.silenced:
            self._swim.leave(time.monotonic())
            self.flush()
        deadline = time.monotonic() + leave_timeout
        while not self.silenced and not self._swim.leave_complete and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self._swim.tick(time.monotonic())
            self.flush()
        self.lag.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------ I/O

    @property
    def silenced(self) -> bool:
        """True once another live process was found with our node id."""
        return self._swim.identity.conflict is not None

    def on_message(self, from_addr: str, msg: object) -> None:
        if self.silenced:
            return
        self._swim.step(time.monotonic(), from_addr, msg)
        self.flush()

    def flush(self) -> None:
        identity = self._swim.identity
        if identity.conflict is not None:
            if self._on_conflict is not None:
                callback, self._on_conflict = self._on_conflict, None
                callback(identity.conflict)
            return
        if identity.claimed_at is not None and identity.claimed_at != self._claimed_logged:
            self._claimed_logged = identity.claimed_at
            log.warning("a process at %s uses our node id %s (a copy of our data dir?); "
                        "it should refuse to run", identity.claimed_at, self._swim.node_id)
        rd: SwimReady | None = self._swim.ready()
        if rd is None:
            return
        for out in rd.outbound:
            self._send(out.to, out.msg, out.reliable)
        self._swim.advance(rd)
        if rd.events:
            for event in rd.events:
                if event.kind == "partitioned":
                    self._partitioned_at = time.monotonic()
                elif event.kind == "healed" and self._partitioned_at is not None:
                    self.last_recovery_s = round(time.monotonic() - self._partitioned_at, 3)
                    self._partitioned_at = None
            self._on_events(rd.events)
        self._wake.set()

    def add_candidate(self, addr: str) -> None:
        if self.candidates.add(addr, "mdns"):
            self._rejoin_attempt = 0
            self._rejoin_wake.set()

    def unreachable(self, addr: str) -> None:
        self._swim.unreachable(time.monotonic(), addr)

    def connection_lost(self, addr: str) -> None:
        """A stream connection with ``addr`` ended: the core may probe it early."""
        self._swim.connection_lost(time.monotonic(), addr)
        self._wake.set()

    def refused(self, addr: str) -> None:
        """A connect to ``addr`` was refused: the core may count it towards a
        running suspicion (swim/rules.py, "Refused")."""
        self._swim.refused(time.monotonic(), addr)
        self._wake.set()

    # ------------------------------------------------------------ loops

    async def _timer_loop(self) -> None:
        while True:
            now = time.monotonic()
            self._swim.tick(now)
            self.flush()
            self._wake.clear()
            delay = max(MIN_SLEEP, self._swim.next_deadline() - time.monotonic())
            await _wait_event(self._wake, delay)

    async def _load_loop(self) -> None:
        while True:
            await asyncio.sleep(LOAD_INTERVAL)
            now = time.monotonic()
            sample = self.sampler.sample(now)
            self.latest_load = sample
            task_cpu, queued, running = self._task_load()
            # On hosts that share one kernel (the loopback demo, namespace test
            # hosts) system CPU is the same for every agent; the CPU used by
            # this agent's own task processes is what tells them apart.
            cpu = task_cpu if self._use_task_cpu else sample.cpu_ewma
            self.cpu_now = cpu
            self._swim.update_load(
                now,
                NodeLoad(
                    cpu=round(cpu, 4),
                    load1=round(sample.load1, 3),
                    mem_free=sample.mem_free,
                    mem_percent=round(100.0 - sample.mem_free_pct, 2),
                    queued=queued,
                    running=running,
                ),
            )
            self._swim.note_local_health(sample.cpu, self.lag.p99())
            self.flush()

    async def _rejoin_loop(self) -> None:
        while True:
            alive_addrs = {
                m.addr for m in self._swim.members() if m.state in ("alive", "suspect")
            }
            pending = self.candidates.pending(alive_addrs)
            if pending:
                self._swim.join(time.monotonic(), pending)
                self.flush()
                self._rejoin_attempt += 1
            else:
                self._rejoin_attempt = 0
            delay = backoff_delay(self._rejoin_attempt, REJOIN_BASE, REJOIN_CAP)
            self._rejoin_wake.clear()
            await _wait_event(self._rejoin_wake, delay)

    # ------------------------------------------------------------ views

    def members(self) -> list[MemberView]:
        return self._swim.members()

    def member(self, node_id: str) -> MemberView | None:
        return self._swim.member(node_id)

    def addr_of(self, node_id: str) -> str | None:
        """Where ``node_id`` listens, if it is a member (the router's directory)."""
        member = self._swim.member(node_id)
        return member.addr if member is not None else None

    @property
    def partitioned(self) -> bool:
        return self._swim.partitioned

    @property
    def health_score(self) -> int:
        return self._swim.health_score

    @property
    def cluster_avg_cpu(self) -> float | None:
        return self._swim.cluster_avg_cpu

    def loop_lag_p99(self) -> float:
        """The event loop's 99th-percentile lag over the monitor's window, seconds."""
        return self.lag.p99()

    def use_links(self, score: HelperScore, observer: ProbeObserver) -> None:
        """Rank indirect-probe helpers by ``score`` and report probe Ack paths to
        ``observer`` (the router's link state, issue 20)."""
        self._swim.helper_score = score
        self._swim.probe_observer = observer

    def set_role(self, role: str) -> None:
        """Advertise this node's Raft role (``none``/``learner``/``voter``/``leader``...)."""
        self.update_meta(role=role)

    def update_meta(self, **changes: Any) -> None:
        me = self._swim.member(self._swim.node_id)
        assert me is not None
        meta = dataclasses.replace(me.meta, **changes)
        if meta != me.meta:
            self._swim.update_meta(meta)
            self.flush()
