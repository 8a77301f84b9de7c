"""Issue 14: a replica host keeps its runs' item metadata in one append-only journal
(``agent/runtime/replica_journal.py``) instead of a directory and a ``.meta`` file per
run.  It reloads after a restart, drops what was removed, survives a torn last record,
stays bounded by compaction, takes over runs an older agent stored as ``.meta`` files,
and a write that fails leaves every run of that write unacknowledged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.runtime import replica_journal
from agent.runtime.artifacts import ReplicaService
from agent.runtime.replica_journal import JOURNAL_NAME
from agent.runtime.replica_messages import ReplicaAck, ReplicaChunk
from agent.runtime.replica_store import EMPTY_SHA256, ReplicaStore
from agent.runtime.replication import Replicator
from agent.sched import SchedConfig


def chunk(task: str, name: str, data: bytes = b"", total: int = 0) -> ReplicaChunk:
    import hashlib

    digest = hashlib.sha256(data).hexdigest() if total else EMPTY_SHA256
    return ReplicaChunk(task, 1, name, 0, data, total, digest, "k", 5.0, "", "a")


def replicator(root: Path) -> Replicator:
    return Replicator(node_id="b", store=ReplicaStore(root, "b"), targets=lambda _k: ["a", "b"],
                      send=lambda _n, _m: None)


def keys(root: Path) -> set[tuple[str, int, str]]:
    return {i.key for i in ReplicaStore(root, "b").load()}


def test_runs_reload_from_the_journal_and_removals_stay_removed(tmp_path: Path) -> None:
    rep = replicator(tmp_path)
    for task in ("t1", "t2", "t3"):
        for name in ("out", "err"):
            assert rep.on_chunk(chunk(task, name), 1.0).complete
    rep.on_chunk(chunk("t4", "out", b"hello", 5), 1.0)  # data: a file, its row in the journal
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["t4"]
    assert not (tmp_path / "t4" / "1.meta").exists()
    assert keys(tmp_path) == {(t, 1, n) for t in ("t1", "t2", "t3") for n in ("out", "err")} \
        | {("t4", 1, "out")}
    again = {i.key: i for i in ReplicaStore(tmp_path, "b").load()}
    assert again[("t4", 1, "out")].size == 5 and again[("t4", 1, "out")].complete
    assert again[("t1", 1, "err")].sha256 == EMPTY_SHA256
    store = rep.store
    store.remove(store.items[("t2", 1, "out")])
    store.remove(store.items[("t2", 1, "err")])
    assert store.prune(10.0) == 5  # everything left finished at 5.0
    assert keys(tmp_path) == set()
    assert not (tmp_path / "t4").exists()


def test_a_torn_last_record_is_skipped_and_the_next_starts_a_line(tmp_path: Path) -> None:
    rep = replicator(tmp_path)
    rep.on_chunk(chunk("t1", "out"), 1.0)
    journal = tmp_path / JOURNAL_NAME
    with journal.open("ab") as handle:
        handle.write(b'{"t":"t9","e":1,"rows":{"out":{"ring')  # a crash mid-write
    restarted = replicator(tmp_path)
    assert set(restarted.store.items) == {("t1", 1, "out")}
    restarted.on_chunk(chunk("t2", "out"), 1.0)
    assert keys(tmp_path) == {("t1", 1, "out"), ("t2", 1, "out")}


def test_the_journal_is_compacted_to_its_live_runs(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_journal, "COMPACT_MIN_RECORDS", 10)
    rep = replicator(tmp_path)
    store = rep.store
    for n in range(40):  # 40 runs written and removed again: records, no live runs
        rep.on_chunk(chunk(f"t{n}", "out"), 1.0)
        store.remove(store.items[(f"t{n}", 1, "out")])
    rep.on_chunk(chunk("keep", "out"), 1.0)
    lines = (tmp_path / JOURNAL_NAME).read_bytes().splitlines()
    assert len(lines) <= 2 * 1 + 10 + 1, len(lines)
    assert keys(tmp_path) == {("keep", 1, "out")}
    assert not (tmp_path / (JOURNAL_NAME + ".tmp")).exists()


def test_a_run_an_older_agent_stored_as_a_meta_file_moves_to_the_journal(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "1.out").write_bytes(b"abc")
    row = {"ring_key": "k", "complete": True, "sha256": "x", "error": "", "finished_at": 2.0}
    (tmp_path / "old" / "1.meta").write_text(json.dumps({"out": row}))
    rep = replicator(tmp_path)
    item = rep.store.items[("old", 1, "out")]
    assert item.size == 3 and item.complete
    rep.on_chunk(chunk("old", "err"), 1.0)  # the run's next write
    assert not (tmp_path / "old" / "1.meta").exists()
    assert keys(tmp_path) == {("old", 1, "out"), ("old", 1, "err")}


def test_a_failed_journal_write_acknowledges_none_of_its_runs(tmp_path: Path) -> None:
    root = tmp_path / "replicas"
    (root / JOURNAL_NAME).mkdir(parents=True)  # every write to it fails
    acks: list[object] = []
    service = ReplicaService(
        node_id="b", node_name="n2", root=root, members=list, sched_config=SchedConfig,
        send_to_node=lambda n, m: None, send_to_addr=lambda a, m: acks.append(m),
        records=lambda _id: None,
    )

    async def deliver() -> None:
        service.on_message("h0", chunk("t1", "out"))
        service.on_message("h0", chunk("t2", "out"))
        await asyncio.sleep(0)

    asyncio.run(deliver())
    assert acks == []  # the holder sends again
    (root / JOURNAL_NAME).rmdir()
    asyncio.run(deliver())  # the resend: the items are complete here, the rows now written
    assert [type(a) for a in acks] == [ReplicaAck, ReplicaAck]
    assert keys(root) == {("t1", 1, "out"), ("t2", 1, "out")}
