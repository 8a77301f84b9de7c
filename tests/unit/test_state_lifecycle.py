"""The task lifecycle table (``agent.state.tasks.TRANSITIONS``) is what the state machine does.

Every (state, event) pair a committed command can produce is driven through a
real ``StateMachine``: a pair the table lists must be accepted and land in the
listed state; any other must be refused and leave the task as it was.  Every
pair the table lists must be reached, so the table cannot list a transition
the code never makes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.state import (
    StateMachine,
    TaskStats,
    cmd_node_register,
    cmd_task_assign,
    cmd_task_cancel,
    cmd_task_fail_node,
    cmd_task_finish,
    cmd_task_lost,
    cmd_task_migrate,
    cmd_task_start,
    cmd_task_submit,
    task_spec,
)
from agent.state.tasks import TERMINAL, TRANSITIONS, TaskEvent

E = TaskEvent


class Machine:
    def __init__(self) -> None:
        self.sm = StateMachine()
        self.index = 0
        for i in (1, 2, 3):
            self.apply(cmd_node_register(f"id{i}", f"n{i}", "", 0.0))

    def apply(self, data: bytes) -> tuple[bool, str]:
        self.index += 1
        result = self.sm.apply(self.index, data)
        return result.ok, result.error or ""

    def must(self, data: bytes) -> None:
        ok, error = self.apply(data)
        assert ok, error

    def task(self, tid: str) -> tuple[str, str | None, int]:
        rec = self.sm.task_record(tid)
        assert rec is not None
        return rec.state, rec.node, rec.epoch


def reach(m: Machine, state: str, retries: int) -> str:
    """A task in ``state`` (on ``id1`` at epoch 1 once placed)."""
    spec = task_spec(["true"], retries=0 if state == "failed" else retries, restartable=True)
    ok, _ = m.apply(cmd_task_submit(spec, "", 1.0))
    assert ok
    tid = f"t{m.sm.tasks.seq}"
    steps: dict[str, list[bytes]] = {
        "queued": [],
        "assigned": [cmd_task_assign(tid, "id1", 1, "", "", 2.0)],
        "running": [cmd_task_assign(tid, "id1", 1, "", "", 2.0),
                    cmd_task_start(tid, "id1", 1, "", 3.0)],
        "succeeded": [cmd_task_assign(tid, "id1", 1, "", "", 2.0),
                      cmd_task_finish(tid, "id1", 1, 0, TaskStats(1.0), "", 4.0)],
        "failed": [cmd_task_assign(tid, "id1", 1, "", "", 2.0),
                   cmd_task_finish(tid, "id1", 1, 1, TaskStats(1.0), "", 4.0)],
        "cancelled": [cmd_task_assign(tid, "id1", 1, "", "", 2.0), cmd_task_cancel(tid, "", 3.0)],
        "lost": [cmd_task_lost(tid, "", 3.0, "gone")],
    }  # fmt: skip
    for data in steps[state]:
        m.must(data)
    assert m.task(tid)[0] == state
    return tid


def finish(code: int) -> Callable[[str, str | None, int], bytes]:
    return lambda tid, node, epoch: cmd_task_finish(
        tid, node or "id1", epoch, code, TaskStats(1.0), "", 9.0
    )


# event → (retries of the task, the command that is that event for a task in the given state)
COMMANDS: dict[TaskEvent, tuple[int, Callable[[str, str | None, int], bytes]]] = {
    E.ASSIGN: (1, lambda tid, node, epoch: cmd_task_assign(tid, "id2", epoch + 1, "", "", 9.0)),
    E.START: (1, lambda tid, node, epoch: cmd_task_start(tid, node or "id1", epoch, "", 9.0)),
    E.SUCCEED: (1, finish(0)),
    E.RETRY: (1, finish(1)),
    E.FAIL: (0, finish(1)),
    E.LATE_EXIT: (1, finish(0)),
    E.CANCEL: (1, lambda tid, node, epoch: cmd_task_cancel(tid, "", 9.0)),
    E.LOSE: (1, lambda tid, node, epoch: cmd_task_lost(tid, "", 9.0, "x")),
    E.MOVE: (1, lambda tid, node, epoch: cmd_task_migrate(tid, "id3", "drain", "", 9.0, epoch)),
    E.REQUEUE: (1, lambda tid, node, epoch: cmd_task_fail_node(node or "id1", {}, "", 9.0)),
}


def constructible(state: str, event: TaskEvent) -> bool:
    """Can a command be this event for a task in this state?  A finish on a cancelled
    task is always a late exit and never one otherwise; a dead host's tasks with no
    target are requeued only when they are on it (assigned or running), and a
    running one with no retry left is lost instead (``LOSE``, tested through
    ``task.lost``)."""
    if event is E.REQUEUE:
        return state in ("assigned", "running")
    if state == "cancelled":
        return event not in (E.SUCCEED, E.RETRY, E.FAIL)
    return event is not E.LATE_EXIT


PAIRS = [(s, e) for s in TRANSITIONS for e in TaskEvent if constructible(s, e)]


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_every_pair_does_what_the_table_says(state: str, event: TaskEvent) -> None:
    m = Machine()
    retries, command = COMMANDS[event]
    tid = reach(m, state, retries)
    before = m.task(tid)
    ok, error = m.apply(command(tid, before[1], before[2]))
    expected = TRANSITIONS[state].get(event)
    if expected is None:
        assert not ok, f"{state} --{event}--> accepted as {m.task(tid)[0]}"
        assert m.task(tid) == before
    else:
        assert ok, f"{state} --{event}--> refused: {error}"
        assert m.task(tid)[0] == expected


def test_the_table_lists_only_reachable_transitions() -> None:
    listed = {(s, e) for s, row in TRANSITIONS.items() for e in row}
    assert listed <= set(PAIRS)
    # Terminal states take nothing but a cancelled run's late exit report.
    for state in TERMINAL:
        assert set(TRANSITIONS[state]) <= {E.LATE_EXIT}


@pytest.mark.parametrize(
    ("state", "event", "error"),
    [
        ("assigned", E.ASSIGN, "is assigned, not queued"),
        ("succeeded", E.ASSIGN, "already succeeded"),
        ("cancelled", E.START, "is cancelled, not assigned"),
        ("succeeded", E.SUCCEED, "already succeeded"),
        ("lost", E.CANCEL, "already lost"),
    ],
)
def test_refusals_name_the_state(state: str, event: TaskEvent, error: str) -> None:
    m = Machine()
    retries, command = COMMANDS[event]
    tid = reach(m, state, retries)
    _, node, epoch = m.task(tid)
    ok, message = m.apply(command(tid, node, epoch))
    assert not ok and message == f"task {tid} {error}"
