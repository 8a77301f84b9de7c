"""TUI under load: 200 members and 10,000 consensus entries streaming at 500 events/s.

Run: ``.venv/bin/python tests/bench/bench_tui.py [--seconds S] [--rate R]``.

The real app, model and screens run headless (Textual's test driver) against
the replay client from tests/tui.  Each frame Textual composes is also turned
into terminal bytes (``render_segments``), the work a real terminal run does,
so frame costs are not flattered by the headless driver.  Measured, each once
idle (connected, no events) and once under the stream, in the same run:

* keypress → next frame: a cursor move in the 200-row member table, and a
  screen switch (Mesh ↔ Consensus);
* event-loop lag: how late a 10 ms sleep wakes up, p50/p99/max (target p99 ≤ 50 ms);
* RSS of the process at the end (and peak).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import time
from typing import Any

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)
import psutil
from textual.pilot import Pilot
from tui.replay_client import ReplayClient

from meshtui.app import MeshApp

MEMBERS = 200
ENTRIES = 10_000
LAG_TARGET_MS = 50.0


def make_snapshots(rng: random.Random, count: int = 8) -> list[dict[str, Any]]:
    names = [f"node{i:03d}" for i in range(MEMBERS)]
    snaps = []
    for _ in range(count):
        rows = [
            {
                "name": n,
                "id": f"{i:032x}",
                "addr": f"10.0.{i // 250}.{i % 250}:7900",
                "state": "alive" if i % 37 else "suspect",
                "cpu": round(rng.uniform(0, 1), 3),
                "mem": round(rng.uniform(0.1, 0.9), 3),
                "load1": 1.0,
                "caps": ["gpu"] if i % 5 == 0 else [],
                "slots": 8,
                "tasks": rng.randint(0, 8),
                "role": "voter" if i < 5 else "learner",
                "rtt_ms": round(rng.uniform(0.1, 30), 2),
                "version": "0.1.0",
            }
            for i, n in enumerate(names)
        ]
        status = {
            "node": names[0],
            "members": rows,
            "consensus": {
                "engine": "raft",
                "role": "follower",
                "term": 7,
                "leader": names[1],
                "commit_index": 0,
                "voters": names[:5],
            },
            "tasks": {"queued": 10, "running": 100, "done": 1000, "failed": 3},
            "partitioned": False,
            "read_only": False,
        }
        snaps.append({"status": status, "members": rows, "task.list": [], "proposal.list": []})
    return snaps


def make_events(rng: random.Random) -> list[dict[str, Any]]:
    """ENTRIES consensus entries, with member updates and task events mixed in."""
    events: list[dict[str, Any]] = []
    index = 0
    while index < ENTRIES:
        index += 1
        events.append(
            {
                "event": "consensus",
                "data": {
                    "kind": "entry",
                    "term": 7,
                    "index": index,
                    "summary": f"kv.put ns=bench key=k{index} ({rng.randint(10, 999)} bytes)",
                },
            }
        )
        if index % 10 == 0:
            i = rng.randrange(MEMBERS)
            events.append(
                {
                    "event": "members",
                    "data": {
                        "kind": "update",
                        "member": {"name": f"node{i:03d}", "cpu": round(rng.uniform(0, 1), 3)},
                    },
                }
            )
        if index % 25 == 0:
            tid = f"task{index:06d}"
            events.append(
                {
                    "event": "tasks",
                    "data": {
                        "kind": "finished",
                        "task": {
                            "id": tid,
                            "state": "succeeded",
                            "node": f"node{index % MEMBERS:03d}",
                            "epoch": 1,
                            "attempts": 1,
                            "migrations": 0,
                            "exit_code": 0,
                            "cmd": ["burn", str(index)],
                        },
                    },
                }
            )
    return events


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class FrameClock:
    """Wraps App._display: timestamps every composed frame after rendering its bytes."""

    def __init__(self, app: MeshApp) -> None:
        self.frames: list[float] = []
        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            original(screen, renderable)
            if renderable is not None:
                render = getattr(renderable, "render_segments", None)
                if render is not None:
                    render(app.console)
                self.frames.append(time.perf_counter())

        app._display = display  # type: ignore[method-assign]

    def next_after(self, t0: float) -> float | None:
        for t in self.frames:
            if t > t0:
                return t
        return None


class CallbackCpu:
    """Per event-loop callback CPU time (thread time): how long our own code holds the loop.

    Wall-clock lag also counts time spent waiting for a CPU on a busy box; this
    does not, so it isolates the app's share.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.enabled = False
        original = asyncio.events.Handle._run
        probe = self

        def run(handle: asyncio.events.Handle) -> None:
            if not probe.enabled:
                original(handle)
                return
            t = time.thread_time()
            original(handle)
            probe.samples.append((time.thread_time() - t) * 1000)

        asyncio.events.Handle._run = run  # type: ignore[method-assign]

    def take(self) -> list[float]:
        out, self.samples = self.samples, []
        return out


CALLBACK_CPU = CallbackCpu()


async def lag_probe(samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        samples.append((time.perf_counter() - t - 0.01) * 1000)


async def key_latencies(pilot: Pilot[None], clock: FrameClock, keys: list[str], rounds: int) -> list[float]:
    out = []
    for r in range(rounds):
        key = keys[r % len(keys)]
        t0 = time.perf_counter()
        await pilot.press(key)
        for _ in range(200):
            t = clock.next_after(t0)
            if t is not None:
                out.append((t - t0) * 1000)
                break
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)
    return out


