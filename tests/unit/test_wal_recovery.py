"""Protocol-aware recovery: the WAL tells a torn write it never acknowledged from
lost entries it did acknowledge (zeroed tails, lost segments, missing snapshots),
and a WAL written by the previous format still opens."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.raft.log import RaftLog
from agent.raft.messages import ConfState, Entry, EntryKind, HardState, Snapshot
from agent.raft.storage import Storage
from agent.raft.walformat import HEADER, RECORDS_START, read_slots

FIXTURE_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "wal_v1"


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, bytes([i % 256]) * size) for i in range(lo, hi + 1)]


def record_ends(seg: Path) -> list[int]:
    """Byte offsets where each record of a v2 segment ends."""
    data = seg.read_bytes()
    off, ends = RECORDS_START, []
    while off + HEADER.size <= len(data):
        length, _ = HEADER.unpack_from(data, off)
        if length == 0:
            break
        off += HEADER.size + length
        ends.append(off)
    return ends


def zero(seg: Path, start: int, end: int) -> None:
    """What a disk that drops synced writes leaves (``dd if=/dev/zero conv=notrunc``)."""
    with seg.open("r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))


def test_zeroed_tail_after_a_clean_stop_is_damage(tmp_path: Path) -> None:
    store = Storage.open(tmp_path)
    for i in range(1, 41):
        store.append(ents(i, i), HardState(1, "a", i - 1))
        store.sync()
    store.close()
    seg = store.segment_paths()[-1]
    ends = record_ends(seg)
    zero(seg, max(RECORDS_START, ends[-1] - 400), ends[-1])
    restored = Storage.open(tmp_path).load()
    assert str(seg) in restored.damaged
    assert "acknowledged up to index 40" in restored.damaged
    assert "entries lost" in restored.damaged
    # The valid prefix is what it loads; nothing is written to a damaged store.
    assert restored.entries and restored.entries[-1].index < 40
    before = seg.read_bytes()
    damaged = Storage.open(tmp_path)
    damaged.append(ents(41, 41), HardState(2, "", 0))
    damaged.sync()
    damaged.close()
    assert seg.read_bytes() == before


def test_torn_last_batch_of_an_unfinished_sync_is_not_damage(tmp_path: Path) -> None:
    store = Storage.open(tmp_path)
    store.append(ents(1, 10), HardState(1, "a", 5))
    store.sync()
    seg = store.segment_paths()[-1]
    mark = record_ends(seg)[-1]
    store.append(ents(11, 15), HardState(1, "a", 10))
    store.sync()  # crash "during" this sync: its records never reached the disk
    os.close(store._fd)
    zero(seg, mark, record_ends(seg)[-1])
    restored = Storage.open(tmp_path).load()
    assert restored.damaged == ""
    assert [e.index for e in restored.entries] == list(range(1, 11))


def test_zeroed_middle_segment_is_damage(tmp_path: Path) -> None:
    store = Storage.open(tmp_path, segment_bytes=300)
    for i in range(1, 61):
        store.append(ents(i, i, size=20), HardState(1, "", i))
        store.sync()
    store.close()
    middle = store.segment_paths()[2]
    ends = record_ends(middle)
    zero(middle, ends[-3], ends[-1])  # its last entries and its seal
    damage = Storage.open(tmp_path, segment_bytes=300).load().damaged
    assert damage.startswith(f"{middle}: sealed segment ends at byte offset {ends[-3]}")


def test_deleted_snapshot_is_one_line_of_damage(tmp_path: Path) -> None:
    store = Storage.open(tmp_path, segment_bytes=300)
    for i in range(1, 61):
        store.append(ents(i, i, size=20), HardState(1, "", i))
        store.sync()
    store.save_snapshot(Snapshot(40, 1, ConfState(("a",)), b"state@40"))
    store.compact(35)
    store.close()
    for snap in (tmp_path / "snap").glob("*.snap"):
        snap.unlink()
    damage = Storage.open(tmp_path, segment_bytes=300).load().damaged
    assert "\n" not in damage
    assert "0000000000000028-0000000000000001.snap is missing" in damage
    assert "byte offset" in damage


def test_non_contiguous_log_is_a_storage_error_not_an_assert() -> None:
    with pytest.raises(StorageError, match="not contiguous: index 3 where 2"):
        RaftLog(None, (ents(1, 1)[0], ents(3, 3)[0]), 0)


def test_a_v1_data_dir_still_opens_and_grows_in_v2(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE_V1, tmp_path / "raft")
    store = Storage.open(tmp_path / "raft")
    restored = store.load()
    assert restored.damaged == ""
    assert restored.hard_state == HardState(3, "n2", 125)
    assert restored.snapshot is not None and restored.snapshot.index == 60
    assert [e.index for e in restored.entries] == list(range(61, 131))
    assert restored.entries[-1].data == b"cmd-130"
    store.append(ents(131, 140, term=3), HardState(3, "n2", 135))
    store.sync()
    store.close()
    names = sorted(p.suffix for p in (tmp_path / "raft" / "wal").iterdir())
    assert names.count(".wal") >= 1 and names.count(".seg") == 1
    again = Storage.open(tmp_path / "raft").load()
    assert again.damaged == ""
    assert [e.index for e in again.entries] == list(range(61, 141))


def test_the_ack_slot_rides_in_the_same_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Storage.open(tmp_path)
    store.append(ents(1, 3), HardState(2, "b", 1))
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    store.sync()
    assert len(calls) == 1
    slot = read_slots(store.segment_paths()[-1].read_bytes())
    assert slot is not None and (slot.batch_first, slot.last_index, slot.term, slot.vote) == (1, 3, 2, "b")
    store.close()


def test_a_write_that_hits_a_full_disk_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Storage.open(tmp_path)
    store.append(ents(1, 5), HardState(1, "", 5))
    store.sync()
    real = os.pwrite
    fail = {"left": 1}

    def flaky(fd: int, data: bytes, off: int) -> int:
        if fail["left"]:
            fail["left"] -= 1
            real(fd, bytes(data)[:7], off)  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, off)

    monkeypatch.setattr(os, "pwrite", flaky)
    with pytest.raises(OSError):
        store.append(ents(6, 8), HardState(1, "", 5))
    store.append(ents(6, 8), HardState(1, "", 5))  # the retry overwrites the partial bytes
    store.sync()
    store.close()
    restored = Storage.open(tmp_path).load()
    assert restored.damaged == ""
    assert [e.index for e in restored.entries] == list(range(1, 9))


def test_reset_moves_everything_aside(tmp_path: Path) -> None:
    store = Storage.open(tmp_path)
    store.append(ents(1, 5), HardState(4, "c", 5))
    store.sync()
    aside = store.reset()
    assert aside is not None and (aside / "wal").is_dir()
    store.append([], HardState(4, "c", 0))
    store.sync()
    store.close()
    restored = Storage.open(tmp_path).load()
    assert restored.entries == () and restored.hard_state == HardState(4, "c", 0)


def test_a_sync_that_fails_is_retried_at_the_same_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Storage.open(tmp_path)
    store.append(ents(1, 5), HardState(1, "", 5))
    store.sync()
    end = store._size
    real = os.fdatasync
    fail = {"left": 1}

    def flaky(fd: int) -> None:
        if fail["left"]:
            fail["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", flaky)
    store.append(ents(6, 8), HardState(1, "", 5))
    with pytest.raises(OSError):
        store.sync()
    assert store._size == end
    store.append(ents(6, 8), HardState(1, "", 5))  # the driver's retry of the same Ready
    store.sync()
    store.close()
    restored = Storage.open(tmp_path).load()
    assert restored.damaged == ""
    assert [e.index for e in restored.entries] == list(range(1, 9))
