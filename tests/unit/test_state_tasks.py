"""Tasks in the state machine: lifecycle, epoch fencing, retries, migration rules,
failover, cancellation, bounded history and the scheduler/runtime views."""

from __future__ import annotations

import pytest

import agent.state.tasks as tasks_mod
from agent.sched import ClusterSnapshot, NodeView, plan_failover
from agent.state import (
    ApplyResult,
    StateMachine,
    TaskStats,
    cmd_node_drain,
    cmd_node_register,
    cmd_node_undrain,
    cmd_task_assign,
    cmd_task_cancel,
    cmd_task_fail_node,
    cmd_task_finish,
    cmd_task_lost,
    cmd_task_migrate,
    cmd_task_place,
    cmd_task_start,
    cmd_task_submit,
    task_spec,
)


class Cluster:
    def __init__(self) -> None:
        self.sm = StateMachine()
        self.index = 0
        self.now = 100.0
        for i in range(1, 4):
            self(cmd_node_register(f"id{i}", f"n{i}", "", 0.0))

    def __call__(self, data: bytes) -> ApplyResult:
        self.index += 1
        return self.sm.apply(self.index, data)

    def submit(self, **kw: object) -> str:
        spec = task_spec(kw.pop("argv", ["sleep", "1"]), **kw)  # type: ignore[arg-type]
        result = self(cmd_task_submit(spec, "", self.now))
        assert result.ok, result.error
        task_id: str = result.value["id"]
        return task_id

    def ok(self, data: bytes) -> ApplyResult:
        result = self(data)
        assert result.ok, result.error
        return result

    def state(self, task_id: str) -> dict[str, object]:
        record = self.sm.task(task_id)
        assert record is not None
        return record


def stats(duration: float = 1.0, timed_out: bool = False) -> TaskStats:
    return TaskStats(duration, 0.5, 1 << 20, timed_out)


def test_happy_path_and_rows() -> None:
    c = Cluster()
    tid = c.submit(argv=["echo", "a b"], caps=["gpu"], priority=3)
    assert c.sm.task_rows() == [
        {"id": tid, "state": "queued", "node": None, "epoch": 0, "attempts": 0,
         "migrations": 0, "exit_code": None, "cmd": "echo 'a b'"}
    ]  # fmt: skip
    c.now = 100.25
    ev = c.ok(cmd_task_assign(tid, "id1", 1, "auction", "", c.now)).events
    assert ev[0]["data"]["kind"] == "assigned" and ev[0]["data"]["task"]["node"] == "n1"
    c.ok(cmd_task_start(tid, "id1", 1, "", 101.0))
    res = c.ok(cmd_task_finish(tid, "id1", 1, 0, stats(2.0), "", 103.0, ["id1", "id2", "id3"]))
    assert res.value == {"task": tid, "state": "succeeded"}
    rec = c.state(tid)
    assert (
        rec["attempts"] == 1 and rec["exit_code"] == 0 and rec["replicas"] == ["id1", "id2", "id3"]
    )
    assert rec["started_at"] == 101.0 and rec["finished_at"] == 103.0 and rec["peak_rss"] == 1 << 20
    assert c.sm.decision_latencies() == [pytest.approx(0.25)]
    assert c.sm.node_perf("id1") == (1.0, 2.0) and c.sm.node_perf("id2") == (1.0, None)
    assert c.sm.status_counts() == {
        "queued": 0,
        "running": 0,
        "done": 1,
        "failed": 0,
        "cancelled": 0,
    }


@pytest.mark.parametrize(
    ("cmd", "error"),
    [
        (cmd_task_start("t1", "id1", 1, "", 1.0), "stale epoch"),  # old epoch
        (cmd_task_start("t1", "id2", 1, "", 1.0), "stale epoch"),  # the old host
        (cmd_task_start("t1", "id3", 3, "", 1.0), "stale epoch"),  # a future epoch
        (cmd_task_finish("t1", "id2", 1, 0, stats(), "", 1.0), "stale epoch"),
        (cmd_task_finish("t1", "id1", 1, 0, stats(), "", 1.0), "stale epoch"),
        (cmd_task_assign("t1", "id3", 2, "x", "", 1.0), "not queued"),
        (cmd_task_migrate("t1", "id3", "steal", "", 1.0, epoch=1), "stale epoch"),
        (cmd_task_start("t9", "id1", 1, "", 1.0), "unknown task t9"),
    ],
)
def test_fencing_rejects_stale_epochs(cmd: bytes, error: str) -> None:
    c = Cluster()
    tid = c.submit(restartable=True)
    assert tid == "t1"
    c.ok(cmd_task_assign(tid, "id1", 1, "auction", "", 1.0))
    c.ok(cmd_task_migrate(tid, "id2", "steal", "", 2.0, epoch=1))  # now epoch 2 on id2
    before = c.sm.snapshot()
    result = c(cmd)
    assert not result.ok and error in (result.error or "")
    fresh = StateMachine()
    fresh.restore(before)
    fresh.applied_index = c.index
    assert c.sm.snapshot() == fresh.snapshot()  # a rejected command changes nothing


