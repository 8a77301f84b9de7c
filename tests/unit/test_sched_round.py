"""Table tests of ``plan_round``, the leader's whole scheduling round as a pure function:
placement of queued tasks (order, epoch, bids, busy tasks), failover once a dead host's
lease has run out, drain, steals and hot→cold rebalance with ``settle_heat``, the first
move per task, the caps, and the death times carried from round to round."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from agent.sched import (
    Assign,
    Bid,
    ClusterSnapshot,
    Decision,
    FailNode,
    HeatState,
    Migrate,
    MoveReason,
    NodeView,
    SchedConfig,
    TaskView,
    needs_bids,
    plan_round,
)

NOW = 1000.0
LEASE = 10.0
CFG = SchedConfig()
STEAL, DRAIN, HOT_COLD = MoveReason.STEAL, MoveReason.DRAIN, MoveReason.HOT_COLD


def node(nid: str, **kw: object) -> NodeView:
    return NodeView(nid, **{"slots": 2, **kw})  # type: ignore[arg-type]


def queued(tid: str, **kw: object) -> TaskView:
    return TaskView(tid, **kw)  # type: ignore[arg-type]


def on(nid: str, tid: str, state: str = "assigned", **kw: object) -> TaskView:
    return TaskView(tid, state=state, node=nid, **{"epoch": 1, **kw})  # type: ignore[arg-type]


def bid(nid: str, cpu: float, running: int, slots: int = 2) -> Bid:
    return Bid(1, "", nid, 0, cpu, 1.0, slots, running, 0, 1.0, None)


@dataclass
class Case:
    nodes: tuple[NodeView, ...]
    tasks: tuple[TaskView, ...] = ()
    want: tuple[Decision, ...] = ()
    dead_since: dict[str, float] = field(default_factory=dict)
    busy: frozenset[str] = frozenset()
    bids: dict[str, Bid] | None = None
    heat: HeatState = field(default_factory=HeatState)
    max_decisions: int = 1024
    max_inflight: int = 4096
    want_dead_since: dict[str, float] | None = None
    """None: expect ``dead_since`` unchanged."""
    want_backlog: bool = False


IDLE_AB = (node("a"), node("b"))
DEAD_D = node("d", alive=False)

CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- placement
    "queued tasks are placed, highest priority first, at epoch + 1": Case(
        IDLE_AB,
        (queued("q1", created_at=1.0), queued("q2", priority=5, created_at=2.0, epoch=3)),
        want=(Assign("q2", "a", 4), Assign("q1", "b", 1)),
    ),
    "a task with a decision in flight is left alone": Case(
        IDLE_AB,
        (queued("q1", created_at=1.0), queued("q2", priority=5, created_at=2.0)),
        busy=frozenset({"q2"}),
        want=(Assign("q1", "a", 1),),
    ),
    "a task no host can take waits in the queue": Case(
        IDLE_AB, (queued("gpu-job", caps=frozenset({"gpu"})),),
    ),
    "nothing is placed on a draining or dead host": Case(
        (node("a", draining=True), node("b", alive=False), node("c")), (queued("q1"),),
        want=(Assign("q1", "c", 1),), want_dead_since={"b": NOW},
    ),
    "a fresh bid outranks gossip: the busy host's own figures lose": Case(
        IDLE_AB, (queued("q1"),),
        bids={"a": bid("a", cpu=1.0, running=2), "b": bid("b", cpu=0.0, running=0)},
        want=(Assign("q1", "b", 1),),
    ),
    "without bids the same tie goes to the smaller node id": Case(
        IDLE_AB, (queued("q1"),), want=(Assign("q1", "a", 1),),
    ),
    # ---------------------------------------------------------------- failover
    "a host dead for the lease loses its tasks to live hosts": Case(
        (node("a", slots=4), DEAD_D),
        (on("d", "r1", "running", created_at=1.0), on("d", "w1", created_at=2.0)),
        dead_since={"d": NOW - LEASE},
        want=(FailNode("d", {"r1": "a", "w1": "a"}),),
    ),
    "within the lease nothing moves (its watchdog has not fired yet)": Case(
        (node("a"), DEAD_D), (on("d", "r1", "running"),),
        dead_since={"d": NOW - LEASE + 0.5},
    ),
    "a node first seen dead starts its lease now": Case(
        (node("a"), DEAD_D), (on("d", "r1", "running"),), want_dead_since={"d": NOW},
    ),
    "a dead host without tasks needs no failover": Case(
        (node("a"), DEAD_D), dead_since={"d": NOW - 100},
    ),
    "a failover already in flight is not proposed again": Case(
        (node("a"), DEAD_D), (on("d", "r1", "running"),),
        dead_since={"d": NOW - 100}, busy=frozenset({"d"}),
    ),
    "with no live host a dead host's tasks go back to the queue": Case(
        (node("a", draining=True), DEAD_D), (on("d", "w1"),),
        dead_since={"d": NOW - LEASE}, want=(FailNode("d", {}),),
    ),
    "a node alive again forgets its death; one that left keeps it": Case(
        IDLE_AB, dead_since={"a": 5.0, "gone": 7.0}, want_dead_since={"gone": 7.0},
    ),
    # ---------------------------------------------------------------- drain
    "a draining host's waiting tasks move; its running ones finish in place": Case(
        (node("a", draining=True, running=1, queued=1), node("b")),
        (on("a", "r1", "running"), on("a", "w1")),
        want=(Migrate("w1", "b", DRAIN, 1),),
    ),
    "a dead draining host is failover's business, not drain's": Case(
        (node("a", draining=True, alive=False, queued=1), node("b")), (on("a", "w1"),),
        dead_since={"a": NOW - 1},
    ),
    "the first move per task wins: drain before steal": Case(
        (node("a", draining=True, slots=1, queued=4), node("b", slots=8)),
        tuple(on("a", f"w{i}", created_at=float(i)) for i in range(4)),
        want=tuple(Migrate(f"w{i}", "b", DRAIN, 1) for i in range(4)),
    ),
    # ---------------------------------------------------------------- steals
    "an idle host steals the newest waiting tasks until queues are within the margin": Case(
        (node("a", slots=1, queued=4), node("b")),
        tuple(on("a", f"w{i}", created_at=float(i)) for i in range(4)),
        want=(Migrate("w3", "b", STEAL, 1), Migrate("w2", "b", STEAL, 1)),
    ),
    "a busy task is not stolen (the other planned steal still is)": Case(
        (node("a", slots=1, queued=4), node("b")),
        tuple(on("a", f"w{i}", created_at=float(i)) for i in range(4)),
        busy=frozenset({"w3"}),
        want=(Migrate("w2", "b", STEAL, 1),),
    ),
    # ---------------------------------------------------------------- caps
    "a full round of decisions asks for the next round at once": Case(
        IDLE_AB, tuple(queued(f"q{i}", created_at=float(i)) for i in range(3)),
        max_decisions=2, want=(Assign("q0", "a", 1), Assign("q1", "b", 1)), want_backlog=True,
    ),
    "room is what max_inflight leaves after the decisions in flight": Case(
        IDLE_AB, (queued("q1"), queued("q2", created_at=1.0)),
        busy=frozenset({"x", "y", "z"}), max_inflight=4,
        want=(Assign("q1", "a", 1),), want_backlog=True,
    ),
    "with no room nothing is planned and nothing else changes": Case(
        (node("a"), DEAD_D), (queued("q1"), on("d", "r1", "running")),
        dead_since={"b": 1.0}, busy=frozenset({"x", "y"}), max_inflight=2,
    ),
    "an unplaceable backlog does not spin": Case(
        IDLE_AB, tuple(queued(f"g{i}", caps=frozenset({"gpu"})) for i in range(3)),
        max_decisions=2,
    ),
    # ---------------------------------------------------------------- order
    "failover, then placement, then moves": Case(
        (node("a", slots=1, queued=4), node("b", slots=4), DEAD_D),
        (
            on("d", "r1", "running", priority=9),
            queued("q1"),
            *(on("a", f"w{i}", created_at=float(i)) for i in range(4)),
        ),
        dead_since={"d": NOW - LEASE},
        # The steals see r1 and q1 on b (test_sched_round_counts): b's queue of 2
        # against a's 4 is the margin for one steal, not two.
        want=(
            FailNode("d", {"r1": "b"}),
            Assign("q1", "b", 1),
            Migrate("w3", "b", STEAL, 1),
        ),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_round_table(case: Case) -> None:
    snap = ClusterSnapshot(case.nodes, case.tasks, NOW)
    dead_since = dict(case.dead_since)
    busy = set(case.busy)
    plan = plan_round(
        snap, case.heat, CFG, dead_since, busy, LEASE, case.bids,
        max_decisions=case.max_decisions, max_inflight=case.max_inflight,
    )  # fmt: skip
    assert plan.decisions == case.want
    want_dead = case.dead_since if case.want_dead_since is None else case.want_dead_since
    assert dict(plan.dead_since) == want_dead
    assert plan.backlog is case.want_backlog
    # Pure: the caller's state is untouched.
    assert dead_since == case.dead_since and busy == set(case.busy)


def test_no_room_returns_the_heat_unchanged() -> None:
    hot = HeatState({"a": 1.0}, frozenset({"a"}))
    snap = ClusterSnapshot((node("a", cpu=0.1),), (), NOW)
    plan = plan_round(snap, hot, CFG, {}, {"x"}, LEASE, None, max_inflight=1)
    assert plan.heat is hot and plan.decisions == ()


# -------------------------------------------------------------------- heat


def hot_host(task: TaskView) -> ClusterSnapshot:
    nodes = (node("h", cpu=0.95, running=1, queued=1), node("c", cpu=0.1))
    return ClusterSnapshot(nodes, (task,), NOW)


HOT = HeatState({"h": NOW - 20}, frozenset({"h"}))


def test_moving_a_running_task_off_a_hot_host_settles_it() -> None:
    snap = hot_host(on("h", "r1", "running", restartable=True))
    plan = plan_round(snap, HOT, CFG, {}, set(), LEASE, None)
    assert plan.decisions == (Migrate("r1", "c", HOT_COLD, 1),)
    # It must read hot for a whole window again before it gives up another.
    assert "h" not in plan.heat.hot and plan.heat.since == {"h": NOW}


def test_moving_a_waiting_task_leaves_the_host_hot() -> None:
    plan = plan_round(hot_host(on("h", "w1")), HOT, CFG, {}, set(), LEASE, None)
    assert plan.decisions == (Migrate("w1", "c", HOT_COLD, 1),)
    assert plan.heat == HOT


def test_a_running_task_that_cannot_restart_stays_and_the_host_stays_hot() -> None:
    plan = plan_round(hot_host(on("h", "r1", "running")), HOT, CFG, {}, set(), LEASE, None)
    assert plan.decisions == () and plan.heat == HOT


def test_heat_is_carried_from_round_to_round() -> None:
    """A host above ``hot_above`` becomes hot after ``hot_window`` seconds of rounds."""
    heat = HeatState()
    for t in (0.0, 5.0, 10.0):
        snap = ClusterSnapshot((node("h", cpu=0.9), node("c")), (), NOW + t)
        heat = plan_round(snap, heat, CFG, {}, set(), LEASE, None).heat
        assert heat.since == {"h": NOW} and ("h" in heat.hot) is (t >= CFG.hot_window)


def test_a_busy_hot_task_is_not_moved_and_does_not_settle_the_host() -> None:
    snap = hot_host(on("h", "r1", "running", restartable=True))
    plan = plan_round(snap, HOT, CFG, {}, {"r1"}, LEASE, None)
    assert plan.decisions == ()
    # The plan was made (and settled) before busy tasks were dropped, as the leader does.
    assert "h" not in plan.heat.hot


# -------------------------------------------------------------------- bids


@pytest.mark.parametrize(
    ("tasks", "busy", "max_inflight", "want"),
    [
        ((queued("q1"),), set(), 10, True),
        ((queued("q1"),), {"q1"}, 10, False),
        ((on("a", "w1"),), set(), 10, False),
        ((queued("q1"),), {"x"}, 1, False),
    ],
    ids=["queued", "queued-but-busy", "nothing-queued", "no-room"],
)
def test_bids_are_asked_for_only_when_the_round_places(
    tasks: tuple[TaskView, ...], busy: set[str], max_inflight: int, want: bool
) -> None:
    snap = ClusterSnapshot(IDLE_AB, tasks, NOW)
    assert needs_bids(snap, busy, max_inflight) is want


def test_the_cap_keeps_the_best_tasks_of_a_deep_backlog() -> None:
    tasks = tuple(queued(f"q{i}", created_at=float(i)) for i in range(50))
    tasks = (*tasks, dataclasses.replace(tasks[40], id="urgent", priority=3))
    snap = ClusterSnapshot((node("a", slots=100),), tasks, NOW)
    plan = plan_round(snap, HeatState(), CFG, {}, set(), LEASE, None, max_decisions=3)
    assert [d.key for d in plan.decisions] == ["urgent", "q0", "q1"] and plan.backlog


@pytest.mark.parametrize("with_bids", [False, True])
def test_placements_in_flight_count_on_their_hosts_until_the_snapshot_shows_them(
    with_bids: bool,
) -> None:
    # q1 and q2 were placed on a by an earlier round, not yet applied: a is as busy as
    # if they were there, so q3 goes to b (without them, a wins the tie by id).
    nodes = (node("a"), node("b"))
    bids = {"a": bid("a", 0.0, 0), "b": bid("b", 0.0, 0)} if with_bids else None
    tasks = (queued("q1"), queued("q2"), queued("q3"))
    busy = frozenset({"q1", "q2"})
    plain = plan_round(ClusterSnapshot(nodes, tasks, NOW), HeatState(), CFG, {}, busy, LEASE, bids)
    assert plain.decisions == (Assign("q3", "a", 1),)
    placing = {"q1": "a", "q2": "a"}
    counted = plan_round(
        ClusterSnapshot(nodes, tasks, NOW), HeatState(), CFG, {}, busy, LEASE, bids, placing=placing
    )
    assert counted.decisions == (Assign("q3", "b", 1),)
    # Once applied (the snapshot shows q1 and q2 assigned on a), the state counts them,
    # and only the state: a (2 waiting) still beats b (3 waiting).
    applied = (on("a", "q1"), on("a", "q2"), queued("q3"))
    nodes_after = (node("a", queued=2), node("b", queued=3))
    after = plan_round(
        ClusterSnapshot(nodes_after, applied, NOW), HeatState(), SchedConfig(max_moves_per_task=0),
        {}, busy, LEASE, None, placing=placing,
    )  # fmt: skip
    assert after.decisions == (Assign("q3", "a", 1),)
