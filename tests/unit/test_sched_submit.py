"""``CommitBatcher``: task writes queued in one pass of the event loop commit as one
``batch`` entry, each caller gets its own command's result (a refusal raised, a retried
rid applied once), a lone write goes as itself, and a batch that fails fails every
caller.  The Raft side is a fake that applies to a real ``StateMachine``."""

from __future__ import annotations

import asyncio

import pytest
from support.applying_log import Log

from agent.errors import NoQuorumError, TaskError
from agent.runtime.handlers.common import check_applied
from agent.runtime.sched_submit import MAX_COALESCED, CommitBatcher
from agent.state import cmd_task_cancel, cmd_task_submit, task_spec
from agent.state.machine import ApplyResult


def submit(rid: str, argv: tuple[str, ...] = ("true",)) -> bytes:
    return cmd_task_submit(task_spec(list(argv)), rid, 1.0)


async def test_writes_queued_together_commit_as_one_batch_with_their_own_results() -> None:
    log = Log()
    batcher = CommitBatcher(log.propose, check_applied)
    results = await asyncio.gather(
        batcher.commit(submit("a")), batcher.commit(submit("b")), batcher.commit(submit("a")),
        batcher.commit(cmd_task_cancel("t9", "c", 1.0)), return_exceptions=True,
    )  # fmt: skip
    assert log.entries == ["batch"]
    first, second, retried, refused = results
    assert isinstance(first, ApplyResult) and first.value == {"id": "t1"}
    assert isinstance(second, ApplyResult) and second.value == {"id": "t2"}
    assert isinstance(retried, ApplyResult) and retried.value == {"id": "t1"}  # applied once
    assert isinstance(refused, TaskError) and "unknown task t9" in str(refused)
    assert [t.id for t in log.sm.tasks] == ["t1", "t2"]


async def test_a_lone_write_is_proposed_as_itself() -> None:
    log = Log()
    batcher = CommitBatcher(log.propose, check_applied)
    assert (await batcher.commit(submit("a"))).value == {"id": "t1"}
    assert (await batcher.commit(submit("b"))).value == {"id": "t2"}
    assert log.entries == ["task.submit", "task.submit"]


async def test_a_burst_larger_than_a_batch_is_split() -> None:
    log = Log()
    batcher = CommitBatcher(log.propose, check_applied)
    results = await asyncio.gather(*(batcher.commit(submit(f"r{i}")) for i in range(MAX_COALESCED + 3)))
    assert log.entries == ["batch", "batch"]
    assert [r.value["id"] for r in results] == [f"t{i}" for i in range(1, MAX_COALESCED + 4)]


async def test_a_failed_batch_fails_every_caller() -> None:
    log = Log()
    log.fail = NoQuorumError("leadership changed before the write committed; retry")
    batcher = CommitBatcher(log.propose, check_applied)
    results = await asyncio.gather(
        batcher.commit(submit("a")), batcher.commit(submit("b")), return_exceptions=True
    )
    assert all(isinstance(r, NoQuorumError) for r in results)
    log.fail = None
    assert (await batcher.commit(submit("a"))).value == {"id": "t1"}  # the retry goes through


async def test_a_caller_that_gives_up_does_not_stop_the_others() -> None:
    log = Log()
    batcher = CommitBatcher(log.propose, check_applied)
    gone = asyncio.ensure_future(batcher.commit(submit("a")))
    kept = asyncio.ensure_future(batcher.commit(submit("b")))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await kept).value == {"id": "t2"}
    with pytest.raises(asyncio.CancelledError):
        await gone