def test_assign_requires_next_epoch_so_racing_plans_fence() -> None:
    c = Cluster()
    tid = c.submit()
    c.ok(cmd_task_assign(tid, "id1", 1, "a", "", 1.0))
    c.ok(cmd_task_fail_node("id1", {}, "", 2.0))  # back to queued, epoch 2
    assert c.state(tid)["state"] == "queued" and c.state(tid)["epoch"] == 2
    stale = c(cmd_task_assign(tid, "id2", 2, "a", "", 3.0))
    assert stale.error == "stale epoch"
    c.ok(cmd_task_assign(tid, "id2", 3, "a", "", 3.0))
    second = c(cmd_task_assign(tid, "id3", 3, "a", "", 3.0))  # same plan proposed twice
    assert not second.ok


def test_place_applies_each_item_as_an_assign_would_and_lists_the_refused() -> None:
    c = Cluster()
    t1, t2, t3, t4 = (c.submit() for _ in range(4))
    c.ok(cmd_task_assign(t2, "id1", 1, "a", "", 1.0))  # t2 is already placed
    c.ok(cmd_node_drain("id3", "", 1.0))
    placed = c.ok(cmd_task_place(
        [(t1, "id2", 1), (t2, "id2", 2), (t3, "id3", 1), (t4, "id1", 2), ("t99", "id1", 1),
         (t4, "id1", 1)], "", 2.0,
    ))  # fmt: skip
    assert placed.value == {"placed": 2, "refused": [
        [t2, f"task {t2} is assigned, not queued"], [t3, "node n3 is draining"],
        [t4, "stale epoch"], ["t99", "unknown task t99"],
    ]}  # fmt: skip
    assert [(e["data"]["kind"], e["data"]["task"]["id"], e["data"]["task"]["node"])
            for e in placed.events if e["topic"] == "tasks"] == [
        ("assigned", t1, "n2"), ("assigned", t4, "n1")]  # fmt: skip
    assert (c.state(t1)["node"], c.state(t1)["epoch"], c.state(t3)["state"]) == ("id2", 1, "queued")
    assert c.sm.decision_latencies() == [1.0 - 100.0, 2.0 - 100.0, 2.0 - 100.0]
    # The same round proposed twice (a leader's retry) places nothing twice.
    again = c.ok(cmd_task_place([(t1, "id2", 1)], "", 3.0))
    assert again.value["placed"] == 0 and c.state(t1)["epoch"] == 1


def test_place_equals_the_same_assigns_one_by_one() -> None:
    one, many = Cluster(), Cluster()
    for c in (one, many):
        for _ in range(5):
            c.submit()
    items = [(f"t{i}", f"id{i % 3 + 1}", 1) for i in range(1, 6)]
    for task, node, epoch in items:
        one.ok(cmd_task_assign(task, node, epoch, "", "", 2.0))
    many.ok(cmd_task_place(items, "", 2.0))
    assert [one.state(t) for t, _, _ in items] == [many.state(t) for t, _, _ in items]
    assert one.sm.node_load() == many.sm.node_load()


def test_results_say_when_the_scheduler_may_have_something_new_to_place() -> None:
    c = Cluster()
    assert c(cmd_task_submit(task_spec(["true"]), "", 1.0)).placeable
    assert not c.ok(cmd_task_place([("t1", "id1", 1)], "", 1.0)).placeable
    assert c.ok(cmd_node_undrain("n1", "", 1.0)).placeable
    assert not c.ok(cmd_node_drain("n1", "", 1.0)).placeable
    assert not c.ok(cmd_task_finish("t1", "id1", 1, 0, stats(), "", 2.0)).placeable
    t2 = c.submit(retries=1)
    c.ok(cmd_task_assign(t2, "id2", 1, "", "", 3.0))
    assert c.ok(cmd_task_finish(t2, "id2", 1, 1, stats(), "", 4.0)).placeable  # requeued
    c.ok(cmd_task_assign(t2, "id2", 2, "", "", 5.0))
    assert c.ok(cmd_task_fail_node("id2", {}, "", 6.0)).placeable  # requeued
    assert not c(cmd_node_undrain("nobody", "", 7.0)).placeable  # refused


