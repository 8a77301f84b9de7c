"""``Queries.sched_queued``: the queued tasks kept with the scheduler's views equal the
queued tasks of ``sched_tasks`` in the same order (what ``ClusterSnapshot.queued`` finds
by a pass over every task) after any command sequence -- requeues (a task back in the
queue behind later ones), placements, restores -- read at random points; and
``build_snapshot`` hands them to the snapshot.  (And a round asks for no bids
while no host could take a task.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_state_hypothesis import commands, guided
from test_state_sched_views import place_some

from agent.runtime.scheduler import build_snapshot
from agent.sched import ClusterSnapshot, NodeView, TaskView, needs_bids
from agent.state import StateMachine, cmd_task_place, cmd_task_submit, task_spec
from agent.state.builders import cmd_task_fail_node


def queued_by_scan(sm: StateMachine) -> tuple[object, ...]:
    return tuple(t for t in sm.sched_tasks() if t.state == "queued")


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 80), st.data())
def test_kept_queue_equals_a_scan(length: int, data: st.DataObject) -> None:
    sm = StateMachine()
    for i in range(1, length + 1):
        kind = data.draw(st.integers(0, 5))
        if kind == 0:
            cmd = data.draw(commands)
        elif kind == 1:
            cmd = place_some(data, sm, float(i))
        else:
            cmd = guided(data, sm, float(i))
        sm.apply(i, cmd)
        read = data.draw(st.integers(0, 3))
        if read == 0:  # the queue alone, or the views first, as a round reads them
            assert sm.sched_queued() == queued_by_scan(sm), f"after entry {i}"
        elif read == 1:
            sm.sched_tasks()
        if data.draw(st.integers(0, 30)) == 0:
            snap = sm.snapshot()
            sm = StateMachine()
            sm.restore(snap)
    assert sm.sched_queued() == queued_by_scan(sm)


def test_a_requeued_task_keeps_its_table_place() -> None:
    sm = StateMachine()
    index = 0

    def apply(cmd: bytes) -> None:
        nonlocal index
        index += 1
        assert sm.apply(index, cmd).ok

    for _ in range(3):
        apply(cmd_task_submit(task_spec(["true"], retries=2), "", 1.0))
    first, second, third = (t.id for t in sm.tasks)
    apply(cmd_task_place([(first, "id1", 1)], "", 2.0))
    assert [t.id for t in sm.sched_queued()] == [second, third]
    apply(cmd_task_fail_node("id1", {}, "", 3.0))  # not started there: back in the queue
    assert [t.id for t in sm.sched_queued()] == [first, second, third]
    assert sm.sched_queued() == queued_by_scan(sm)


def test_the_snapshot_gets_the_kept_queue() -> None:
    sm = StateMachine()
    for i in range(1, 4):
        sm.apply(i, cmd_task_submit(task_spec(["true"]), "", 1.0))
    snap = build_snapshot([], sm, True, 5.0)
    fresh = ClusterSnapshot(snap.nodes, snap.tasks, snap.now)
    assert snap.queued() == fresh.queued() and len(snap.queued()) == 3


def test_no_bids_are_asked_for_while_every_host_is_drained_or_dead() -> None:
    """A round with a queue but no host that could take a task places nothing
    (``placements``): asking every host for a bid first only cost messages."""
    drained = (NodeView(id="a", name="a", draining=True), NodeView(id="b", name="b", alive=False))
    queue = (TaskView(id="q1"),)
    assert not needs_bids(ClusterSnapshot(drained, queue, 1.0), set())
    open_host = (*drained, NodeView(id="c", name="c"))
    assert needs_bids(ClusterSnapshot(open_host, queue, 1.0), set())
