"""Table tests for work stealing, hot/cold rebalance with hysteresis and rate limits,
failover and drain planning."""

from __future__ import annotations

import dataclasses
import random

import pytest

from agent.sched import (
    ClusterSnapshot,
    HeatState,
    Move,
    MoveReason,
    NodeView,
    SchedConfig,
    Strategy,
    TaskView,
    plan_drain,
    plan_failover,
    plan_rebalance,
    plan_steals,
    settle_heat,
    update_heat,
)

CFG = SchedConfig()


def waiting(tid: str, node: str, **kw: object) -> TaskView:
    return TaskView(tid, state="assigned", node=node, **kw)  # type: ignore[arg-type]


def cluster(
    queues: dict[str, int], cpu: dict[str, float] | None = None, slots: int = 4, now: float = 1000.0
) -> ClusterSnapshot:
    cpu = cpu or {}
    nodes = tuple(
        NodeView(n, slots=slots, queued=q, cpu=cpu.get(n, 0.0)) for n, q in queues.items()
    )
    tasks = tuple(
        waiting(f"{n}-{i}", n, created_at=float(i)) for n, q in queues.items() for i in range(q)
    )
    return ClusterSnapshot(nodes, tasks, now)


def apply_moves(snap: ClusterSnapshot, moves: list[Move]) -> ClusterSnapshot:
    """What the state machine would do with the moves (epoch+1, move counted)."""
    by_task = {m.task: m for m in moves}
    tasks = []
    for t in snap.tasks:
        m = by_task.get(t.id)
        if m is not None and m.to is not None:
            t = dataclasses.replace(
                t, node=m.to, epoch=t.epoch + 1, load_moves=t.load_moves + 1, last_move_at=snap.now
            )
        tasks.append(t)
    counts = {n.id: 0 for n in snap.nodes}
    for t in tasks:
        if t.waiting_on_node and t.node is not None:
            counts[t.node] += 1
    nodes = tuple(dataclasses.replace(n, queued=counts[n.id]) for n in snap.nodes)
    return ClusterSnapshot(nodes, tuple(tasks), snap.now)


@pytest.mark.parametrize(
    ("queues", "cpu", "expected_moves"),
    [
        ({"a": 6, "b": 0}, {}, 3),  # 6/0 → 3/3
        ({"a": 1, "b": 0}, {}, 0),  # below the margin
        ({"a": 2, "b": 0}, {}, 1),  # exactly the margin
        ({"a": 5, "b": 4}, {}, 0),
        ({"a": 6, "b": 0}, {"b": 0.5}, 0),  # thief too busy
        ({"a": 6, "b": 0}, {"b": 0.29}, 3),
    ],
)
def test_steal_table(queues: dict[str, int], cpu: dict[str, float], expected_moves: int) -> None:
    moves = plan_steals(cluster(queues, cpu, slots=8), CFG)
    assert len(moves) == expected_moves
    assert all(m.reason is MoveReason.STEAL and m.src == "a" and m.to == "b" for m in moves)


def test_steal_needs_a_free_slot() -> None:
    snap = cluster({"a": 8, "b": 0})
    nodes = (snap.nodes[0], dataclasses.replace(snap.nodes[1], running=4))  # b: 4/4 slots busy
    assert plan_steals(ClusterSnapshot(nodes, snap.tasks, snap.now)) == []


def test_steal_takes_lowest_priority_newest_first_and_respects_caps() -> None:
    nodes = (NodeView("a", slots=8, queued=4), NodeView("b", slots=8))
    tasks = (
        waiting("hi", "a", priority=5, created_at=1.0),
        waiting("old", "a", created_at=1.0),
        waiting("new", "a", created_at=2.0),
        waiting("gpu", "a", caps=frozenset({"gpu"}), created_at=3.0, priority=-1),
    )
    moves = plan_steals(ClusterSnapshot(nodes, tasks, 10.0))
    # 4-0 → 3-1 (2 ≥ margin) → 2-2: two steals, lowest priority and newest first; "gpu" is
    # the lowest priority but b lacks the capability, "hi" would be taken last.
    assert [m.task for m in moves] == ["new", "old"]


def test_steal_margin_prevents_ping_pong_over_many_rounds() -> None:
    rng = random.Random(7)
    for round_seed in range(50):
        queues = {f"n{i}": rng.randint(0, 12) for i in range(5)}
        snap = cluster(queues, slots=32)
        total_moves = 0
        seen_pairs: set[tuple[str, str, str]] = set()
        for _ in range(20):
            moves = plan_steals(
                snap, dataclasses.replace(CFG, min_move_interval=0.0, max_moves_per_task=100)
            )
            for m in moves:
                assert (m.task, m.to, m.src) not in seen_pairs, f"seed {round_seed}: bounce {m}"
                assert m.src is not None and m.to is not None
                seen_pairs.add((m.task, m.src, m.to))
            total_moves += len(moves)
            snap = apply_moves(snap, moves)
            if not moves:
                break
        else:
            pytest.fail(f"seed {round_seed}: stealing did not converge")
        q = [n.queued for n in snap.nodes]
        assert max(q) - min(q) < CFG.steal_margin, f"seed {round_seed}: {q}"
        assert total_moves <= sum(queues.values())