async def phase(pilot: Pilot[None], clock: FrameClock, seconds: float) -> dict[str, Any]:
    """``seconds`` of hands-off running (lag measured alone), then the key latencies."""
    await pilot.press("1")
    cpu0, wall0, frames0 = time.process_time(), time.perf_counter(), len(clock.frames)
    lags: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(lags, stop))
    CALLBACK_CPU.take()
    CALLBACK_CPU.enabled = True
    await asyncio.sleep(seconds)
    CALLBACK_CPU.enabled = False
    held = CALLBACK_CPU.take()
    stop.set()
    await probe
    wall = time.perf_counter() - wall0
    cpu = (time.process_time() - cpu0) / wall * 100
    fps = (len(clock.frames) - frames0) / wall
    key_lags: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(key_lags, stop))
    cursor = await key_latencies(pilot, clock, ["down", "up"], 20)
    switch = await key_latencies(pilot, clock, ["2", "1"], 10)
    stop.set()
    await probe
    return {
        "cursor": cursor,
        "switch": switch,
        "lag": lags,
        "held": held,
        "key_lag": key_lags,
        "cpu": cpu,
        "fps": fps,
    }


async def feeder(rc: ReplayClient, events: list[dict[str, Any]], rate: float) -> float:
    """Put events on the replay queue at ``rate``/s in 10 ms ticks; returns the achieved rate."""
    start = time.perf_counter()
    sent = 0
    while sent < len(events):
        due = min(len(events), int((time.perf_counter() - start) * rate) + 1)
        rc.feed(*events[sent:due])
        sent = due
        await asyncio.sleep(0.01)
    return sent / (time.perf_counter() - start)


def report(name: str, res: dict[str, Any]) -> None:
    c, s, lag = res["cursor"], res["switch"], res["lag"]
    print(
        f"  {name:<8} keypress→frame cursor p50 {pct(c, 0.5):6.1f} ms  p99 {pct(c, 0.99):6.1f} ms"
        f" | screen switch p50 {pct(s, 0.5):6.1f} ms  max {max(s, default=float('nan')):6.1f} ms"
        f" | loop lag (hands off) p50 {pct(lag, 0.5):5.1f} ms  p99 {pct(lag, 0.99):6.1f} ms"
        f"  max {max(lag, default=float('nan')):6.1f} ms  (n={len(lag)})"
        f" | CPU {res['cpu']:4.0f}% of a core, {res['fps']:.1f} frames/s"
        f" | lag while keys pressed p99 {pct(res['key_lag'], 0.99):6.1f} ms"
    )
    held = res["held"]
    print(
        f"  {'':<8} loop held by one callback (CPU time, hands off): p99 {pct(held, 0.99):.1f} ms"
        f"  p99.9 {pct(held, 0.999):.1f} ms  max {max(held, default=float('nan')):.1f} ms"
        f"  (n={len(held)})"
    )


async def bare_loop_lag(seconds: float) -> list[float]:
    """The comparison figure: the same lag probe in an event loop with no app at all."""
    lags: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(lags, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await probe
    return lags


async def main(seconds_idle: float, rate: float) -> int:
    baseline_before = await bare_loop_lag(3.0)
    rng = random.Random(1)
    rc = ReplayClient(make_snapshots(rng), [], cycle=True)
    events = make_events(rng)
    app = MeshApp(rc.factory, "bench", status_interval=2.0, tune_gc=True)  # as run_app does
    clock = FrameClock(app)
    proc = psutil.Process()
    async with app.run_test(size=(200, 60)) as pilot:
        for _ in range(500):
            if app.model.connection.state == "connected" and len(app.model.members) == MEMBERS:
                break
            await pilot.pause(0.02)
        idle = await phase(pilot, clock, seconds_idle)
        feed = asyncio.create_task(feeder(rc, events, rate))
        # Hands-off over the first half of the stream, keys while the rest streams.
        loaded = await phase(pilot, clock, len(events) / rate / 2)
        achieved = await feed
        for _ in range(500):
            if rc.queue.empty():
                break
            await pilot.pause(0.02)
        await pilot.pause(0.3)
        rss = proc.memory_info().rss / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"TUI bench: {MEMBERS} members, {len(events)} events "
            f"({ENTRIES} consensus entries) at {achieved:.0f} events/s, 200x60 terminal"
        )
        report("idle", idle)
        report("loaded", loaded)
        baseline = baseline_before + await bare_loop_lag(3.0)
        print(
            f"  baseline: bare asyncio loop, no app, same box, same run: lag p50 "
            f"{pct(baseline, 0.5):.1f} ms  p99 {pct(baseline, 0.99):.1f} ms  "
            f"max {max(baseline):.1f} ms (n={len(baseline)})"
        )
        p99 = pct(loaded["lag"], 0.99)
        held99 = pct(loaded["held"], 0.99)
        verdict = "PASS" if p99 <= LAG_TARGET_MS else "FAIL"
        print(f"  loop-lag p99 under load {p99:.1f} ms vs target {LAG_TARGET_MS:.0f} ms: {verdict}")
        print(
            f"  app's own share: longest-callback CPU p99 {held99:.1f} ms vs target "
            f"{LAG_TARGET_MS:.0f} ms: {'PASS' if held99 <= LAG_TARGET_MS else 'FAIL'}"
        )
        print(
            f"  folded {app.model.events_seen} events, log lines kept {len(app.model.log)}, "
            f"frames {len(clock.frames)}, dropped {app.dropped_events}"
        )
        print(f"  RSS {rss:.0f} MiB now, peak {peak:.0f} MiB")
        load = psutil.getloadavg()
        print(
            f"  box: {psutil.cpu_count()} CPUs, load average {load[0]:.1f} during the run "
            "(lag and latency include waiting for a CPU; CPU % is this process's own work)"
        )
        return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.idle_seconds, args.rate)))
