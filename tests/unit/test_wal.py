"""The WAL and snapshot storage against real files: recovery, corruption, group commit."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import msgpack
import pytest

from agent.raft.messages import ConfState, Entry, EntryKind, HardState, Snapshot
from agent.raft.storage import HEADER, Storage
from agent.raft.walformat import RECORDS_START


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, bytes([i % 256]) * size) for i in range(lo, hi + 1)]


def write(path: Path, entries: list[Entry], hs: HardState | None = None, **kw: int) -> Storage:
    store = Storage.open(path, **kw)
    store.append(entries, hs)
    store.sync()
    return store


def test_round_trip_and_hard_state(tmp_path: Path) -> None:
    store = write(tmp_path, ents(1, 5), HardState(3, "b", 4))
    store.append(ents(6, 7, term=3), HardState(3, "b", 7))
    store.sync()
    store.close()
    restored = Storage.open(tmp_path).load()
    assert restored.hard_state == HardState(3, "b", 7)
    assert [e.index for e in restored.entries] == list(range(1, 8))
    assert restored.entries[5] == Entry(3, 6, EntryKind.NORMAL, bytes([6]) * 10)
    assert restored.snapshot is None


def test_append_truncates_a_conflicting_suffix(tmp_path: Path) -> None:
    store = write(tmp_path, ents(1, 10, term=1))
    store.append(ents(6, 8, term=2), HardState(2, "", 5))
    store.sync()
    store.close()
    restored = Storage.open(tmp_path).load()
    assert [(e.index, e.term) for e in restored.entries] == [(i, 1) for i in range(1, 6)] + [
        (6, 2),
        (7, 2),
        (8, 2),
    ]


def last_segment(path: Path) -> Path:
    return sorted((path / "wal").glob("*.seg"))[-1]


def test_zeroed_tail_is_truncated(tmp_path: Path) -> None:
    write(tmp_path, ents(1, 5), HardState(1, "", 5)).close()
    seg = last_segment(tmp_path)
    with seg.open("ab") as f:
        f.write(b"\0" * 4096)
    store = Storage.open(tmp_path)
    assert [e.index for e in store.load().entries] == [1, 2, 3, 4, 5]
    store.append(ents(6, 6))
    store.sync()
    store.close()
    assert [e.index for e in Storage.open(tmp_path).load().entries] == [1, 2, 3, 4, 5, 6]


def test_truncated_record_is_a_torn_tail(tmp_path: Path) -> None:
    store = write(tmp_path, ents(1, 5))
    end = store._size
    store.close()
    seg = last_segment(tmp_path)
    os.truncate(seg, end - 7)  # cut the last record short (and drop the preallocation)
    restored = Storage.open(tmp_path).load()
    assert [e.index for e in restored.entries] == [1, 2, 3, 4]


def test_partial_write_in_preallocated_space_is_a_torn_tail(tmp_path: Path) -> None:
    store = write(tmp_path, ents(1, 5))
    end = store._size
    store.close()
    seg = last_segment(tmp_path)
    payload = msgpack.packb([1, 1, 6, 0, b"x" * 40])
    record = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    with seg.open("r+b") as f:
        f.seek(end)
        f.write(record[:-9])  # entry 6, its write cut short by a crash
    store = Storage.open(tmp_path)
    assert [e.index for e in store.load().entries] == [1, 2, 3, 4, 5]
    store.append(ents(6, 6))
    store.sync()
    store.close()
    assert [e.index for e in Storage.open(tmp_path).load().entries] == [1, 2, 3, 4, 5, 6]


def test_flipped_bit_mid_log_is_damage(tmp_path: Path) -> None:
    write(tmp_path, ents(1, 20)).close()
    seg = last_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    # Find the third entry record's payload and flip one bit in it.
    off = RECORDS_START
    for _ in range(3):  # hard state record, entry 1, entry 2
        length, _ = HEADER.unpack_from(data, off)
        off += HEADER.size + length
    target = off + HEADER.size + 3
    data[target] ^= 0x10
    seg.write_bytes(bytes(data))
    damage = Storage.open(tmp_path).load().damaged
    assert str(seg) in damage
    assert f"corrupt WAL record at byte offset {off}" in damage


def test_corrupt_length_mid_log_is_not_mistaken_for_a_torn_tail(tmp_path: Path) -> None:
    write(tmp_path, ents(1, 20)).close()
    seg = last_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    length, _ = HEADER.unpack_from(data, RECORDS_START)
    off = RECORDS_START + HEADER.size + length  # first entry record
    data[off + 3] = 0x7F  # a huge length: looks torn, but valid records follow
    seg.write_bytes(bytes(data))
    assert f"byte offset {off}" in Storage.open(tmp_path).load().damaged


def test_segment_rotation_and_compaction(tmp_path: Path) -> None:
    store = Storage.open(tmp_path, segment_bytes=300)
    for i in range(1, 61):
        store.append(ents(i, i, size=20), HardState(1, "", i))
        store.sync()
    segments = store.segment_paths()
    assert len(segments) > 5
    snap = Snapshot(40, 1, ConfState(("a",)), b"state@40")
    store.save_snapshot(snap)
    store.compact(35)
    assert len(store.segment_paths()) < len(segments)
    store.close()
    restored = Storage.open(tmp_path, segment_bytes=300).load()
    assert restored.snapshot == snap
    assert restored.hard_state == HardState(1, "", 60)
    assert [e.index for e in restored.entries] == list(range(41, 61))


def test_compaction_never_passes_the_snapshot(tmp_path: Path) -> None:
    store = Storage.open(tmp_path, segment_bytes=200)
    for i in range(1, 31):
        store.append(ents(i, i, size=20), HardState(1, "", i))
    store.sync()
    store.compact(1000)  # no snapshot: nothing may go
    store.close()
    assert [e.index for e in Storage.open(tmp_path).load().entries] == list(range(1, 31))


def test_group_commit_one_fsync_per_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Storage.open(tmp_path)
    store.append(ents(1, 1), HardState(1, "", 0))
    store.sync()
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    for i in range(2, 102):
        store.append(ents(i, i), HardState(1, "", i - 1))
    assert calls == []
    store.sync()
    assert len(calls) == 1
    store.sync()  # nothing new: no fsync
    assert len(calls) == 1
    store.close()


def test_leftover_temp_snapshot_is_ignored(tmp_path: Path) -> None:
    store = write(tmp_path, ents(1, 10))
    store.close()
    (tmp_path / "snap" / "000000000000000a-0000000000000001.snap.tmp").write_bytes(b"partial")
    restored = Storage.open(tmp_path).load()
    assert restored.snapshot is None
    assert [e.index for e in restored.entries] == list(range(1, 11))
    assert not list((tmp_path / "snap").glob("*.tmp"))


CRASH_BETWEEN_RENAME_AND_MARKER = """
import os, sys
from agent.raft.messages import ConfState, Snapshot
from agent.raft.storage import Storage
store = Storage.open(sys.argv[1])
real_rename = os.rename
def rename_then_die(src, dst):
    real_rename(src, dst)
    os._exit(9)  # killed after the rename, before the WAL marker and compaction