def test_a_batch_applies_each_command_as_its_own_entry_would() -> None:
    from agent.state import cmd_batch

    one, many = Cluster(), Cluster()
    cmds = [
        cmd_task_submit(task_spec(["true"]), "r1", 1.0),
        cmd_task_submit(task_spec(["false"], retries=0), "r2", 1.0),
        cmd_task_submit(task_spec(["true"]), "r1", 1.0),  # a retry: applied once
        cmd_task_assign("t1", "id1", 1, "", "", 2.0),
        cmd_task_assign("t1", "id2", 1, "", "", 2.0),  # refused: stale epoch
        b"\xc1",
    ]
    singles = [one(c) for c in cmds]
    batch = many.ok(cmd_batch(cmds, "", 3.0))
    assert batch.value == [[r.ok, r.value, r.error] for r in singles]
    def task_events(events: list[dict[str, object]]) -> list[dict[str, object]]:
        return [e for e in events if e["topic"] != "consensus"]

    assert batch.placeable
    assert task_events(batch.events) == task_events([e for r in singles for e in r.events])
    assert [one.state(t) for t in ("t1", "t2")] == [many.state(t) for t in ("t1", "t2")]
    nested = many.ok(cmd_batch([cmd_batch(cmds[:1], "", 3.0)], "", 3.0))
    assert nested.value == [[False, None, "a batch inside a batch"]]


def test_failed_run_retries_then_fails() -> None:
    c = Cluster()
    tid = c.submit(retries=1)
    c.ok(cmd_task_assign(tid, "id1", 1, "a", "", 1.0))
    c.ok(cmd_task_start(tid, "id1", 1, "", 1.0))
    res = c.ok(cmd_task_finish(tid, "id1", 1, 3, stats(), "", 2.0))
    assert res.value["state"] == "queued" and res.events[0]["data"]["kind"] == "requeued"
    assert c.state(tid)["reason"] == "exit code 3"
    c.ok(cmd_task_assign(tid, "id2", 2, "a", "", 3.0))
    c.ok(cmd_task_start(tid, "id2", 2, "", 3.0))
    res = c.ok(cmd_task_finish(tid, "id2", 2, 0, stats(timed_out=True), "", 4.0))
    assert res.value["state"] == "failed" and c.state(tid)["attempts"] == 2
    assert c.sm.node_perf("id1") == (0.0, 1.0)


def test_finish_without_committed_start_counts_the_attempt() -> None:
    c = Cluster()
    tid = c.submit(retries=0)
    c.ok(cmd_task_assign(tid, "id1", 1, "a", "", 1.0))
    c.ok(cmd_task_finish(tid, "id1", 1, 0, stats(0.5), "", 2.0))
    rec = c.state(tid)
    assert rec["state"] == "succeeded" and rec["attempts"] == 1 and rec["started_at"] == 1.5


@pytest.mark.parametrize(
    ("state", "restartable", "ok"),
    [
        ("queued", False, True),
        ("assigned", False, True),
        ("running", False, False),
        ("running", True, True),
        ("succeeded", True, False),
    ],
)
def test_migrate_rules(state: str, restartable: bool, ok: bool) -> None:
    c = Cluster()
    tid = c.submit(restartable=restartable)
    if state != "queued":
        c.ok(cmd_task_assign(tid, "id1", 1, "a", "", 1.0))
    if state in ("running", "succeeded"):
        c.ok(cmd_task_start(tid, "id1", 1, "", 1.0))
    if state == "succeeded":
        c.ok(cmd_task_finish(tid, "id1", 1, 0, stats(), "", 1.0))
    epoch = c.state(tid)["epoch"]
    result = c(cmd_task_migrate(tid, "id2", "hot-cold", "", 50.0))
    assert result.ok is ok, result.error
    if ok:
        rec = c.state(tid)
        assert rec["state"] == "assigned" and rec["node"] == "id2" and rec["epoch"] == epoch + 1  # type: ignore[operator]
        if state != "queued":
            assert rec["migrations"] == [
                {"from": "id1", "to": "id2", "reason": "hot-cold", "epoch": epoch + 1, "at": 50.0}  # type: ignore[operator]
            ]
            mig = [e for e in result.events if e["topic"] == "migrations"]
            assert mig[0]["data"]["from"] == "n1" and mig[0]["data"]["to"] == "n2"
            assert c.sm.migration_times() == [50.0]
        assert rec["load_moves"] == 1 and rec["last_move_at"] == 50.0


