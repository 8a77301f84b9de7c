"""Property: any command sequence applied to one replica, and to another that restores
a mid-way snapshot and applies the rest, gives byte-equal state and equal results."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.state import (
    StateMachine,
    TaskStats,
    cmd_kv_cas,
    cmd_kv_delete,
    cmd_kv_put,
    cmd_node_drain,
    cmd_node_register,
    cmd_node_undrain,
    cmd_proposal_create,
    cmd_proposal_vote,
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

nodes = st.sampled_from(["id1", "id2", "id3", "n1"])
tasks = st.sampled_from(["t1", "t2", "t3", "t4", "t9"])
epochs = st.integers(0, 4)
keys = st.sampled_from(["a", "b", "c/d"])
namespaces = st.sampled_from(["app", "sys"])
values = st.binary(max_size=8)
rids = st.one_of(st.just(""), st.sampled_from([f"r{i}" for i in range(6)]))
at = st.floats(0, 1e6, allow_nan=False)
reasons = st.sampled_from(["steal", "hot-cold", "drain", "failover", "auction"])

commands = st.one_of(
    st.builds(cmd_kv_put, namespaces, keys, values, rids, at),
    st.builds(cmd_kv_delete, namespaces, keys, rids, at),
    st.builds(cmd_kv_cas, namespaces, keys, st.none() | values, values, rids, at),
    st.builds(
        cmd_proposal_create, st.sampled_from(["t", "", "x\ny"]), st.just("b"), nodes, rids, at,
        st.sampled_from([0.5, 0.67, 1.0]), st.just("text"), st.integers(0, 4),
    ),
    st.builds(
        cmd_proposal_vote, st.integers(0, 3), nodes, st.booleans(), rids, at, st.integers(0, 4)
    ),
    st.builds(cmd_node_register, nodes, st.sampled_from(["web1", "web2", ""]), rids, at),
    st.builds(cmd_node_drain, nodes, rids, at),
    st.builds(cmd_node_undrain, nodes, rids, at),
    st.builds(
        lambda argv, retries, restartable, key, rid, t: cmd_task_submit(
            task_spec(argv, retries=retries, restartable=restartable, key=key), rid, t
        ),
        st.sampled_from([["true"], ["sleep", "1"]]), st.integers(0, 2), st.booleans(),
        st.none() | keys, rids, at,
    ),
    st.builds(cmd_task_assign, tasks, nodes, epochs, reasons, rids, at),
    st.builds(cmd_task_start, tasks, nodes, epochs, rids, at),
    st.builds(
        cmd_task_finish, tasks, nodes, epochs, st.integers(-9, 2),
        st.builds(TaskStats, st.floats(0, 100), st.floats(0, 100), st.integers(0, 1 << 30),
                  st.booleans()),
        rids, at, st.lists(nodes, max_size=3),
    ),
    st.builds(cmd_task_cancel, tasks, rids, at),
    st.builds(cmd_task_migrate, tasks, nodes, reasons, rids, at, st.none() | epochs),
    st.builds(cmd_task_lost, tasks, rids, at),
    st.builds(cmd_task_fail_node, nodes, st.dictionaries(tasks, nodes, max_size=3), rids, at),
    st.sampled_from([b"", b"\xc1garbage", b"\x80"]),
)  # fmt: skip


def guided(data: st.DataObject, sm: StateMachine, at_: float) -> bytes:
    """A task command aimed at a live task with its real epoch most of the time, so the
    sequences reach assigned/running/finished states and exercise fencing on purpose."""
    live = [r for r in sm.task_rows() if r["state"] not in ("succeeded", "failed", "lost")]
    if not live:
        return data.draw(commands)
    row = data.draw(st.sampled_from(live))
    record = sm.task_record(row["id"])
    assert record is not None
    epoch = record.epoch + data.draw(st.sampled_from([0, 0, 0, 1, -1]))
    node = record.node if record.node and data.draw(st.booleans()) else data.draw(nodes)
    rid = data.draw(rids)
    kind = data.draw(st.sampled_from(["assign", "start", "finish", "migrate", "fail", "cancel"]))
    if kind == "assign":
        return cmd_task_assign(record.id, node, max(0, epoch + 1), "auction", rid, at_)
    if kind == "start":
        return cmd_task_start(record.id, node, max(0, epoch), rid, at_)
    if kind == "finish":
        code = data.draw(st.sampled_from([0, 0, 1]))
        return cmd_task_finish(record.id, node, max(0, epoch), code, TaskStats(1.0), rid, at_)
    if kind == "migrate":
        return cmd_task_migrate(record.id, data.draw(nodes), "steal", rid, at_, max(0, epoch))
    if kind == "fail":
        target = {record.id: data.draw(nodes)} if data.draw(st.booleans()) else {}
        return cmd_task_fail_node(node, target, rid, at_)
    return cmd_task_cancel(record.id, rid, at_)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 80), st.data())
def test_restored_replica_converges(length: int, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, length), label="snapshot after")
    left, right = StateMachine(), StateMachine()
    restored: StateMachine | None = None
    for i in range(1, length + 1):
        if restored is None and i > cut:
            restored = StateMachine()
            restored.restore(right.snapshot())
            assert restored.snapshot() == right.snapshot()
        now = float(i)
        use_guided = data.draw(st.integers(0, 2)) > 0
        cmd = guided(data, left, now) if use_guided else data.draw(commands)
        a = left.apply(i, cmd)
        b = (restored or right).apply(i, cmd)
        assert (a.ok, a.error, a.events) == (b.ok, b.error, b.events), f"entry {i}"
        assert _lists(a.value) == _lists(b.value)
    other = restored or right
    assert left.snapshot() == other.snapshot()
    assert left.task_rows() == other.task_rows()
    for record in left.tasks:
        # fencing bookkeeping: every move recorded its (strictly increasing) epoch
        epochs = [m["epoch"] for m in record.migrations]
        assert epochs == sorted(set(epochs)) and all(e <= record.epoch for e in epochs)
        assert record.failures <= record.retries + 1


def _lists(value: object) -> object:
    """Cached results come back from a snapshot with tuples as lists."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


@settings(max_examples=60, deadline=None)
@given(st.lists(commands, min_size=1, max_size=40))
def test_apply_is_deterministic(cmds: list[bytes]) -> None:
    a, b = StateMachine(), StateMachine()
    for i, cmd in enumerate(cmds, start=1):
        assert a.apply(i, cmd) == b.apply(i, cmd)
    assert a.snapshot() == b.snapshot()
