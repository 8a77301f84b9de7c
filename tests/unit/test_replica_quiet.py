"""Issue 14: a run whose stdout and stderr both end empty before anything of them was
sent replicates nothing of them -- no probe, chunk, metadata row or ack on any host --
and its committed finish says so (an ``empty:<epoch>`` entry of its replica list), so
a read or listing of those streams is answered from the record on any host, also once
the run's host is gone.  A stream with bytes, or one probed while it ran, keeps the
protocol; the markers are written only once every member reads them (an older member:
the streams go as before); every release applies such a finish alike."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from test_replica_protocol import Net, key_whose_list_starts
from test_task_runner import ME, Host, event, wait_proposed

from agent.executor import ExecEvent, Executor
from agent.runtime.artifacts import MAX_MARKERS, ReplicaService, is_quiet, replica_list, shown_record
from agent.runtime.compat import quiet_outputs_read
from agent.runtime.output import TaskOutput
from agent.runtime.replica_messages import ReplicaChunk, ReplicaData, ReplicaRead
from agent.runtime.replica_store import EMPTY_SHA256
from agent.runtime.task_cpu import TaskCpuSampler
from agent.runtime.task_runner import LocalRunner
from agent.runtime.watchdog_lease import WatchdogLease
from agent.sched import SchedConfig
from agent.state import (
    StateMachine,
    TaskStats,
    cmd_node_register,
    cmd_task_assign,
    cmd_task_finish,
    cmd_task_submit,
    task_spec,
)
from agent.state.commands import Batch, TaskFinish, decode_command
from agent.state.tasks import TaskRecord
from agent.swim.members import MemberView


def record(task_id: str = "t1", epoch: int = 1) -> TaskRecord:
    return TaskRecord(task_id, ["true"], None, {}, None, [], None, "spread", 0, 0, None,
                      False, "test", 0.0, state="succeeded", node="a", epoch=epoch)


def captures(tmp: Path, out: bytes = b"", err: bytes = b"") -> dict[str, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    paths = {"out": tmp / "1.out", "err": tmp / "1.err"}
    paths["out"].write_bytes(out)
    paths["err"].write_bytes(err)
    return paths


def start_and_finish(net: Net, ring_key: str, paths: dict[str, Path]) -> bool:
    for name, path in paths.items():
        net.nodes["a"].add_source("t1", 1, name, path, ring_key)
    for name in paths:
        net.nodes["a"].finish_source("t1", 1, name, 1.0)
    return net.nodes["a"].quiet("t1", 1, ("out", "err"))


def test_an_empty_run_sends_and_stores_nothing_anywhere(tmp_path: Path) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    assert start_and_finish(net, ring_key, captures(tmp_path))
    sent: list[object] = []
    net.nodes["a"]._send = lambda to, msg: sent.append(msg)
    net.run(now=1.0, ticks=3)
    assert sent == [] and net.nodes["a"].quieted == 2
    for name in ("b", "c", "d", "e"):
        if name in net.nodes:
            assert not net.nodes[name].store.items
            assert not (tmp_path / name / ".meta-journal").exists()
    # the run's host still answers a read of them (until the finish is committed)
    data = net.nodes["a"].on_read(ReplicaRead(7, "t1", 1, "out", 0, 100))
    assert data.found and data.complete and data.size == 0 and data.sha256 == EMPTY_SHA256
    assert not net.nodes["a"].under_replicated()


def test_a_run_with_output_or_probed_while_running_keeps_the_protocol(tmp_path: Path) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    assert not start_and_finish(net, ring_key, captures(tmp_path, err=b"oops\n"))
    net.run(now=1.0, ticks=3)
    assert len(net.holders(("t1", 1, "err"))) == 3 and len(net.holders(("t1", 1, "out"))) == 3
    assert net.nodes["a"].quieted == 0
    # a stream probed while its run was running (a tick came first) is not taken out
    net2 = Net(tmp_path / "two")
    paths = captures(tmp_path / "two")
    for name, path in paths.items():
        net2.nodes["a"].add_source("t2", 1, name, path, ring_key)
    net2.run(now=1.0)
    for name in paths:
        net2.nodes["a"].finish_source("t2", 1, name, 1.5)
    assert not net2.nodes["a"].quiet("t2", 1, ("out", "err"))
    net2.run(now=1.5, ticks=2)
    assert len(net2.holders(("t2", 1, "out"))) == 3


def members(*versions: str) -> list[MemberView]:
    return cast(list[MemberView], [
        SimpleNamespace(id=f"n{i}", state="alive", meta=SimpleNamespace(version=v))
        for i, v in enumerate(versions)])


def service(tmp: Path, node: str, sent: list[tuple[str, object]], view: list[MemberView],
            allowed: bool | None = None) -> ReplicaService:
    return ReplicaService(
        node_id=node, node_name=node, root=tmp / node, members=lambda: view,
        sched_config=SchedConfig, send_to_node=lambda n, m: sent.append((n, m)),
        send_to_addr=lambda a, m: sent.append((a, m)), records=lambda _id: None,
        quiet_allowed=None if allowed is None else (lambda: allowed),
    )


def finish(svc: ReplicaService, rec: TaskRecord, paths: dict[str, Path]) -> list[str]:
    svc.run_started(rec, rec.epoch, paths.__getitem__)
    return asyncio.run(svc.run_finished(rec, rec.id, rec.epoch, None, None))


def test_the_finish_says_empty_and_any_host_reads_it_from_the_record(tmp_path: Path) -> None:
    sent: list[tuple[str, object]] = []
    view = members("0.4.0", "0.4.0")
    host = service(tmp_path, "n0", sent, view)
    rec = record()
    replicas = finish(host, rec, captures(tmp_path))
    assert replicas[-1] == "empty:1" and set(replicas[:-1]) <= {"n0", "n1"}
    host.replicator.tick(10.0)
    assert not sent  # nothing to anyone
    # the committed record, read on another host that holds nothing, with nobody to ask
    committed = record()
    committed.replicas = replicas
    reader = service(tmp_path, "n1", sent, members())
    got = asyncio.run(reader.read(committed, 1, "err", 0, 100))
    assert got is not None and got.found and got.complete and got.data == b"" and got.size == 0
    rows = asyncio.run(reader.listing(committed))
    assert [(r["epoch"], r["name"], r["size"], r["complete"]) for r in rows] == \
        [(1, "err", 0, True), (1, "out", 0, True)]
    assert not sent and is_quiet(committed, 1, "out") and not is_quiet(committed, 1, "a:x")
    # through ``task.logs``'s path, the run's host gone (no executor copy, no holder)
    executor = SimpleNamespace(running=dict, read_output=None)
    tasks = SimpleNamespace(task_record=lambda _id: committed)
    output = TaskOutput(executor=cast(Any, executor), replicas=reader, tasks=cast(Any, tasks),
                        peers=cast(Any, None))
    reply = asyncio.run(output.read("t1", "out", 0))
    assert reply["data"] == b"" and reply["eof"] and reply["epoch"] == 1


def test_an_older_member_gets_the_streams_as_before(tmp_path: Path) -> None:
    assert quiet_outputs_read(lambda: members("0.4.0", "0.4.1"))()
    assert not quiet_outputs_read(lambda: members("0.4.0", "0.3.0"))()
    assert not quiet_outputs_read(lambda: members("0.4.0", "junk"))()
    sent: list[tuple[str, object]] = []
    host = service(tmp_path, "n0", sent, members("0.4.0", "0.3.0"), allowed=False)
    replicas = finish(host, record(), captures(tmp_path))
    assert not any(r.startswith("empty:") for r in replicas) and replicas
    host.replicator.tick(10.0)
    assert any(isinstance(m, ReplicaChunk) and m.task_id == "t1" for _, m in sent)


def test_markers_are_carried_on_bounded_and_applied_alike_by_every_node() -> None:
    rec = record(epoch=3)
    rec.replicas = ["x", "empty:1", "empty:2"]
    assert replica_list(["a", "b"], rec, 3, True) == ["a", "b", "empty:1", "empty:2", "empty:3"]
    assert replica_list(["a"], rec, 3, False) == ["a", "empty:1", "empty:2"]
    rec.replicas = [f"empty:{i}" for i in range(40)]
    many = replica_list(["a", "b", "c"], rec, 40, True)
    assert len(many) == MAX_MARKERS and many[-1] == "empty:40" and many[:3] == ["a", "b", "c"]
    # a leader and a follower apply the same entries: identical state and snapshots
    machines = [StateMachine(), StateMachine()]
    spec = task_spec(["true"])
    entries = [cmd_node_register("id1", "n1", "", 0.0), cmd_task_submit(spec, "s", 1.0)]
    for sm in machines:
        for index, entry in enumerate(entries, 1):
            assert sm.apply(index, entry).ok
    task = machines[0].task_rows()[0]["id"]
    more = [cmd_task_assign(task, "id1", 1, "placed", "", 2.0),
            cmd_task_finish(task, "id1", 1, 0, TaskStats(0.01), "", 3.0, ["id1", "empty:1"])]
    for sm in machines:
        for index, entry in enumerate(more, 3):
            assert sm.apply(index, entry).ok
    assert machines[0].snapshot() == machines[1].snapshot()
    shown = machines[1].task(task)
    assert shown is not None and shown["replicas"] == ["id1", "empty:1"]


def test_a_silent_run_never_builds_an_item_and_a_read_while_running_enters_it(
    tmp_path: Path,
) -> None:
    sent: list[tuple[str, object]] = []
    host = service(tmp_path, "n0", sent, members("0.4.0"))
    rec = record()
    paths = captures(tmp_path)
    host.run_started(rec, 1, paths.__getitem__)
    replicas = asyncio.run(host.run_finished(rec, "t1", 1, None, None, silent=True))
    assert replicas[-1] == "empty:1" and host.replicator.quieted == 2
    assert not host.store.items and len(host.replicator.items_of("t1")) == 2
    host.replicator.tick(10.0)
    assert not sent
    host.on_message("peer", ReplicaRead(3, "t1", 1, "err", 0, 10))
    [(_, answer)] = sent
    assert isinstance(answer, ReplicaData) and answer.found and answer.complete
    # a run still running: a host's read makes its streams items and answers live bytes
    sent.clear()
    two = record("t2")
    live = captures(tmp_path / "live", out=b"partial ")
    host.run_started(two, 1, live.__getitem__)
    host.on_message("peer", ReplicaRead(4, "t2", 1, "out", 0, 100))
    [(_, answer)] = sent
    assert isinstance(answer, ReplicaData) and answer.live and answer.data == b"partial "
    # a silent flag cannot take out streams already in the protocol: they finish as before
    replicas = asyncio.run(host.run_finished(two, "t2", 1, None, None, silent=True))
    assert not any(r.startswith("empty:") for r in replicas)
    item = host.replicator.item("t2", 1, "out")
    assert item is not None and item.complete and item.size == len(b"partial ")


async def test_the_executor_says_which_runs_were_silent(tmp_data_dir: Path) -> None:
    executor = Executor(tmp_data_dir, slots=2)
    for task_id, cmd, silent in (("q", "true", True), ("t", "echo hi >&2", False)):
        await executor.start(task_id, 1, cmd)
        event = await executor.wait(task_id)
        assert event is not None and event.silent is silent


async def test_a_finish_without_artifacts_needs_no_task_of_its_own() -> None:
    host = Host()
    plain, art = host.submit(ME), host.submit(ME)
    awaited: list[str] = []
    finishes: dict[str, tuple[str, ...]] = {}

    async def after_run(ev: ExecEvent) -> list[str]:
        awaited.append(ev.task_id)
        return ["collected"]

    async def propose(data: bytes) -> object:
        body = decode_command(data).body
        for cmd in body.cmds if isinstance(body, Batch) else (data,):
            item = decode_command(cmd).body
            if isinstance(item, TaskFinish):
                finishes[item.task] = item.replicas
        return await host.propose(data)

    host.runner = LocalRunner(
        node_id=ME, executor=host.executor, records=lambda: host.sm, propose=propose,
        replicate=lambda task, epoch: [], lease=WatchdogLease(3.0, lambda: True),
        cpu=TaskCpuSampler(), after_run=after_run,
        after_run_now=lambda ev: None if ev.task_id == art else ["n1", "empty:1"],
    )
    for tid in (plain, art):
        host.runner.on_exec_event(event("started", tid))
        host.runner.on_exec_event(event("finished", tid))
    host.runner.start()
    try:
        await wait_proposed(host, 2)
    finally:
        await host.runner.close()
    assert awaited == [art]
    assert finishes == {plain: ("n1", "empty:1"), art: ("collected",)}


def test_run_finished_now_leaves_a_run_with_artifacts_to_run_finished(tmp_path: Path) -> None:
    sent: list[tuple[str, object]] = []
    host = service(tmp_path, "n0", sent, members("0.4.0"))
    rec, wants = record("t1"), record("t2")
    wants.artifacts = ["result.bin"]
    for one in (rec, wants):
        host.run_started(one, 1, captures(tmp_path / one.id).__getitem__)
    assert host.run_finished_now(wants, "t2", 1, silent=True) is None
    assert host.run_finished_now(rec, "t1", 1, silent=True) == ["n0", "empty:1"]
    assert host.run_finished_now(None, "t3", 1) == []


def test_task_get_shows_hosts_as_replicas_and_the_empty_attempts_apart() -> None:
    row = {"id": "t1", "replicas": ["n0", "n1", "empty:1", "empty:3"], "state": "done"}
    shown = shown_record(row)
    assert shown["replicas"] == ["n0", "n1"] and shown["empty_outputs"] == [1, 3]
    assert row["replicas"] == ["n0", "n1", "empty:1", "empty:3"]  # the state's own copy untouched
    assert shown_record({"id": "t2", "replicas": ["n0"]})["empty_outputs"] == []
