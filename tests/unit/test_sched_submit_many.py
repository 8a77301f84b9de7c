"""``task.submit_many``: many tasks in one request, each committed as its own
``task.submit`` in one batch entry; one row per task in order, a task refused on its
own answers an error row and leaves the others, a failed commit fails the request
(and a retry with the same rids submits nothing twice), params are checked per task
before anything is committed.  The Raft side is a fake over a real ``StateMachine``."""

from __future__ import annotations

from typing import Any

import pytest
from support.applying_log import Log

from agent.errors import NoQuorumError, ProtocolError
from agent.runtime.handlers import METHOD_PARAMS, strict
from agent.runtime.handlers.common import check_applied
from agent.runtime.sched_submit import MAX_SUBMIT_MANY, CommitBatcher, submit_many
from agent.state import cmd_task_submit, task_spec


def handler_over(log: Log) -> Any:
    """``task.submit_many`` over a ``task.submit`` shaped like the agent's (its own
    refusals raised as ``ValueError``), behind the strict param check."""
    batcher = CommitBatcher(log.propose, check_applied)

    async def submit(params: dict[str, Any]) -> Any:
        argv = params.get("argv")
        if not argv:
            raise ValueError("give exactly one of argv or shell")
        spec = task_spec(list(argv), retries=int(params.get("retries", 2)))
        return (await batcher.commit(cmd_task_submit(spec, str(params["rid"]), 1.0))).value

    return strict("task.submit_many", submit_many(submit, METHOD_PARAMS["task.submit"]))


async def test_tasks_commit_in_one_batch_entry_with_a_row_each_in_order() -> None:
    log = Log()
    call = handler_over(log)
    rows = await call({"tasks": [{"argv": ["true"], "rid": f"r{i}"} for i in range(5)]})
    assert rows == [{"id": f"t{i}"} for i in range(1, 6)]
    assert log.entries == ["batch"]
    assert [t.id for t in log.sm.tasks] == ["t1", "t2", "t3", "t4", "t5"]


async def test_a_task_refused_on_its_own_leaves_the_others() -> None:
    log = Log()
    rows = await handler_over(log)(
        {"tasks": [{"argv": ["true"], "rid": "a"}, {"rid": "b"}, {"argv": ["true"], "rid": "c"}]}
    )
    assert rows[0] == {"id": "t1"} and rows[2] == {"id": "t2"}
    assert rows[1] == {"error": "bad_request", "message": "give exactly one of argv or shell"}


async def test_a_failed_commit_fails_the_request_and_a_retry_submits_nothing_twice() -> None:
    log = Log()
    call = handler_over(log)
    params = {"tasks": [{"argv": ["true"], "rid": f"r{i}"} for i in range(3)]}
    assert await call(params) == [{"id": "t1"}, {"id": "t2"}, {"id": "t3"}]
    log.fail = NoQuorumError("leadership changed before the write committed; retry")
    with pytest.raises(NoQuorumError):
        await call(params)
    log.fail = None
    assert await call(params) == [{"id": "t1"}, {"id": "t2"}, {"id": "t3"}]  # rids: applied once
    assert [t.id for t in log.sm.tasks] == ["t1", "t2", "t3"]


async def test_params_are_checked_per_task_before_anything_is_committed() -> None:
    log = Log()
    call = handler_over(log)
    bad = {"tasks": [{"argv": ["true"], "rid": "a"}, {"argv": "true", "rid": "b"}]}
    with pytest.raises(ProtocolError, match=r"tasks\[1\]: param 'argv' must be list of str"):
        await call(bad)
    with pytest.raises(ProtocolError, match="param 'tasks' must be list of dict"):
        call({"tasks": {"argv": ["true"]}})
    with pytest.raises(ProtocolError, match=r"param 'tasks\[0\]' must be list of dict"):
        call({"tasks": [["true"]]})
    too_many = {"tasks": [{"argv": ["true"]}] * (MAX_SUBMIT_MANY + 1)}
    with pytest.raises(ValueError, match=f"at most {MAX_SUBMIT_MANY} tasks"):
        await call(too_many)
    assert log.entries == [] and await call({"tasks": []}) == []