os.rename = rename_then_die
store.save_snapshot(Snapshot(int(sys.argv[2]), int(sys.argv[3]), ConfState(("a",)), b"snap"))
"""


def crash_in_save_snapshot(path: Path, index: int, term: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_BETWEEN_RENAME_AND_MARKER, str(path), str(index), str(term)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
    )
    assert proc.returncode == 9, proc.stderr.decode()


def test_crash_after_snapshot_rename_local_compaction(tmp_path: Path) -> None:
    write(tmp_path, ents(1, 20, term=2), HardState(2, "", 20)).close()
    crash_in_save_snapshot(tmp_path, 15, 2)  # our own snapshot: the log matches it
    restored = Storage.open(tmp_path).load()
    assert restored.snapshot is not None and restored.snapshot.index == 15
    assert [e.index for e in restored.entries] == [16, 17, 18, 19, 20]


def test_crash_after_snapshot_rename_installed_from_leader(tmp_path: Path) -> None:
    # Our log (term 1) conflicts with the leader's snapshot at index 12, term 3.
    write(tmp_path, ents(1, 20, term=1), HardState(3, "", 5)).close()
    crash_in_save_snapshot(tmp_path, 12, 3)
    store = Storage.open(tmp_path)
    restored = store.load()
    assert restored.snapshot is not None and restored.snapshot.index == 12
    assert restored.entries == ()  # the stale log is gone
    store.append(ents(13, 14, term=3), HardState(3, "", 14))
    store.sync()
    store.close()
    assert [(e.index, e.term) for e in Storage.open(tmp_path).load().entries] == [(13, 3), (14, 3)]


def test_installed_snapshot_then_new_entries_survive_restart(tmp_path: Path) -> None:
    store = write(tmp_path, ents(1, 20, term=1))
    store.save_snapshot(Snapshot(50, 4, ConfState(("a", "b")), b"leader"))
    store.append(ents(51, 53, term=4), HardState(4, "", 53))
    store.sync()
    store.close()
    restored = Storage.open(tmp_path).load()
    assert restored.snapshot is not None and restored.snapshot.conf == ConfState(("a", "b"))
    assert [e.index for e in restored.entries] == [51, 52, 53]


def test_corrupt_snapshot_is_damage(tmp_path: Path) -> None:
    store = write(tmp_path, ents(1, 5))
    store.save_snapshot(Snapshot(5, 1, ConfState(("a",)), b"x" * 100))
    store.close()
    snap = next((tmp_path / "snap").glob("*.snap"))
    data = bytearray(snap.read_bytes())
    data[50] ^= 1
    snap.write_bytes(bytes(data))
    assert Storage.open(tmp_path).load().damaged == f"{snap}: corrupt snapshot at byte offset 0"


def test_truncation_below_the_current_segment_starts_a_new_one(tmp_path: Path) -> None:
    store = Storage.open(tmp_path, segment_bytes=200)
    for i in range(1, 31):
        store.append(ents(i, i, size=20), HardState(1, "", 0))
    before = len(store.segment_paths())
    store.append(ents(5, 7, term=2, size=20), HardState(2, "", 4))
    store.sync()
    assert len(store.segment_paths()) == before + 1
    assert store.segment_paths()[-1].name.endswith("0000000000000005.seg")
    store.save_snapshot(Snapshot(6, 2, ConfState(("a",)), b"s"))
    store.compact(6)  # segments behind the truncation point may go; entry 7 must stay
    store.close()
    restored = Storage.open(tmp_path, segment_bytes=200).load()
    assert [(e.index, e.term) for e in restored.entries] == [(7, 2)]
    assert restored.hard_state == HardState(2, "", 4)
