"""``LocalRunner`` directly: reconcile against a real ``StateMachine`` (start what is
ours at the current epoch, fence stale and cancelled runs, never start a run twice,
report an unstartable command as exit 127), executor events to reports, and report
retry through a lost quorum.  The executor below it is a recording fake."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from agent.errors import NoQuorumError, TaskError
from agent.executor import ExecEvent
from agent.runtime.task_cpu import TaskCpuSampler
from agent.runtime.task_runner import LocalRunner
from agent.runtime.watchdog_lease import WatchdogLease
from agent.state import (
    StateMachine,
    TaskStats,
    cmd_node_register,
    cmd_task_assign,
    cmd_task_cancel,
    cmd_task_finish,
    cmd_task_migrate,
    cmd_task_submit,
    decode_command,
    task_spec,
)
from agent.state.commands import Batch
from agent.state.machine import ApplyResult
from agent.state.tasks import TaskRecord

ME, OTHER = "me", "other"


class FakeExecutor:
    """Records what the runner asks; runs are just entries in ``runs``."""

    def __init__(self, slots: int = 2) -> None:
        self.slots = slots
        self.runs: dict[str, int] = {}
        self.calls: list[tuple[object, ...]] = []
        self.unstartable: set[str] = set()

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - len(self.runs))

    def running(self) -> dict[str, int]:
        return dict(self.runs)

    async def start(
        self, task_id: str, epoch: int, cmd: Sequence[str] | str,
        env: Mapping[str, str] | None = None, cwd: str | None = None,
        timeout: float | None = None, mem: int = 0, pids: int = 0,
    ) -> None:  # fmt: skip
        self.calls.append(("start", task_id, epoch))
        if task_id in self.unstartable:
            raise TaskError("cannot execute: No such file or directory")
        self.runs[task_id] = epoch

    async def cancel(self, task_id: str) -> None:
        self.calls.append(("cancel", task_id))
        self.runs.pop(task_id, None)

    async def kill_stale(self, task_id: str, epoch: int) -> None:
        self.calls.append(("kill_stale", task_id, epoch))
        self.runs.pop(task_id, None)

    def done_with(self, task_id: str, epoch: int) -> None:
        pass


class Host:
    def __init__(self, slots: int = 2, refuse: int = 0) -> None:
        self.sm = StateMachine()
        self.index = 0
        self.executor = FakeExecutor(slots)
        self.proposed: list[tuple[str, str]] = []  # (op, task) in commit order
        self.batches: list[int] = []  # reports per batch entry
        self.refuse = refuse
        """Proposals to fail with no quorum before accepting."""
        self.runner = LocalRunner(
            node_id=ME, executor=self.executor, records=lambda: self.sm,
            propose=self.propose, replicate=lambda task, epoch: [OTHER],
            lease=WatchdogLease(3.0, lambda: True), cpu=TaskCpuSampler(),
        )  # fmt: skip
        for node in (ME, OTHER):
            self.commit(cmd_node_register(node, node, "", 0.0))

    def commit(self, data: bytes) -> None:
        self.index += 1
        result = self.sm.apply(self.index, data)
        assert result.ok, result.error

    async def propose(self, data: bytes) -> object:
        if self.refuse > 0:
            self.refuse -= 1
            raise NoQuorumError()
        body = decode_command(data).body
        if isinstance(body, Batch):  # the reports of one pass, in order
            self.batches.append(len(body.cmds))
            for cmd in body.cmds:
                item = decode_command(cmd).body
                self.proposed.append((item.OP, item.task))  # type: ignore[union-attr]
            return ApplyResult(True, [[True, None, None]] * len(body.cmds))
        self.proposed.append((body.OP, body.task))  # type: ignore[union-attr]
        return None

    def submit(self, node: str | None = None) -> str:
        self.commit(cmd_task_submit(task_spec(["true"]), "", 1.0))
        tid = f"t{self.sm.tasks.seq}"
        if node is not None:
            self.commit(cmd_task_assign(tid, node, 1, "", "", 2.0))
        return tid


def event(kind: str, tid: str, epoch: int = 1, reason: str = "exit") -> ExecEvent:
    return ExecEvent(kind, tid, epoch, 4242, 0 if kind == "finished" else None,  # type: ignore[arg-type]
                     0.5, 0.1, 1 << 20, 3.0, reason)  # type: ignore[arg-type]


async def test_reconcile_starts_what_is_assigned_here_while_slots_last() -> None:
    host = Host(slots=2)
    mine = [host.submit(ME) for _ in range(3)]
    host.submit(OTHER)
    host.submit()  # still queued
    await host.runner.reconcile()
    assert host.executor.calls == [("start", mine[0], 1), ("start", mine[1], 1)]


async def test_reconcile_fences_a_run_that_moved_away_and_cancels_a_cancelled_one() -> None:
    host = Host()
    moved, cancelled = host.submit(ME), host.submit(ME)
    await host.runner.reconcile()
    host.commit(cmd_task_migrate(moved, OTHER, "steal", "", 3.0, 1))
    host.commit(cmd_task_cancel(cancelled, "", 3.0))
    host.executor.calls.clear()
    await host.runner.reconcile()
    assert sorted(host.executor.calls, key=str) == [
        ("cancel", cancelled), ("kill_stale", moved, 2)
    ]


async def test_a_run_that_ended_here_is_not_started_again_before_its_report_commits() -> None:
    host = Host()
    tid = host.submit(ME)
    await host.runner.reconcile()
    host.runner.on_exec_event(event("started", tid))
    host.executor.runs.pop(tid)
    host.runner.on_exec_event(event("finished", tid))  # report not committed yet
    host.executor.calls.clear()
    await host.runner.reconcile()
    assert host.executor.calls == []
    # Once the finish commits the task is done; a newer epoch would start again.
    host.commit(cmd_task_finish(tid, ME, 1, 0, TaskStats(0.5), "", 4.0))
    await host.runner.reconcile()
    assert host.executor.calls == []


async def test_an_unstartable_command_is_reported_as_exit_127_once() -> None:
    host = Host()
    tid = host.submit(ME)
    host.executor.unstartable.add(tid)
    host.runner.start()
    try:
        await host.runner.reconcile()
        await host.runner.reconcile()  # not tried twice at the same epoch
        await wait_proposed(host, 1)
    finally:
        await host.runner.close()
    assert host.executor.calls == [("start", tid, 1)]
    assert host.proposed == [("task.finish", tid)]


async def test_a_finish_replaces_an_unsent_start_and_reports_survive_a_lost_quorum() -> None:
    host = Host(refuse=1)
    tid = host.submit(ME)
    host.runner.on_exec_event(event("started", tid))
    host.runner.on_exec_event(event("finished", tid))  # before the report loop ran
    later = host.submit(ME)
    host.runner.on_exec_event(event("started", later))
    host.runner.start()
    try:
        await wait_proposed(host, 2)
    finally:
        await host.runner.close()
    # One commit for the short run, not two.  The queued reports go as one batch
    # entry; refused whole (no quorum), the batch goes again, in the same order.
    assert host.proposed == [("task.finish", tid), ("task.start", later)]
    assert host.batches == [2]


async def test_a_stale_kill_asks_for_a_reconcile_and_reports_nothing() -> None:
    host = Host()
    tid = host.submit(ME)
    host.runner.on_exec_event(event("started", tid))
    host.runner.on_exec_event(event("finished", tid, reason="stale"))
    host.runner.start()
    try:
        await wait_proposed(host, 1)
    finally:
        await host.runner.close()
    assert host.proposed == [("task.start", tid)]


async def wait_proposed(host: Host, count: int) -> None:
    async def until() -> None:
        while len(host.proposed) < count:
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(until(), 5.0)
    except TimeoutError:
        pytest.fail(f"{count} report(s) never proposed: {host.proposed}")


async def test_a_reconcile_with_every_slot_busy_does_not_list_the_hosts_tasks() -> None:
    # Every applied batch that touches tasks wakes a reconcile; with both slots busy
    # there is nothing to start, so the host's task list (up to every task queued
    # here) is not built at all.
    host = Host(slots=2)
    mine = [host.submit(ME) for _ in range(5)]
    listed: list[str] = []
    real = host.sm.tasks_for_node

    def tasks_for_node(node_id: str) -> list[TaskRecord]:
        listed.append(node_id)
        return real(node_id)

    host.sm.tasks_for_node = tasks_for_node  # type: ignore[method-assign]
    await host.runner.reconcile()
    assert host.executor.calls == [("start", mine[0], 1), ("start", mine[1], 1)]
    assert listed == [ME]
    await host.runner.reconcile()
    assert listed == [ME]  # both slots busy: not listed again
    host.runner.on_exec_event(event("started", mine[0]))
    host.executor.runs.pop(mine[0])  # it ended: a slot frees, so listed and the next starts
    await host.runner.reconcile()
    assert listed == [ME, ME]
    assert host.executor.calls[-1] == ("start", mine[2], 1)