def test_migrate_refuses_same_node_and_draining_target() -> None:
    c = Cluster()
    tid = c.submit()
    c.ok(cmd_task_assign(tid, "id1", 1, "a", "", 1.0))
    assert "already on n1" in (c(cmd_task_migrate(tid, "id1", "steal", "", 1.0)).error or "")
    c.ok(cmd_node_drain("id2", "", 1.0))
    assert "draining" in (c(cmd_task_migrate(tid, "id2", "steal", "", 1.0)).error or "")
    other = c.submit()
    assert "draining" in (c(cmd_task_assign(other, "id2", 1, "a", "", 1.0)).error or "")


def test_fail_node_reassigns_requeues_and_loses_per_retries() -> None:
    c = Cluster()
    running_ok = c.submit(retries=1)
    running_spent = c.submit(retries=0)
    waiting = c.submit(retries=0)
    elsewhere = c.submit()
    for tid in (running_ok, running_spent, waiting):
        c.ok(cmd_task_assign(tid, "id1", 1, "a", "", 1.0))
    c.ok(cmd_task_assign(elsewhere, "id2", 1, "a", "", 1.0))
    for tid in (running_ok, running_spent):
        c.ok(cmd_task_start(tid, "id1", 1, "", 2.0))
    # the leader plans with the scheduler, then commits the plan
    nodes = (NodeView("id1", alive=False), NodeView("id2"), NodeView("id3"))
    moves = plan_failover(ClusterSnapshot(nodes, c.sm.sched_tasks(), 5.0), "id1")
    targets = {m.task: m.to for m in moves if m.to}
    targets.pop(waiting)  # pretend no host fitted this one
    res = c.ok(cmd_task_fail_node("id1", targets, "", 5.0))
    assert res.value == {"moved": 1, "requeued": 1, "lost": 1}
    assert c.state(running_ok)["state"] == "assigned" and c.state(running_ok)["epoch"] == 2
    assert c.state(running_ok)["node"] in ("id2", "id3")
    assert c.state(running_spent)["state"] == "lost"
    assert "no attempts left" in str(c.state(running_spent)["reason"])
    assert c.state(waiting)["state"] == "queued" and c.state(waiting)["epoch"] == 2
    assert c.state(elsewhere)["epoch"] == 1
    # the dead host returns and reports its stale copy: fenced
    late = c(cmd_task_finish(running_ok, "id1", 1, 0, stats(), "", 6.0))
    assert late.error == "stale epoch"
    assert [m["reason"] for m in c.state(running_ok)["migrations"]] == ["failover"]  # type: ignore[union-attr]
    assert c.state(running_ok)["load_moves"] == 0  # failover is not rate-limited


def test_cancel_and_lost() -> None:
    c = Cluster()
    tid = c.submit()
    c.ok(cmd_task_assign(tid, "id1", 1, "a", "", 1.0))
    c.ok(cmd_task_start(tid, "id1", 1, "", 1.0))
    assert c.ok(cmd_task_cancel(tid, "", 2.0)).events[0]["data"]["kind"] == "cancelled"
    assert [t.id for t in c.sm.tasks_for_node("id1")] == [tid]  # executor must kill it
    # the killed process reports: recorded, still cancelled
    assert c.ok(cmd_task_finish(tid, "id1", 1, -15, stats(), "", 3.0)).value["state"] == "cancelled"
    again = c(cmd_task_cancel(tid, "", 4.0))
    assert "already cancelled" in (again.error or "")
    other = c.submit()
    c.ok(cmd_task_lost(other, "", 5.0, "output gone"))
    assert c.state(other)["state"] == "lost" and c.state(other)["reason"] == "output gone"