def test_steal_rate_limit_per_task() -> None:
    snap = cluster({"a": 4, "b": 0})
    recently = tuple(dataclasses.replace(t, load_moves=1, last_move_at=990.0) for t in snap.tasks)
    assert plan_steals(ClusterSnapshot(snap.nodes, recently, 1000.0)) == []  # 10 s < 30 s
    assert len(plan_steals(ClusterSnapshot(snap.nodes, recently, 1020.5))) == 2
    worn = tuple(dataclasses.replace(t, load_moves=2) for t in snap.tasks)
    assert plan_steals(ClusterSnapshot(snap.nodes, worn, 1000.0)) == []  # max 2 moves


def snap_cpu(cpu: dict[str, float], now: float) -> ClusterSnapshot:
    return ClusterSnapshot(tuple(NodeView(n, cpu=c) for n, c in cpu.items()), (), now)


def test_heat_needs_a_window_and_has_hysteresis() -> None:
    cfg = dataclasses.replace(CFG, hot_window=10.0)
    heat = HeatState()
    timeline = [
        (0.0, 0.9, False),  # candidate
        (5.0, 0.95, False),  # still inside the window
        (10.0, 0.85, True),  # held > 0.8 for 10 s → hot
        (12.0, 0.75, True),  # below 0.8 but above 0.7: stays hot
        (14.0, 0.69, False),  # below 0.7: cool
        (15.0, 0.9, False),  # a new candidate period starts
        (20.0, 0.79, False),  # dipped below 0.8 before the window: reset
        (21.0, 0.9, False),
        (30.0, 0.9, False),
        (31.0, 0.9, True),
    ]
    for now, cpu, hot in timeline:
        heat = update_heat(heat, snap_cpu({"a": cpu}, now), cfg)
        assert ("a" in heat.hot) is hot, (now, cpu)
    assert heat.hot_for("a", 41.0) == pytest.approx(20.0)
    assert heat.hot_for("b", 41.0) == 0.0


def test_rebalance_moves_waiting_tasks_hot_to_cold() -> None:
    nodes = (
        NodeView("hot", slots=2, running=2, queued=3, cpu=0.95),
        NodeView("warm", slots=4, cpu=0.5),
        NodeView("cold1", slots=4, cpu=0.1, running=3),  # one free slot
        NodeView("cold2", slots=4, cpu=0.2),
    )
    tasks = (
        *(waiting(f"w{i}", "hot", created_at=float(i)) for i in range(3)),
        TaskView("r1", state="running", node="hot", restartable=False),
        TaskView("r2", state="running", node="hot", restartable=True),
    )
    snap = ClusterSnapshot(nodes, tasks, 100.0)
    heat = HeatState({"hot": 0.0}, frozenset({"hot"}))
    moves = plan_rebalance(snap, heat, CFG)
    assert [(m.task, m.to) for m in moves] == [
        ("w2", "cold1"),
        ("w1", "cold2"),
        ("w0", "cold2"),
        ("r2", "cold2"),
    ]
    assert all(m.reason is MoveReason.HOT_COLD and m.src == "hot" for m in moves)
    assert plan_rebalance(snap, HeatState(), CFG) == []  # not confirmed hot: nothing


def test_rebalance_moves_at_most_one_running_task_per_hot_node() -> None:
    nodes = (NodeView("hot", slots=4, running=3, cpu=0.9), NodeView("cold", slots=8))
    tasks = tuple(
        TaskView(f"r{i}", state="running", node="hot", restartable=True) for i in range(3)
    )
    moves = plan_rebalance(ClusterSnapshot(nodes, tasks, 0.0), HeatState({}, frozenset({"hot"})))
    assert len(moves) == 1


