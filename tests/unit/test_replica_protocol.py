"""Issue 17: the replication protocol (agent/runtime/replication.py) over an in-memory
network of real ReplicaStores on disk: streaming a growing run's output, completion
with the SHA-256, re-replication after a target dies, the under-replicated count,
and refusals (a full disk, the per-host cap, the per-artifact limit) that lose
nothing already stored; plus pruning and reloading from disk."""

from __future__ import annotations

import errno
import hashlib
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.runtime.replica_messages import ReplicaAck, ReplicaChunk, ReplicaRead
from agent.runtime.replica_store import ReplicaStore, StoredItem
from agent.runtime.replication import CHUNK_BYTES, Replicator
from agent.sched import HashRing

NODES = ["a", "b", "c", "d", "e"]


class Net:
    """Replicators that deliver to each other through a FIFO (drops for dead nodes)."""

    def __init__(self, tmp: Path, factor: int = 3, **limits: int) -> None:
        self.alive = set(NODES)
        self.factor = factor
        self.ring = HashRing(NODES, 64)
        self.queue: deque[tuple[str, str, object]] = deque()
        self.nodes = {
            n: Replicator(
                node_id=n, store=ReplicaStore(tmp / n, n, **limits),
                targets=self.targets, send=self.sender(n),
                view=lambda: (frozenset(self.alive), self.factor),
            )
            for n in NODES
        }

    def sender(self, name: str) -> Callable[[str, object], None]:
        def send(to: str, msg: object) -> None:
            self.queue.append((name, to, msg))
        return send

    def targets(self, key: str) -> list[str]:
        return self.ring.preference_list(key, self.factor, self.alive.__contains__)

    def run(self, now: float = 0.0, ticks: int = 1) -> None:
        for _ in range(ticks):
            for name in sorted(self.alive):
                self.nodes[name].tick(now)
            while self.queue:
                sender, to, msg = self.queue.popleft()
                if to not in self.alive or sender not in self.alive:
                    continue
                node = self.nodes[to]
                if isinstance(msg, ReplicaChunk):
                    for ack in node.on_chunks(msg, now):
                        self.queue.append((to, sender, ack))
                elif isinstance(msg, ReplicaAck):
                    node.on_ack(msg, msg.node, now)

    def holders(self, key: tuple[str, int, str]) -> set[str]:
        return {n for n in self.alive if (i := self.nodes[n].item(*key)) is not None and i.complete}


def source(tmp: Path, data: bytes) -> Path:
    path = tmp / "capture.out"
    path.write_bytes(data)
    return path


def key_whose_list_starts(net: Net, first: str) -> str:
    return next(k for k in (f"k{i}" for i in range(1000)) if net.targets(k)[0] == first)


def test_a_running_stream_reaches_its_replicas_while_it_grows(tmp_path: Path) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    capture = source(tmp_path, b"")
    net.nodes["a"].add_source("t1", 1, "out", capture, ring_key)
    lines = b""
    for i in range(5):
        with capture.open("ab") as handle:
            handle.write(b"line %d\n" % i)
        lines += b"line %d\n" % i
        net.run(now=float(i))
        for replica in net.targets(ring_key)[1:]:
            item = net.nodes[replica].item("t1", 1, "out")
            assert item is not None and not item.complete
            assert net.nodes[replica].store.read(item, 0, 1 << 20) == lines
    net.nodes["a"].finish_source("t1", 1, "out", 10.0)
    net.run(now=10.0)
    assert net.holders(("t1", 1, "out")) == set(net.targets(ring_key))
    for replica in net.targets(ring_key):
        item = net.nodes[replica].item("t1", 1, "out")
        assert item is not None and item.sha256 == hashlib.sha256(lines).hexdigest()
    assert all(not net.nodes[n].under_replicated() for n in NODES)


def test_a_big_item_goes_in_bounded_chunks_and_arrives_intact(tmp_path: Path) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "b")
    data = os.urandom(3 * CHUNK_BYTES + 12345)
    item = StoredItem("t2", 1, "a:result.bin", ring_key, finished_at=5.0)
    net.nodes["b"].put_local(item, data)
    sizes: list[int] = []
    send = net.nodes["b"]._send

    def counting(to: str, msg: object) -> None:
        if isinstance(msg, ReplicaChunk):
            sizes.append(len(msg.data))
        send(to, msg)

    net.nodes["b"]._send = counting
    net.run()
    assert max(sizes) <= CHUNK_BYTES
    for node in net.targets(ring_key):
        got = net.nodes[node].item("t2", 1, "a:result.bin")
        assert got is not None and got.complete
        assert net.nodes[node].store.read(got, 0, len(data) + 1) == data


def test_a_dead_replica_is_replaced_and_the_count_returns(tmp_path: Path) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    first = net.targets(ring_key)
    net.nodes["a"].put_local(StoredItem("t3", 1, "a:x", ring_key, finished_at=1.0), b"x" * 1000)
    net.run()
    assert net.holders(("t3", 1, "a:x")) == set(first)
    # the executing host and a replica both die: the survivor refills the list
    net.alive -= {first[0], first[1]}
    survivor = first[2]
    assert net.nodes[survivor].under_replicated()  # new targets not heard from yet
    net.run(now=1.0, ticks=2)
    now_targets = net.targets(ring_key)
    assert len(now_targets) == 3 and first[0] not in now_targets
    assert net.holders(("t3", 1, "a:x")) == set(now_targets)
    assert all(not net.nodes[n].under_replicated() for n in net.alive)


@pytest.mark.parametrize("factor", [1, 3, 5])
def test_the_factor_sets_how_many_hosts_hold_an_item(tmp_path: Path, factor: int) -> None:
    net = Net(tmp_path, factor=factor)
    net.nodes["c"].put_local(StoredItem("t4", 2, "out", "t4", finished_at=1.0), b"hello")
    net.run(ticks=2)
    holders = net.holders(("t4", 2, "out"))
    assert holders >= set(net.targets("t4")) and len(net.targets("t4")) == factor