def test_terminal_tasks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks_mod, "MAX_TERMINAL_TASKS", 2)
    c = Cluster()
    ids = [c.submit() for _ in range(4)]
    for tid in ids:
        c.ok(cmd_task_cancel(tid, "", 1.0))
    assert [r["id"] for r in c.sm.task_rows()] == ids[2:]
    assert c.sm.task(ids[0]) is None


def test_views_for_scheduler_and_runtime() -> None:
    c = Cluster()
    a = c.submit(caps=["gpu"], key="k1", priority=2)
    b = c.submit()
    done = c.submit()
    c.ok(cmd_task_assign(a, "id1", 1, "a", "", 1.0))
    c.ok(cmd_task_assign(b, "id1", 1, "a", "", 1.0))
    c.ok(cmd_task_start(b, "id1", 1, "", 1.0))
    c.ok(cmd_task_cancel(done, "", 1.0))
    views = {v.id: v for v in c.sm.sched_tasks()}
    assert set(views) == {a, b}
    assert views[a].caps == frozenset({"gpu"}) and views[a].key == "k1" and views[a].waiting_on_node
    assert views[a].strategy == "hash" and views[a].priority == 2
    assert c.sm.node_load() == {"id1": {"queued": 1, "running": 1}}
    assert c.sm.task_counts()["cancelled"] == 1


def test_shell_task_cmd() -> None:
    c = Cluster()
    tid = c.ok(cmd_task_submit(task_spec(shell="echo $HOME | wc"), "", 1.0)).value["id"]
    assert c.sm.task_rows()[0]["cmd"] == "echo $HOME | wc" and tid == "t1"


def test_load_restarts_do_not_use_up_retries() -> None:
    c = Cluster()
    tid = c.submit(retries=1, restartable=True)
    c.ok(cmd_task_assign(tid, "id1", 1, "a", "", 1.0))
    c.ok(cmd_task_start(tid, "id1", 1, "", 1.0))
    c.ok(cmd_task_migrate(tid, "id2", "hot-cold", "", 2.0, epoch=1))
    c.ok(cmd_task_start(tid, "id2", 2, "", 3.0))  # restarted elsewhere: a second run
    res = c.ok(cmd_task_finish(tid, "id2", 2, 1, stats(), "", 4.0))
    assert res.value["state"] == "queued"  # first failure, one retry left
    rec = c.state(tid)
    assert rec["attempts"] == 2 and rec["failures"] == 1


def test_tasks_for_node_index_matches_a_scan_through_every_transition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14: ``tasks_for_node`` reads an index kept up to date from the touched
    ids instead of scanning every task; it must answer what the scan answers after
    any mix of assign, start, finish, migrate, cancel, failover, eviction and restore."""
    import random

    monkeypatch.setattr(tasks_mod, "MAX_TERMINAL_TASKS", 15)
    c = Cluster()
    rng = random.Random(7)
    nodes = ["id1", "id2", "id3"]

    def check(sm: StateMachine) -> None:
        for node in nodes:
            scan = [t.id for t in sm.tasks
                    if t.node == node and t.state in ("assigned", "running", "cancelled")]
            assert sorted(t.id for t in sm.tasks_for_node(node)) == sorted(scan)

    ids = [c.submit(retries=3) for _ in range(30)]
    for step in range(400):
        tid = rng.choice(ids)
        rec = c.sm.task_record(tid)
        if rec is None:
            continue
        op = rng.randrange(7)
        node, epoch = rec.node or "id1", rec.epoch
        if op == 0 and rec.state == "queued":
            c(cmd_task_assign(tid, rng.choice(nodes), epoch + 1, "auction", "", c.now))
        elif op == 1:
            c(cmd_task_start(tid, node, epoch, "", c.now))
        elif op == 2:
            c(cmd_task_finish(tid, node, epoch, rng.choice([0, 1]), stats(), "", c.now))
        elif op == 3:
            c(cmd_task_migrate(tid, rng.choice(nodes), "steal", "", c.now, epoch=epoch))
        elif op == 4 and rng.random() < 0.3:
            c(cmd_task_cancel(tid, "", c.now))
        elif op == 5 and rng.random() < 0.1:
            c(cmd_task_fail_node(rng.choice(nodes), {}, "", c.now))
        elif op == 6 and rng.random() < 0.2:
            ids.append(c.submit(retries=3))
        if step % 3 == 0:  # read at times, as a host's reconcile does
            check(c.sm)
    check(c.sm)
    again = StateMachine()
    again.restore(c.sm.snapshot())
    check(again)
