"""Issue 14: what replicating a short task's (mostly empty) output costs -- an empty
finished item is only a row of its run's journal record on a replica (no data file or
directory, reloads, reads empty), a pass's runs are one journal write, made before the
acks, replicas that heard
from a holder of the whole item do not probe it, and a round looks only at items
that still need a send (a changed view looks at all again)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from test_replica_protocol import Net, key_whose_list_starts

from agent.runtime.artifacts import ReplicaService
from agent.runtime.replica_messages import ReplicaAck, ReplicaChunk
from agent.runtime.replica_store import EMPTY_SHA256, ReplicaStore, StoredItem
from agent.runtime.replication import RESEND_AFTER, Replicator
from agent.sched import SchedConfig
from agent.swim.members import MemberView


def empty_chunk(name: str, node: str = "a") -> ReplicaChunk:
    return ReplicaChunk("t1", 1, name, 0, b"", 0, EMPTY_SHA256, "k", 5.0, "", node)


def test_an_empty_finished_item_is_a_meta_row_only(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path, "b")
    replicator = Replicator(node_id="b", store=store, targets=lambda _k: ["a", "b"],
                            send=lambda _n, _m: None)
    ack = replicator.on_chunk(empty_chunk("out"), 1.0)
    assert (ack.size, ack.complete, ack.error) == (0, True, "")
    item = store.items[("t1", 1, "out")]
    assert not store.path(item).exists() and not (tmp_path / "t1").exists()
    assert (tmp_path / ".meta-journal").exists()
    assert store.read(item, 0, 10) == b""
    again = {i.key: i for i in ReplicaStore(tmp_path, "b").load()}
    assert again[("t1", 1, "out")].complete and again[("t1", 1, "out")].size == 0
    assert again[("t1", 1, "out")].sha256 == hashlib.sha256().hexdigest()
    wrong = ReplicaChunk("t1", 1, "err", 0, b"", 0, "00" * 32, "k", 5.0, "", "a")
    assert "checksum mismatch" in replicator.on_chunk(wrong, 1.0).error


def test_deferred_meta_is_written_once_per_run_before_acks(tmp_path: Path) -> None:
    acks: list[tuple[str, object]] = []
    service = ReplicaService(
        node_id="b", node_name="n2", root=tmp_path / "replicas", members=list,
        sched_config=SchedConfig, send_to_node=lambda n, m: None,
        send_to_addr=lambda a, m: acks.append((a, m)), records=lambda _id: None,
    )
    writes: list[tuple[tuple[str, int], ...]] = []
    real = service.store._write_meta

    def counting(*runs: tuple[str, int]) -> None:
        writes.append(runs)
        real(*runs)

    service.store._write_meta = counting  # type: ignore[method-assign]

    async def deliver() -> None:
        service.on_message("h0", empty_chunk("out"))
        service.on_message("h0", empty_chunk("err"))
        assert not acks and not writes  # nothing acknowledged before its row is written
        await asyncio.sleep(0)

    asyncio.run(deliver())
    assert writes == [(("t1", 1),)]
    assert [(a, type(m)) for a, m in acks] == [("h0", ReplicaAck)] * 2
    rows = {i.name for i in ReplicaStore(tmp_path / "replicas", "n2").load()}
    assert rows == {"out", "err"}


def test_replicas_do_not_probe_a_holder_they_heard_from(tmp_path: Path) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    targets = net.targets(ring_key)
    for name in ("out", "err"):
        net.nodes["a"].put_local(StoredItem("t1", 1, name, ring_key, finished_at=1.0), b"")
    sent: list[tuple[str, str]] = []
    for sender in net.nodes:
        real = net.nodes[sender]._send

        def counting(to: str, msg: object, real=real, sender=sender) -> None:  # type: ignore[no-untyped-def]
            if isinstance(msg, ReplicaChunk):
                sent.append((sender, to))
            real(to, msg)

        net.nodes[sender]._send = counting
    net.run(now=1.0, ticks=3)
    assert all(t in net.holders(("t1", 1, "out")) for t in targets)
    # "a" sends both (empty) items in one chunk to each of the two others; the
    # replicas, which heard from "a", probe only each other (here in the same round;
    # 12 chunks before issue 14).
    assert sum(1 for s, _ in sent if s == "a") == 2
    assert not any(to == "a" for _, to in sent)
    assert len(sent) == 4


def test_a_round_looks_only_at_items_that_still_need_a_send(tmp_path: Path) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    net.nodes["a"].put_local(StoredItem("t1", 1, "out", ring_key, finished_at=1.0), b"x")
    net.run(now=1.0, ticks=3)
    assert not any(node._active for node in net.nodes.values())
    net.alive.discard(net.targets(ring_key)[1])  # the view moves: everything is looked at
    net.run(now=2.0, ticks=2)
    assert set(net.targets(ring_key)) <= net.holders(("t1", 1, "out"))


def test_service_view_changes_only_when_members_do(tmp_path: Path) -> None:
    members = [SimpleNamespace(id="x", state="alive")]
    service = ReplicaService(
        node_id="me", node_name="n1", root=tmp_path,
        members=lambda: cast(list[MemberView], list(members)),
        sched_config=SchedConfig, send_to_node=lambda n, m: None,
        send_to_addr=lambda a, m: None, records=lambda _id: None,
    )
    first = service._view
    service.refresh_view()
    assert service._view == first
    members[0] = SimpleNamespace(id="x", state="dead")
    service.refresh_view()
    assert service._view != first


def test_a_runs_empty_streams_go_in_one_chunk_and_an_older_agent_gets_them_later(
    tmp_path: Path,
) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    replica = net.targets(ring_key)[1]
    old = net.nodes[replica]

    def older_agent(msg: ReplicaChunk, now: float | None = None) -> list[ReplicaAck]:
        return [old.on_chunk(msg, now)]  # knows nothing of ``more``

    old.on_chunks = older_agent  # type: ignore[assignment, method-assign]
    for name in ("out", "err"):
        net.nodes["a"].put_local(StoredItem("t1", 1, name, ring_key, finished_at=1.0), b"")
    chunks: list[ReplicaChunk] = []
    real = net.nodes["a"]._send

    def recording(to: str, msg: object) -> None:
        if isinstance(msg, ReplicaChunk) and to == replica:
            chunks.append(msg)
        real(to, msg)

    net.nodes["a"]._send = recording
    net.run(now=1.0)
    assert [c.more for c in chunks] == [("err",)] or [c.more for c in chunks] == [("out",)]
    first = chunks[0].name
    assert old.item("t1", 1, first) is not None
    second = "err" if first == "out" else "out"
    assert old.item("t1", 1, second) is None  # ignored by the older agent
    net.run(now=1.0 + RESEND_AFTER + 0.1, ticks=2)  # sent again, alone
    assert chunks[-1].name == second and chunks[-1].more == ()
    got = old.item("t1", 1, second)
    assert got is not None and got.complete


def test_a_rounds_short_runs_go_to_each_target_in_one_chunk(tmp_path: Path) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    targets = net.targets(ring_key)
    runs = [f"t{i}" for i in range(5)]
    for task in runs:
        for name in ("out", "err"):
            net.nodes["a"].put_local(StoredItem(task, 1, name, ring_key, finished_at=1.0), b"")
    sent: list[tuple[str, ReplicaChunk]] = []
    acks: list[ReplicaAck] = []
    real_send, real_ack = net.nodes["a"]._send, net.nodes["a"].on_ack

    def recording(to: str, msg: object) -> None:
        if isinstance(msg, ReplicaChunk):
            sent.append((to, msg))
        real_send(to, msg)

    def ack_recording(msg: ReplicaAck, node: str, now: float) -> None:
        acks.append(msg)
        real_ack(msg, node, now)

    net.nodes["a"]._send = recording
    net.nodes["a"].on_ack = ack_recording  # type: ignore[method-assign]
    net.run(now=1.0, ticks=2)
    assert sorted(to for to, _ in sent) == sorted(t for t in targets if t != "a")
    # one ack per chunk, naming everything it held (the rest are its items, handled in turn)
    carrying = [a for a in acks if a.others]
    assert len(carrying) == len(sent)
    assert all(1 + len(a.more) + len(a.others) == 2 * len(runs) for a in carrying)
    for _, chunk in sent:
        assert 1 + len(chunk.more) + len(chunk.others) == 2 * len(runs)
    for task in runs:
        for name in ("out", "err"):
            assert set(targets) <= net.holders((task, 1, name))
    assert not net.nodes["a"].under_replicated()


def test_an_older_agent_gets_a_rounds_other_runs_later(tmp_path: Path) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    replica = net.targets(ring_key)[1]
    old = net.nodes[replica]

    def older_agent(msg: ReplicaChunk, now: float | None = None) -> list[ReplicaAck]:
        return [old.on_chunk(msg, now)]  # knows nothing of ``more`` or ``others``

    old.on_chunks = older_agent  # type: ignore[assignment, method-assign]
    for task in ("t1", "t2", "t3"):
        net.nodes["a"].put_local(StoredItem(task, 1, "out", ring_key, finished_at=1.0), b"")
    net.run(now=1.0)
    assert sum(old.item(t, 1, "out") is not None for t in ("t1", "t2", "t3")) == 1
    net.run(now=1.0 + RESEND_AFTER + 0.1, ticks=2)  # the others, sent again one by one
    assert all(replica in net.holders((t, 1, "out")) for t in ("t1", "t2", "t3"))


def test_a_big_burst_goes_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.runtime import replication

    monkeypatch.setattr(replication, "BATCH_ITEMS", 4)
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    for i in range(10):
        net.nodes["a"].put_local(StoredItem(f"t{i}", 1, "out", ring_key, finished_at=1.0), b"")
    sizes: list[int] = []
    real = net.nodes["a"]._send

    def recording(to: str, msg: object) -> None:
        if isinstance(msg, ReplicaChunk):
            sizes.append(1 + len(msg.more) + len(msg.others))
        real(to, msg)

    net.nodes["a"]._send = recording
    net.run(now=1.0, ticks=2)
    assert max(sizes) == 4 and sum(sizes) == 10 * 2  # two remote targets
    assert all(set(net.targets(ring_key)) <= net.holders((f"t{i}", 1, "out")) for i in range(10))
