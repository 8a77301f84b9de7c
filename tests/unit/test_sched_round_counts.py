"""One round's decisions count on their hosts for the rest of the round.

``plan_round`` decides failovers, then placements, then moves (drain, steal,
hot→cold), all against one snapshot.  Before this rule, each step saw only the
snapshot: a host that a placement filled in this round still read as having a
free slot to the steal step, which moved a waiting task onto it too.  That is how
test_tasks_netns' kill test saw 3 of 6 long tasks on one 2-slot host after a
restarted host (slow to start its first tasks) lost one of them to a steal, so they
never all ran at once.  These tests pin the rule for every pair of steps."""

from __future__ import annotations

from collections import Counter

from agent.sched import (
    Assign,
    ClusterSnapshot,
    Decision,
    FailNode,
    HeatState,
    Migrate,
    MoveReason,
    NodeView,
    SchedConfig,
    TaskView,
    plan_round,
)

NOW = 1000.0
LEASE = 10.0
CFG = SchedConfig()


def node(nid: str, **kw: object) -> NodeView:
    return NodeView(nid, **{"slots": 2, **kw})  # type: ignore[arg-type]


def on(nid: str, tid: str, state: str = "assigned") -> TaskView:
    return TaskView(tid, state=state, node=nid, epoch=1)


def landed(snap: ClusterSnapshot, decisions: tuple[Decision, ...]) -> Counter[str]:
    """Tasks on each host once the round's decisions apply (running + waiting)."""
    where = {t.id: t.node for t in snap.tasks if t.node is not None}
    for d in decisions:
        if isinstance(d, Assign):
            where[d.task] = d.node
        elif isinstance(d, Migrate):
            where[d.task] = d.to
        elif isinstance(d, FailNode):
            where.update(d.targets)
    return Counter(n for n in where.values() if n is not None)


def over_slots(snap: ClusterSnapshot, decisions: tuple[Decision, ...]) -> dict[str, int]:
    slots = {n.id: n.slots for n in snap.nodes}
    return {n: c for n, c in landed(snap, decisions).items() if n in slots and c > slots[n]}


def test_a_host_filled_by_this_rounds_placement_is_no_thief() -> None:
    # a has two tasks it has not started; b runs one and has one free slot; c and d are
    # full.  The queued task goes to b (the only free slot), so b may not also steal.
    tasks = (
        on("a", "w1"), on("a", "w2"), on("b", "r1", "running"),
        on("c", "r2", "running"), on("c", "r3", "running"),
        on("d", "r4", "running"), on("d", "r5", "running"), TaskView("q"),
    )  # fmt: skip
    nodes = (node("a", queued=2), node("b", running=1), node("c", running=2), node("d", running=2))
    snap = ClusterSnapshot(nodes, tasks, NOW)
    plan = plan_round(snap, HeatState(), CFG, {}, frozenset(), LEASE, None)
    assert Assign("q", "b", 1) in plan.decisions
    assert not [d for d in plan.decisions if isinstance(d, Migrate)], plan.decisions
    assert over_slots(snap, plan.decisions) == {}


def test_a_steal_still_happens_where_a_slot_is_left() -> None:
    # b runs nothing: after q lands there it still has a free slot, and a's queue of
    # three is still two longer than b's (the steal margin), so b takes one of them.
    tasks = (
        on("a", "w1"), on("a", "w2"), on("a", "w3"),
        on("c", "r2", "running"), on("c", "r3", "running"),
        on("d", "r4", "running"), on("d", "r5", "running"), TaskView("q"),
    )  # fmt: skip
    nodes = (node("a", queued=3), node("b"), node("c", running=2), node("d", running=2))
    snap = ClusterSnapshot(nodes, tasks, NOW)
    plan = plan_round(snap, HeatState(), CFG, {}, frozenset(), LEASE, None)
    assert Assign("q", "b", 1) in plan.decisions
    steals = [d for d in plan.decisions if isinstance(d, Migrate)]
    assert [(d.to, d.reason) for d in steals] == [("b", MoveReason.STEAL)], plan.decisions
    assert over_slots(snap, plan.decisions) == {}


def test_a_failover_target_counts_for_this_rounds_placements() -> None:
    # x died a lease ago holding one running task; a and b each have one free slot.
    # The failover sends x's task to one of them; the queued task takes the other.
    tasks = (on("x", "f1", "running"), on("a", "r1", "running"), on("b", "r2", "running"),
             TaskView("q"))
    nodes = (node("x", alive=False, running=1), node("a", running=1), node("b", running=1))
    snap = ClusterSnapshot(nodes, tasks, NOW)
    plan = plan_round(snap, HeatState(), CFG, {"x": NOW - LEASE}, frozenset(), LEASE, None)
    fail = [d for d in plan.decisions if isinstance(d, FailNode)]
    assign = [d for d in plan.decisions if isinstance(d, Assign)]
    assert len(fail) == 1 and len(assign) == 1, plan.decisions
    assert set(fail[0].targets.values()) | {assign[0].node} == {"a", "b"}, plan.decisions
    assert over_slots(snap, plan.decisions) == {}


def test_a_host_filled_by_this_rounds_placement_is_not_cold_for_a_rebalance() -> None:
    # h is hot with a waiting task; c is cold with one free slot, which the queued
    # task takes: the rebalance has no cold target left.
    heat = HeatState({"h": NOW - 100}, frozenset({"h"}))
    tasks = (on("h", "w1"), on("h", "r1", "running"), on("c", "r2", "running"), TaskView("q"))
    nodes = (node("h", cpu=0.95, running=1, queued=1, slots=3), node("c", cpu=0.1, running=1))
    snap = ClusterSnapshot(nodes, tasks, NOW)
    plan = plan_round(snap, heat, CFG, {}, frozenset(), LEASE, None)
    assert Assign("q", "c", 1) in plan.decisions, plan.decisions
    assert not [d for d in plan.decisions if isinstance(d, Migrate)], plan.decisions
    assert over_slots(snap, plan.decisions) == {}
