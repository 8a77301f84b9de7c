"""No pile-up: a host with no free slot never wins a task while another host has one.

The auction's CPU term (0.3) outweighs its whole queue term (at most 0.05 between
two hosts), and a just-restarted host reads 0 CPU until its tasks run.  Before the
free-slot rule, such a host won every task of a burst (and 650-790 of 1,000 in
bench_tasks_netns); test_tasks_netns' kill test saw 3 of 6 long tasks put on one
2-slot host, so they never all ran at once.  These tests place the burst each way
the leader does: in one round, one round per submit (each decision committed before
the next round), with a restarted host's lagging bid, and with a placement that
commits while the round's bids are out."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import replace

import pytest

from agent.runtime.scheduler import LeaderScheduler
from agent.sched import (
    Bid,
    BidRequest,
    ClusterSnapshot,
    NodeView,
    SchedConfig,
    TaskView,
    place_many,
    plan_round,
    run_auction,
)
from agent.sched.balance import HeatState
from agent.sched.placement import is_eligible, queue_wait
from agent.state import decode_command
from agent.state.commands import TaskPlace

CFG = SchedConfig()


def hosts(cold: str = "a", cpu: float = 0.5) -> tuple[NodeView, ...]:
    """Three 2-slot hosts; ``cold`` reads 0 CPU (just restarted), the others ``cpu``."""
    return tuple(NodeView(n, slots=2, cpu=0.0 if n == cold else cpu) for n in "abc")


def burst(n: int, prefix: str = "t") -> list[TaskView]:
    return [TaskView(f"{prefix}{i:03}", created_at=float(i)) for i in range(n)]


def placed(entry: TaskPlace) -> list[tuple[str, str]]:
    return [(task, entry.nodes[host]) for task, host in zip(entry.tasks, entry.hosts, strict=True)]


def test_queue_wait_is_zero_while_a_slot_is_free_then_grows_per_slot() -> None:
    assert [queue_wait(2, busy) for busy in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.5]
    assert queue_wait(4, 4) == 0.25 and queue_wait(0, 0) == 0.0  # slots below 1 count as 1


def test_one_round_gives_no_host_more_than_its_slots_while_others_have_free_slots() -> None:
    placed = place_many(burst(6), ClusterSnapshot(hosts()))
    assert Counter(p.node for p in placed) == {"a": 2, "b": 2, "c": 2}


def test_one_round_per_submit_with_each_decision_committed_spreads_too() -> None:
    """Each submit wakes its own round: the next round sees the last one's placement in
    the committed counts (``queued``), not as a decision of its own."""
    nodes = list(hosts())
    per_host: Counter[str] = Counter()
    for task in burst(6):
        (decision,) = place_many([task], ClusterSnapshot(tuple(nodes)))
        assert decision.node is not None
        per_host[decision.node] += 1
        nodes = [replace(n, queued=n.queued + 1) if n.id == decision.node else n for n in nodes]
    assert per_host == {"a": 2, "b": 2, "c": 2}


def test_a_restarted_hosts_lagging_bid_does_not_win_a_third_task() -> None:
    """The cold host bids 0 CPU and an empty queue (it has not applied its placements
    yet); the leader's committed state gives it 2 tasks: it is full and loses to hosts
    at 0.9 CPU with a free slot."""
    nodes = (NodeView("a", slots=2, queued=2), *hosts(cpu=0.9)[1:])
    bids = {
        "a": Bid(1, "", "a", 0, 0.0, 1.0, 2, 0, 0, 1.0, None),
        "b": Bid(1, "", "b", 0, 0.9, 1.0, 2, 1, 0, 1.0, None),
        "c": Bid(1, "", "c", 0, 0.9, 1.0, 2, 0, 0, 1.0, None),
    }
    assert run_auction(TaskView("t"), ClusterSnapshot(nodes), bids) == "c"


def test_among_hosts_with_free_slots_cpu_still_decides() -> None:
    nodes = (NodeView("a", slots=4, running=3, cpu=0.0), NodeView("b", slots=4, cpu=0.5))
    assert run_auction(TaskView("t"), ClusterSnapshot(nodes)) == "a"


def test_a_burst_past_every_slot_queues_evenly_per_slot() -> None:
    """Once every host is full, the shortest queue per slot wins, whatever the CPU."""
    nodes = (*hosts(), NodeView("d", slots=4, cpu=0.9))
    placed = Counter(p.node for p in place_many(burst(50), ClusterSnapshot(nodes)))
    assert placed == {"a": 10, "b": 10, "c": 10, "d": 20}


def test_rounds_overlapping_their_proposals_spread_a_burst() -> None:
    """Rounds woken one per submit while earlier placements are still in the log
    (``placing``) count those placements on their hosts' slots."""
    snap_nodes = hosts()
    tasks: list[TaskView] = []
    placing: dict[str, str] = {}
    for task in burst(6):
        tasks.append(task)
        snap = ClusterSnapshot(snap_nodes, tuple(tasks), 1.0)
        busy = frozenset(placing)
        plan = plan_round(snap, HeatState(), CFG, {}, busy, 10.0, None, placing=placing)
        placing.update((d.task, d.node) for d in plan.decisions)  # type: ignore[union-attr]
    assert Counter(placing.values()) == {"a": 2, "b": 2, "c": 2}


