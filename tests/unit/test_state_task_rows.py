"""``TaskTable.rows``: with nobody following the ``tasks`` topic the state machine builds
no task rows for its events, and nothing else changes.

Consensus sets it from ``wants("tasks")`` before applying each batch (as it sets
``summaries``); the agent's own readers of a result's events -- the runner's wake, the
scheduler's ``placeable`` (a ``requeued`` kind) -- look at topics and kinds only."""

from __future__ import annotations

from typing import Any

from agent.state import (
    ApplyResult,
    StateMachine,
    TaskStats,
    cmd_node_register,
    cmd_task_assign,
    cmd_task_cancel,
    cmd_task_fail_node,
    cmd_task_finish,
    cmd_task_start,
    cmd_task_submit,
    task_spec,
)


def _run(rows: bool) -> tuple[list[ApplyResult], bytes]:
    sm = StateMachine()
    sm.tasks.rows = rows
    results: list[ApplyResult] = []

    def apply(data: bytes) -> dict[str, Any]:
        results.append(sm.apply(len(results) + 1, data))
        assert results[-1].ok, results[-1].error
        return dict(results[-1].value or {})

    stats = TaskStats(duration=1.0)
    for i in (1, 2):
        apply(cmd_node_register(f"id{i}", f"n{i}", "", 0.0))
    first = apply(cmd_task_submit(task_spec(["true"], retries=1), "r1", 1.0))["id"]
    second = apply(cmd_task_submit(task_spec(["sleep", "9"]), "r2", 1.0))["id"]
    apply(cmd_task_assign(first, "id1", 1, "a", "", 2.0))
    apply(cmd_task_start(first, "id1", 1, "", 2.5))
    apply(cmd_task_finish(first, "id1", 1, 1, stats, "", 3.0))  # failed: retried (requeued)
    apply(cmd_task_assign(first, "id2", 2, "a", "", 3.5))
    apply(cmd_task_assign(second, "id1", 1, "a", "", 3.5))
    apply(cmd_task_fail_node("id1", {}, "", 4.0))  # second goes back to the queue
    apply(cmd_task_cancel(second, "", 5.0))
    return results, sm.snapshot()


def test_rows_off_drops_only_the_task_rows() -> None:
    loud, loud_state = _run(True)
    quiet, quiet_state = _run(False)
    assert quiet_state == loud_state
    for a, b in zip(quiet, loud, strict=True):
        assert (a.ok, a.value, a.error, a.placeable) == (b.ok, b.value, b.error, b.placeable)
        assert [e["topic"] for e in a.events] == [e["topic"] for e in b.events]
        for ea, eb in zip(a.events, b.events, strict=True):
            if ea["topic"] == "tasks":
                assert ea["data"] == {"kind": eb["data"]["kind"]}
                assert eb["data"]["task"]["id"]
            else:
                assert ea == eb
    kinds = [e["data"]["kind"] for r in quiet for e in r.events if e["topic"] == "tasks"]
    assert "requeued" in kinds and "cancelled" in kinds
    assert any(r.placeable for r in quiet[4:])  # a requeue still wakes the leader
