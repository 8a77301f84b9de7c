"""A round plans only the moves it can propose, and a drained cluster tries no placement.

Found by issue 14's backlog benchmark: with every host draining and thousands of
tasks waiting on them, each round of the leader tried to place every waiting task
(and failed), about 80 ms of the leader's CPU every 0.2 s; and a round whose
placements had already filled its cap still planned every drain move, which the
cap then cut.  These tests count the placement attempts (``place`` in
``agent.sched.balance``) so they fail if that work comes back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.sched import (
    Assign,
    ClusterSnapshot,
    HeatState,
    Migrate,
    MoveReason,
    NodeView,
    SchedConfig,
    TaskView,
    balance,
    plan_drain,
    plan_round,
)

NOW = 1000.0
LEASE = 10.0
CFG = SchedConfig()


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The task ids ``balance.place`` was asked to place (drain and failover moves)."""
    seen: list[str] = []
    real = balance.place

    def counting(task: TaskView, *args: object, **kwargs: object) -> str:
        seen.append(task.id)
        return real(task, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(balance, "place", counting)
    yield seen


def waiting(node: str, count: int, prefix: str = "w") -> list[TaskView]:
    return [TaskView(f"{prefix}{node}{i}", state="assigned", node=node, epoch=1,
                     created_at=float(i)) for i in range(count)]


def backlog(count: int) -> list[TaskView]:
    return [TaskView(f"q{i}", created_at=float(1000 + i)) for i in range(count)]


def test_a_drained_cluster_tries_no_placement_and_plans_nothing(attempts: list[str]) -> None:
    nodes = tuple(NodeView(n, slots=1, running=1, queued=50, draining=True) for n in "abc")
    tasks = (*waiting("a", 50), *waiting("b", 50), *waiting("c", 50), *backlog(200))
    plan = plan_round(ClusterSnapshot(nodes, tasks, NOW), HeatState(), CFG, {}, (), LEASE, None)
    assert plan.decisions == ()
    assert plan.backlog is False  # nothing placeable: the loop waits for its next round
    assert attempts == []


def test_a_round_full_of_placements_plans_no_drain_move(attempts: list[str]) -> None:
    nodes = (NodeView("a", slots=4), NodeView("d", slots=1, running=1, queued=30, draining=True))
    tasks = (*waiting("d", 30), *backlog(8))
    snap = ClusterSnapshot(nodes, tasks, NOW)
    plan = plan_round(snap, HeatState(), CFG, {}, (), LEASE, None, max_decisions=8)
    assert [type(d) for d in plan.decisions] == [Assign] * 8
    assert plan.backlog is True  # the drain moves come in the next round, at once
    assert attempts == []


def test_drain_moves_fill_what_placement_left_of_the_cap(attempts: list[str]) -> None:
    nodes = (NodeView("a", slots=4), NodeView("d", slots=1, running=1, queued=30, draining=True))
    tasks = (*waiting("d", 30), *backlog(3))
    plan = plan_round(ClusterSnapshot(nodes, tasks, NOW), HeatState(), CFG, {}, (), LEASE, None,
                      max_decisions=8)
    kinds = [type(d) for d in plan.decisions]
    assert kinds == [Assign] * 3 + [Migrate] * 5
    # The oldest waiting tasks go first, and only as many were tried as could be proposed.
    assert [d.task for d in plan.decisions[3:]] == [f"wd{i}" for i in range(5)]
    assert attempts == [f"wd{i}" for i in range(5)]


def test_drain_leaves_tasks_in_flight_for_a_later_round(attempts: list[str]) -> None:
    nodes = (NodeView("a", slots=4), NodeView("d", slots=1, running=1, queued=4, draining=True))
    snap = ClusterSnapshot(nodes, tuple(waiting("d", 4)), NOW)
    moves = plan_drain(snap, "d", CFG, limit=2, skip={"wd0"})
    assert [(m.task, m.to, m.reason) for m in moves] == [
        ("wd1", "a", MoveReason.DRAIN), ("wd2", "a", MoveReason.DRAIN)]
    assert "wd0" not in attempts


def test_drain_with_no_limit_moves_every_waiting_task() -> None:
    nodes = (NodeView("a", slots=4), NodeView("d", slots=1, running=1, queued=6, draining=True))
    snap = ClusterSnapshot(nodes, tuple(waiting("d", 6)), NOW)
    assert len(plan_drain(snap, "d", CFG)) == 6


def test_failover_still_lists_every_task_when_no_host_can_take_them() -> None:
    nodes = (NodeView("a", draining=True), NodeView("x", alive=False, running=1))
    tasks = (TaskView("r", state="running", node="x", epoch=1),
             TaskView("w", state="assigned", node="x", epoch=1))
    moves = balance.plan_failover(ClusterSnapshot(nodes, tasks, NOW), "x", CFG)
    assert sorted((m.task, m.to) for m in moves) == [("r", None), ("w", None)]