def test_a_full_disk_on_a_replica_is_one_line_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    replica = net.targets(ring_key)[1]
    net.nodes["a"].put_local(StoredItem("t5", 1, "a:old", ring_key, finished_at=1.0), b"kept")
    net.run()
    real_pwrite = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        if str(tmp_path / replica) in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    net.nodes["a"].put_local(StoredItem("t6", 1, "a:new", ring_key, finished_at=2.0), b"n" * 99)
    acks: list[ReplicaAck] = []
    on_ack = net.nodes["a"].on_ack

    def recording(msg: ReplicaAck, node: str, now: float) -> None:
        acks.append(msg)
        on_ack(msg, node, now)

    net.nodes["a"].on_ack = recording  # type: ignore[method-assign]
    net.run(now=2.0)
    refused = [a for a in acks if a.error and a.node == replica]
    assert refused and "No space left on device" in refused[0].error
    assert "\n" not in refused[0].error
    old = net.nodes[replica].item("t5", 1, "a:old")
    assert old is not None and old.complete
    assert net.nodes[replica].store.read(old, 0, 10) == b"kept"
    assert any(u["task"] == "t6" and "No space left on device" in str(u["error"])
               for u in net.nodes["a"].under_replicated())
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    net.run(now=10.0, ticks=2)  # after RETRY_AFTER the copy is made
    assert replica in net.holders(("t6", 1, "a:new"))


def test_the_cap_evicts_oldest_finished_first_and_refuses_what_cannot_fit(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path, "a", cap_bytes=300, artifact_limit=200)
    for i, at in enumerate([30.0, 10.0, 20.0]):
        store.put(StoredItem(f"t{i}", 1, "a:f", "k", finished_at=at), b"x" * 100)
    store.put(StoredItem("t9", 1, "a:f", "k", finished_at=40.0), b"y" * 150)
    assert ("t1", 1, "a:f") not in store.items and ("t2", 1, "a:f") not in store.items
    assert ("t0", 1, "a:f") in store.items and store.used == 250
    from agent.runtime.replica_store import ReplicaRefused

    with pytest.raises(ReplicaRefused, match="per-artifact limit"):
        store.put(StoredItem("t8", 1, "a:big", "k", finished_at=50.0), b"z" * 201)
    running = StoredItem("t7", 1, "out", "k")
    with pytest.raises(ReplicaRefused, match="full"):
        store.write_chunk(running, 0, b"r" * 301, -1, "", None, "")
    assert store.used == 250


def test_prune_and_reload(tmp_path: Path) -> None:
    store = ReplicaStore(tmp_path, "a")
    store.put(StoredItem("t1", 1, "a:dir/f", "k", finished_at=100.0), b"one")
    store.put(StoredItem("t2", 3, "out", "k2", finished_at=200.0), b"two")
    store.put(StoredItem("t3", 1, "a:e", "k", finished_at=100.0, error="artifact 'e': gone"), b"")
    again = ReplicaStore(tmp_path, "a")
    loaded = {i.key: i for i in again.load()}
    assert loaded[("t1", 1, "a:dir/f")].complete and loaded[("t2", 3, "out")].size == 3
    assert loaded[("t3", 1, "a:e")].error == "artifact 'e': gone"
    assert again.prune(150.0) == 2
    assert set(again.items) == {("t2", 3, "out")}
    assert set(ReplicaStore(tmp_path, "a").load()[0].key) == {"t2", 3, "out"}


def test_reads_serve_a_slice_and_say_whether_it_is_complete(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.nodes["a"].put_local(StoredItem("t1", 1, "out", "k", finished_at=1.0), b"0123456789")
    got = net.nodes["a"].on_read(ReplicaRead(7, "t1", 1, "out", 4, 3))
    assert (got.request_id, got.data, got.size, got.complete, got.found) == (7, b"456", 10, True, True)
    missing = net.nodes["a"].on_read(ReplicaRead(8, "t1", 2, "out", 0, 3))
    assert not missing.found


def test_an_incomplete_copy_whose_run_died_is_pruned_once_stale(tmp_path: Path) -> None:
    from agent.runtime import replica_store

    store = ReplicaStore(tmp_path, "a")
    growing = StoredItem("t1", 1, "out", "k")
    store.write_chunk(growing, 0, b"partial", -1, "", None, "")
    assert store.ended_at(growing) is None and store.prune(1e12) == 0  # still being written
    old = store.path(growing).stat().st_mtime - replica_store.STALE_AFTER - 1
    os.utime(store.path(growing), (old, old))
    assert store.ended_at(growing) == old
    assert store.prune(old + 1) == 1 and not store.items


def test_a_copy_lost_on_a_targets_disk_is_noticed_and_refilled(tmp_path: Path) -> None:
    from agent.runtime.replication import REPROBE_AFTER

    net = Net(tmp_path)
    ring_key = key_whose_list_starts(net, "a")
    net.nodes["a"].put_local(StoredItem("t1", 1, "a:f", ring_key, finished_at=1.0), b"data")
    net.run(now=1.0, ticks=3)  # every holder has heard from every target
    victim = net.targets(ring_key)[1]
    store = net.nodes[victim].store
    item = store.items[("t1", 1, "a:f")]
    store.remove(item)  # as if its disk lost it
    net.run(now=2.0)
    assert victim not in net.holders(("t1", 1, "a:f"))  # nobody knows yet
    net.run(now=2.0 + REPROBE_AFTER, ticks=2)
    assert victim in net.holders(("t1", 1, "a:f"))
