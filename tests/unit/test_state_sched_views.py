"""``SchedViews``: the scheduler's task views and per-host counts, kept up to date from
the ids each command touched, equal a rebuild from the whole table after any command
sequence (including restores, evictions and ``task.place``), and reading them between
commands at random points does not change that."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_state_hypothesis import commands, guided

import agent.state.tasks as tasks_mod
from agent.sched import TaskView
from agent.state import StateMachine, cmd_task_place, cmd_task_submit, task_spec
from agent.state.sched_views import task_view


def from_scratch(sm: StateMachine) -> tuple[tuple[TaskView, ...], dict[str, dict[str, int]]]:
    views = tuple(task_view(t) for t in sm.tasks if not t.terminal)
    load: dict[str, dict[str, int]] = {}
    for t in sm.tasks:
        if t.node is not None and t.state in ("assigned", "running"):
            row = load.setdefault(t.node, {"queued": 0, "running": 0})
            row["queued" if t.state == "assigned" else "running"] += 1
    return views, load


def place_some(data: st.DataObject, sm: StateMachine, at: float) -> bytes:
    queued = [t for t in sm.tasks if t.state == "queued"] or list(sm.tasks)
    if not queued:
        return cmd_task_submit(task_spec(["true"]), "", at)
    picked = data.draw(st.lists(st.sampled_from(queued), min_size=1, max_size=4))
    node = st.sampled_from(["id1", "id2", "id3"])
    return cmd_task_place([(t.id, data.draw(node), t.epoch + 1) for t in picked], "", at)


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 80), st.data())
def test_incremental_views_equal_a_rebuild(length: int, data: st.DataObject) -> None:
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
        read = data.draw(st.integers(0, 5))
        if read == 0:  # read now and then, as the leader's rounds do
            assert (sm.sched_tasks(), sm.node_load()) == from_scratch(sm), f"after entry {i}"
        elif read == 1:  # the counts alone, as every host's bid does
            assert sm.node_load() == from_scratch(sm)[1], f"after entry {i}"
        if data.draw(st.integers(0, 30)) == 0:  # a restore replaces the table
            snap = sm.snapshot()
            sm = StateMachine()
            sm.restore(snap)
    assert (sm.sched_tasks(), sm.node_load()) == from_scratch(sm)


def test_evicted_tasks_and_too_many_changes_are_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks_mod, "MAX_TERMINAL_TASKS", 2)
    monkeypatch.setattr(tasks_mod, "MAX_CHANGES", 5)
    sm = StateMachine()
    index = 0

    def apply(cmd: bytes) -> None:
        nonlocal index
        index += 1
        assert sm.apply(index, cmd).ok

    for _ in range(4):
        apply(cmd_task_submit(task_spec(["true"]), "", 1.0))
    assert sm.sched_tasks() == from_scratch(sm)[0]
    for n in range(1, 5):
        apply(cmd_task_place([(f"t{n}", "id1", 1)], "", 2.0))
    from agent.state import cmd_task_cancel

    for n in (1, 2, 3):
        apply(cmd_task_cancel(f"t{n}", "", 3.0))  # t1 is evicted (2 terminal kept)
    assert "t1" not in sm.tasks.tasks
    assert (sm.sched_tasks(), sm.node_load()) == from_scratch(sm) == (
        (task_view(sm.tasks.get("t4")),), {"id1": {"queued": 1, "running": 0}}
    )
    for _ in range(7):  # more touched ids than kept: a full rebuild
        apply(cmd_task_submit(task_spec(["true"]), "", 4.0))
    assert (sm.sched_tasks(), sm.node_load()) == from_scratch(sm)
