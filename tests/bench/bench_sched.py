"""Placement decisions per second, policy only (no network, no consensus).

Run: ``python tests/bench/bench_sched.py``.  Prints, from the same run:
* decisions/s of each strategy (auction with gossip, auction with bids,
  capability, hash) for 3, 16 and 100 hosts, single and in batches (``place_many``);
* the comparison: a naive round-robin over the same hosts (the cost floor of any
  placement) and the issue's target of 2,000 *committed* decisions/s;
* the state machine applying ``task.assign`` entries (every decision is one),
  so the policy + apply budget can be compared with that target;
* planning rounds/s for stealing and rebalance over 100 hosts x 1,000 tasks.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)

from agent.sched import (
    Bid,
    ClusterSnapshot,
    HeatState,
    NodeView,
    SchedConfig,
    Strategy,
    TaskView,
    place,
    place_many,
    plan_rebalance,
    plan_steals,
    ring_for,
)
from agent.state import StateMachine, cmd_task_assign, cmd_task_submit, task_spec

TARGET_COMMITTED_PER_S = 2000.0
CAPS = ["gpu", "ssd", "avx512", "arm", "big-mem"]


def cluster(n: int, rng: random.Random) -> ClusterSnapshot:
    nodes = tuple(
        NodeView(
            f"{i:032x}",
            f"n{i}",
            # host 0 has every capability so each task has somewhere to go
            caps=frozenset(CAPS if i == 0 else rng.sample(CAPS, rng.randint(0, 3))),
            slots=rng.choice([2, 4, 8]),
            running=rng.randint(0, 2),
            queued=rng.randint(0, 3),
            cpu=rng.random(),
            mem_free=rng.random(),
            success_rate=rng.uniform(0.8, 1.0),
            mean_duration=rng.uniform(1, 10),
        )
        for i in range(n)
    )
    return ClusterSnapshot(nodes, (), 0.0)


def tasks(count: int, rng: random.Random, strategy: Strategy) -> list[TaskView]:
    return [
        TaskView(
            f"t{i}",
            caps=frozenset(rng.sample(CAPS[:2], rng.randint(0, 1))),
            key=f"key-{i}",
            strategy=strategy,
            created_at=float(i),
        )
        for i in range(count)
    ]


def rate(fn: Callable[[], int], seconds: float = 0.6) -> float:
    """Operations per CPU second of ``fn`` (which returns how many it did), best of 3.

    CPU time of this process, not wall time: the policies are single-threaded pure
    functions, and on a shared box wall time would mostly measure the neighbours."""
    best = 0.0
    for _ in range(3):
        done, start = 0, time.process_time()
        while time.process_time() - start < seconds / 3:
            done += fn()
        best = max(best, done / (time.process_time() - start))
    return best


def bench_single(snap: ClusterSnapshot, batch: list[TaskView], cfg: SchedConfig) -> float:
    ring = ring_for(snap, cfg)
    it = itertools.cycle(batch)

    def one() -> int:
        place(next(it), snap, cfg, None, ring)
        return 1

    return rate(one)


def bench_bids(snap: ClusterSnapshot, batch: list[TaskView], cfg: SchedConfig) -> float:
    rng = random.Random(2)
    bids = {
        t.id: {
            n.id: Bid(1, t.id, n.id, 0, rng.random(), rng.random(), n.slots, 0, 0, 1.0, None)
            for n in snap.nodes
        }
        for t in batch
    }
    it = itertools.cycle(batch)

    def one() -> int:
        task = next(it)
        place(task, snap, cfg, bids[task.id])
        return 1

    return rate(one)


def bench_burst(snap: ClusterSnapshot, burst: list[TaskView], cfg: SchedConfig) -> float:
    return rate(lambda: len(place_many(burst, snap, cfg)), seconds=1.5)


def bench_round_robin(snap: ClusterSnapshot) -> float:
    rr = itertools.cycle([n.id for n in snap.nodes if n.schedulable])
    return rate(lambda: (next(rr), 1)[1])


def main() -> None:
    rng = random.Random(1)
    cfg = SchedConfig()
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs; rates are per CPU second")
    print(f"{'policy':<34}{'hosts':>6}{'decisions/s':>14}")
    for n in (3, 16, 100):
        snap = cluster(n, rng)
        for strategy in Strategy:
            r = bench_single(snap, tasks(200, rng, strategy), cfg)
            print(f"{strategy.value + ' (single)':<34}{n:>6}{r:>14,.0f}")
        r = bench_bids(snap, tasks(200, rng, Strategy.AUCTION), cfg)
        print(f"{'auction with fresh bids':<34}{n:>6}{r:>14,.0f}")
        r = bench_burst(snap, tasks(1000, rng, Strategy.AUCTION), cfg)
        print(f"{'auction burst (place_many 1000)':<34}{n:>6}{r:>14,.0f}")
        r = bench_round_robin(snap)
        print(f"{'comparison: naive round-robin':<34}{n:>6}{r:>14,.0f}")

    # the state machine applying the decisions (one committed entry each)
    sm = StateMachine()
    index = 0
    for _ in range(20_000):
        index += 1
        sm.apply(index, cmd_task_submit(task_spec(["true"]), "", 0.0))
    assigns = [cmd_task_assign(f"t{i}", "n1", 1, "auction", "", 1.0) for i in range(1, 20_001)]
    start = time.process_time()
    for data in assigns:
        index += 1
        sm.apply(index, data)
    applied = len(assigns) / (time.process_time() - start)
    print(f"\nstate machine apply (task.assign): {applied:,.0f} entries/s")
    print(f"comparison: issue target {TARGET_COMMITTED_PER_S:,.0f} committed decisions/s")

    # planning rounds over a big, skewed cluster
    snap = cluster(100, rng)
    nodes = list(snap.nodes)
    waiting = []
    for i in range(1000):
        node = nodes[i % 10]  # ten busy hosts
        waiting.append(TaskView(f"w{i}", state="assigned", node=node.id, created_at=float(i)))
    counts: dict[str, int] = {}
    for t in waiting:
        counts[t.node or ""] = counts.get(t.node or "", 0) + 1
    skewed = ClusterSnapshot(
        tuple(
            NodeView(n.id, n.name, caps=n.caps, slots=16, queued=counts.get(n.id, 0),
                     cpu=0.95 if counts.get(n.id) else 0.1)
            for n in nodes
        ),
        tuple(waiting),
        1000.0,
    )  # fmt: skip
    heat = HeatState(
        {n.id: 0.0 for n in skewed.nodes[:10]}, frozenset(n.id for n in skewed.nodes[:10])
    )
    r = rate(lambda: (plan_steals(skewed, cfg), 1)[1], seconds=1.5)
    print(f"plan_steals rounds/s (100 hosts, 1000 waiting): {r:,.1f}")
    r = rate(lambda: (plan_rebalance(skewed, heat, cfg), 1)[1], seconds=1.5)
    print(f"plan_rebalance rounds/s (100 hosts, 1000 waiting): {r:,.1f}")


if __name__ == "__main__":
    main()