def test_a_host_that_gave_up_a_running_task_waits_a_hot_window_before_the_next() -> None:
    """Its CPU reading trails the move: one round later it still reads hot, and
    without settling it would lose its second burner too (hot -> idle, cold -> hot)."""
    nodes = (
        NodeView("hot", slots=2, running=2, cpu=0.95),
        NodeView("c1", slots=2),
        NodeView("c2", slots=2),
    )
    tasks = tuple(TaskView(f"r{i}", state="running", node="hot", restartable=True) for i in range(2))
    snap = ClusterSnapshot(nodes, tasks, 100.0)
    heat = update_heat(HeatState({"hot": 80.0}), snap, CFG)
    assert heat.hot == {"hot"}
    moves = plan_rebalance(snap, heat, CFG)
    assert [m.task for m in moves] == ["r0"] or [m.task for m in moves] == ["r1"]
    heat = settle_heat(heat, moves, snap)
    assert heat.hot == frozenset() and heat.since["hot"] == 100.0
    # Next round: the moved task is on c1 now, but "hot" still reads 0.95.
    moved = moves[0].task
    later = ClusterSnapshot(
        (dataclasses.replace(nodes[0], running=1), dataclasses.replace(nodes[1], running=1), nodes[2]),
        tuple(
            dataclasses.replace(t, node="c1", state="assigned") if t.id == moved else t for t in tasks
        ),
        100.5,
    )
    heat = update_heat(heat, later, CFG)
    assert plan_rebalance(later, heat, CFG) == []
    # Still reading hot a whole window later: then it may give up the next one.
    much_later = dataclasses.replace(later, now=100.0 + CFG.hot_window)
    heat = update_heat(heat, much_later, CFG)
    assert heat.hot == {"hot"}


def test_settling_ignores_queued_moves_and_other_reasons() -> None:
    heat = HeatState({"hot": 0.0, "x": 0.0}, frozenset({"hot", "x"}))
    snap = ClusterSnapshot(
        (NodeView("hot", slots=1), NodeView("x", slots=1)),
        (waiting("q", "hot"), TaskView("r", state="running", node="x", restartable=True)),
        50.0,
    )
    queued = [Move("q", "hot", "c", MoveReason.HOT_COLD, 1), Move("r", "x", "c", MoveReason.STEAL, 1)]
    assert settle_heat(heat, queued, snap) is heat


def test_rebalance_respects_rate_limit() -> None:
    nodes = (NodeView("hot", slots=1, queued=1, cpu=0.9), NodeView("cold", slots=8))
    t = waiting("t", "hot", load_moves=1, last_move_at=95.0)
    heat = HeatState({}, frozenset({"hot"}))
    assert plan_rebalance(ClusterSnapshot(nodes, (t,), 100.0), heat) == []
    assert len(plan_rebalance(ClusterSnapshot(nodes, (t,), 125.0), heat)) == 1


def test_failover_places_every_task_elsewhere_spreading_load() -> None:
    nodes = (
        NodeView("dead", alive=False, slots=4, running=2, queued=2),
        NodeView("a", slots=2),
        NodeView("b", slots=2),
        NodeView("gpu", slots=2, caps=frozenset({"gpu"}), alive=True),
    )
    tasks = (
        TaskView("t1", state="running", node="dead", epoch=3),
        TaskView("t2", state="running", node="dead"),
        waiting("t3", "dead"),
        waiting("t4", "dead", caps=frozenset({"tpu"})),
        TaskView("t5", state="succeeded", node="dead"),
        TaskView("t6", state="running", node="a"),
    )
    moves = plan_failover(ClusterSnapshot(nodes, tasks, 5.0), "dead")
    by_task = {m.task: m for m in moves}
    assert set(by_task) == {"t1", "t2", "t3", "t4"}
    assert by_task["t4"].to is None  # nobody has tpu: back to the queue
    assert by_task["t1"].epoch == 3 and by_task["t1"].reason is MoveReason.FAILOVER
    targets = [by_task[t].to for t in ("t1", "t2", "t3")]
    assert "dead" not in targets and len(set(targets)) == 3


def test_failover_ignores_rate_limit_and_hash_uses_successor() -> None:
    nodes = tuple(NodeView(f"n{i}") for i in range(4))
    from agent.sched import preference_list

    prefs = preference_list("k", ClusterSnapshot(nodes))
    task = TaskView(
        "t",
        state="running",
        node=prefs[0],
        key="k",
        strategy=Strategy.HASH,
        load_moves=2,
        last_move_at=0.0,
    )
    moves = plan_failover(ClusterSnapshot(nodes, (task,), 1.0), prefs[0])
    assert [(m.task, m.to) for m in moves] == [("t", prefs[1])]


def test_drain_moves_only_waiting_tasks() -> None:
    nodes = (NodeView("d", draining=True, slots=2, running=1, queued=2), NodeView("x", slots=4))
    tasks = (TaskView("r", state="running", node="d"), waiting("w1", "d"), waiting("w2", "d"))
    moves = plan_drain(ClusterSnapshot(nodes, tasks, 0.0), "d")
    assert sorted((m.task, m.to) for m in moves) == [("w1", "x"), ("w2", "x")]
    assert all(m.reason is MoveReason.DRAIN for m in moves)