async def test_a_placement_that_commits_while_bids_are_out_still_counts() -> None:
    """The snapshot is taken before the bids are asked for; a placement committed while
    they are out is in neither the snapshot's counts nor (once settled) in flight.  The
    round counts what was in flight when its snapshot was taken."""
    queued = burst(3, "q")
    snap = ClusterSnapshot(hosts(), tuple(queued[:2]), 1000.0)
    proposed: list[TaskPlace] = []
    commit = asyncio.Event()
    settled = 0

    async def propose(data: bytes) -> None:
        nonlocal settled
        body = decode_command(data).body
        assert isinstance(body, TaskPlace)
        proposed.append(body)
        await commit.wait()
        settled += 1

    async def answer(node: str, request: BidRequest) -> None:
        if proposed:  # the second round: the first round's entry commits now
            commit.set()
            while not settled:
                await asyncio.sleep(0)
            for _ in range(5):  # let the proposal's finally run
                await asyncio.sleep(0)
        sched.on_sched_message(node, Bid(request.request_id, "", node, 0, 0.5, 1.0, 2, 0, 0,
                                         1.0, None))

    pending: set[asyncio.Task[None]] = set()

    def send(node: str, msg: object) -> None:
        assert isinstance(msg, BidRequest)
        task = asyncio.create_task(answer(node, msg))
        pending.add(task)
        task.add_done_callback(pending.discard)

    sched = LeaderScheduler(
        node_id="a", interval=60.0, bid_timeout=5.0, lease=10.0,
        is_leader=lambda: True, has_quorum=lambda: True, snapshot=lambda: snap,
        sched_config=SchedConfig, propose=propose, send_to_node=send,
        reply=lambda addr, msg: None,
        local_bid=lambda request_id, task, epoch: Bid(request_id, "", "a", 0, 0.0, 1.0, 2, 0, 0,
                                                      1.0, None),
        registered_name=lambda node_id: None,
    )  # fmt: skip
    await sched.run_round()
    for _ in range(5):
        await asyncio.sleep(0)
    assert placed(proposed[0]) == [("q000", "a"), ("q001", "a")]
    # The next submit's round: its snapshot still shows q000/q001 queued (not applied).
    snap = ClusterSnapshot(hosts(), tuple(queued), 1000.0)
    await sched.run_round()
    for _ in range(5):
        await asyncio.sleep(0)
    assert placed(proposed[1]) == [("q002", "b")]
    await sched.close()


@pytest.mark.parametrize("seed", range(30))
def test_no_decision_goes_to_a_full_host_while_an_eligible_host_has_a_free_slot(seed: int) -> None:
    """Random hosts (CPU, memory, history, counts, capabilities) and a random burst:
    every auction decision lands on a host with a free slot whenever an eligible host
    has one at that moment, and otherwise on one with the shortest queue per slot."""
    rng = random.Random(seed)
    nodes = {
        f"n{i}": NodeView(
            f"n{i}", caps=frozenset(rng.sample(["gpu", "ssd"], rng.randint(0, 2))),
            slots=rng.randint(1, 4), running=rng.randint(0, 3), queued=rng.randint(0, 2),
            cpu=rng.random(), mem_free=rng.random(), success_rate=rng.random(),
            mean_duration=rng.choice([None, rng.uniform(1, 9)]),
        )
        for i in range(rng.randint(2, 6))
    }
    tasks = [
        TaskView(f"t{i:03}", caps=frozenset(rng.sample(["gpu"], rng.randint(0, 1))),
                 created_at=float(i))
        for i in range(rng.randint(1, 40))
    ]  # fmt: skip
    busy = {n.id: n.running + n.queued for n in nodes.values()}
    by_id = {t.id: t for t in tasks}
    for decision in place_many(tasks, ClusterSnapshot(tuple(nodes.values()))):
        task = by_id[decision.task]
        eligible = [n for n in nodes.values() if is_eligible(task, n, CFG)]
        if not eligible:
            assert decision.node is None
            continue
        assert decision.node is not None
        waits = {n.id: queue_wait(n.slots, busy[n.id]) for n in eligible}
        assert waits[decision.node] == min(waits.values()), (seed, decision, waits)
        busy[decision.node] += 1
