"""Durable Raft storage: a segmented write-ahead log plus snapshot files.

Theory of operation
-------------------
``<dir>/wal/`` holds segments in ``seq`` order; the format (v1 ``.wal`` and v2
``.seg`` segments, records, ack slots, seals) is in ``walformat.py``.  Replay
applies records in order with Raft's log semantics: an entry whose index is
<= the last one truncates the log from there (a conflicting suffix), the last
hard state wins, and a snapshot marker either drops the entries the snapshot
covers (the log matches it: a local compaction) or the whole log (it does not:
a snapshot received from the leader replaced our log).

``append()`` writes to the OS and ``sync()`` writes the next ack slot and
fdatasyncs every touched segment once: group commit, one flush for everything
appended since the last sync.  Segments are preallocated (``posix_fallocate``
to ``segment_bytes`` of records plus the header block, made durable when
created), so an append does not change the file size and ``fdatasync`` need
not journal metadata.  A new segment starts when the current one is full (the
old one is sealed and flushed first) and when an entry truncates below the
current segment's first index; every segment begins with a copy of the hard
state, so dropping old segments never loses it.  A write that fails (disk
full) leaves nothing behind: the write offset rolls back and a segment that
could not be created is removed, so the caller may retry the same write.

Recovery tells a torn write this node never acknowledged from damage below
what it did acknowledge (protocol-aware recovery, ``walformat.py``):

====================================================  ==========================
found on open                                         outcome
====================================================  ==========================
zeros after the last record                           the clean end
garbage, no valid record after it, last segment       torn tail: zeroed, go on
log ends inside the last ack slot's batch             torn tail: go on
log ends below the last ack slot's batch              damaged
bad record with valid records after it                damaged
a sealed segment (not the last) without its seal      damaged
a corrupt segment header                              damaged
a snapshot marked in the WAL but missing/corrupt      damaged
entries that do not follow the snapshot (a gap)       damaged
====================================================  ==========================

A damaged store (``damage``: one line naming the file and byte offset) loads
the valid prefix but writes nothing: the node neither votes nor acknowledges
(``raft/repair.py``) until the leader grants a repair and ``reset()`` moves
the whole WAL and snapshots aside to ``damaged-<time>/``, or the operator runs
``mesh-agent recover --force-new-cluster``.

Snapshots are ``<dir>/snap/<index>-<term>.snap`` (one record in the same
framing), written to a ``.tmp`` file, fsynced, renamed, and the directory
fsynced; then a marker goes into the WAL and older snapshot files are removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack

from agent.raft import walformat as fmt
from agent.raft.messages import ConfState, Entry, HardState, RestoredState, Snapshot
from agent.raft.walformat import HEADER, MAX_RECORD, AckSlot
from agent.raft.walscan import (
    Scan,
    Segment,
    entries_after_snapshot,
    list_segments,
    replay,
    with_slot_vote,
    zero_range,
)

__all__ = ["HEADER", "MAX_RECORD", "SEGMENT_BYTES", "Storage"]

SEGMENT_BYTES = 64 * 1024 * 1024
"""Bytes of records per WAL segment (64 MiB; the Raft setting ``segment_bytes``)."""

_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """The WAL and snapshots of one node.  Not thread-safe: one owner (the runtime)."""

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.dir = directory
        self.wal_dir = directory / "wal"
        self.snap_dir = directory / "snap"
        self.segment_bytes = segment_bytes
        self._segments: list[Segment] = []
        self._fd = -1
        self._size = 0
        self._dirty: set[int] = set()
        self._hard_state = HardState()
        self._last_index = 0
        self._snapshot: Snapshot | None = None
        self._restored = RestoredState(HardState(), None, ())
        self._last_marker: tuple[int, int] | None = None
        self._ack_gen = 0
        self._synced_last = 0
        """Last index durable as of the last completed sync."""
        self._batch_min: int | None = None
        """Lowest index written since the last sync (a truncation lowers it)."""
        self._synced_at = (-1, 0)
        """(segment fd, write offset) as of the last completed sync."""
        self.damage = ""
        """Non-empty: what was lost, naming the file and byte offset (see the table)."""

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: str | os.PathLike[str], segment_bytes: int = SEGMENT_BYTES) -> Storage:
        """Open (creating if needed) and recover the storage in ``directory``."""
        store = cls(Path(directory), segment_bytes)
        store.wal_dir.mkdir(parents=True, exist_ok=True)
        store.snap_dir.mkdir(parents=True, exist_ok=True)
        store._recover()
        return store

    def load(self) -> RestoredState:
        """What the WAL and the newest snapshot hold (computed once, at open)."""
        return self._restored

    def _recover(self) -> None:
        for tmp in self.snap_dir.glob("*.tmp"):
            tmp.unlink()
        snap, damage = self._load_snapshot()
        self._segments = list_segments(self.wal_dir)
        scan = Scan(damage=damage)
        for n, seg in enumerate(self._segments):
            if scan.damage:
                break
            self._scan_segment(seg, n == len(self._segments) - 1, scan)
        if not scan.damage:
            scan.damage = self._missing_snapshot(snap, scan.marker_at)
        where = self._segments[0].path if self._segments else self.wal_dir
        entries, gap, replaced = entries_after_snapshot(scan.entries, snap, where)
        scan.damage = scan.damage or gap
        last = entries[-1].index if entries else (snap.index if snap else 0)
        if not scan.damage:
            # A leader's snapshot saved after the last slot (crash before its WAL
            # marker) legitimately replaced an uncommitted tail we had acknowledged.
            unmarked = snap is not None and self._last_marker != (snap.index, snap.term)
            if not (unmarked and replaced):
                scan.damage = self._lost_acknowledged(last, scan)
        hard_state = scan.hard_state
        if scan.slot is not None:
            self._ack_gen = scan.slot.generation
            hard_state = with_slot_vote(hard_state, scan.slot)
        self._snapshot = snap
        self._hard_state = hard_state
        self._last_index = self._synced_last = last
        self.damage = scan.damage
        self._restored = RestoredState(hard_state, snap, tuple(entries), scan.damage)
        if scan.damage:
            return  # write nothing: see the module doc
        if self._segments and self._segments[-1].version == 2:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY)
            self._size = scan.log_end  # where the last segment's log ends; appends go here
            self._synced_at = (self._fd, scan.log_end)
        # (a v1 last segment is left as it is: the next write starts a v2 one)
        if snap is not None and self._last_marker != (snap.index, snap.term):
            # Crashed between renaming the snapshot and marking the WAL: mark it now,
            # so entries appended from here on are not judged against the old log.
            self._mark_snapshot(snap)

    def _scan_segment(self, seg: Segment, is_last: bool, scan: Scan) -> None:
        """Replay one segment into ``scan``; damage stops the scan (see the table)."""
        data = seg.path.read_bytes()
        off = 0
        if seg.version == 2:
            reason = fmt.check_segment_header(data, seg.seq, seg.first)
            if reason:
                scan.damage = f"{seg.path}: {reason} at byte offset 0"
                return
            found = fmt.read_slots(data)
            if found is not None and (scan.slot is None or found.generation > scan.slot.generation):
                scan.slot = found
            off = fmt.RECORDS_START
        sealed = False
        while off < len(data):
            parsed = fmt.parse_at(data, off)
            if parsed is None:
                if fmt.only_zeros_from(data, off):
                    break  # the clean end: preallocated or zero-filled space
                end = len(data.rstrip(b"\0"))
                if is_last and not fmt.valid_record_after(data, off + 1, end):
                    zero_range(seg.path, off, end)  # a torn tail
                    break
                scan.damage = f"{seg.path}: corrupt WAL record at byte offset {off}"
                return
            record, after = parsed
            sealed = self._scan_record(record, seg, off, scan)
            if scan.damage:
                return
            off = after
        scan.log_end = off
        if seg.version == 2 and not is_last and not sealed:
            scan.damage = (
                f"{seg.path}: sealed segment ends at byte offset {off} without its seal record"
                " (its tail was lost)"
            )

    def _scan_record(self, record: list[Any], seg: Segment, off: int, scan: Scan) -> bool:
        """Apply one record; True if it is a seal matching the log so far."""
        kind = record[0]
        if kind == fmt.REC_SEAL:
            entries = scan.entries
            return not entries or record[1] == entries[-1].index
        if kind == fmt.REC_SNAPSHOT:
            self._last_marker = (record[1], record[2])
            scan.marker_at = f"{seg.path} at byte offset {off}"
        elif kind == fmt.REC_HARD_STATE:
            _, term, vote, commit = record
            scan.hard_state = HardState(term, vote, commit)
        gap = replay(record, scan.entries)
        if gap:
            scan.damage = f"{seg.path}: {gap} at byte offset {off}"
        return False

    def _missing_snapshot(self, snap: Snapshot | None, marker_at: str) -> str:
        if self._last_marker is None:
            return ""
        index, term = self._last_marker
        if snap is not None and snap.index >= index:
            return ""
        name = f"{index:016x}-{term:016x}.snap"
        return f"{self.snap_dir}: snapshot {name} is missing (marked in {marker_at})"

    def _lost_acknowledged(self, last: int, scan: Scan) -> str:
        slot = scan.slot
        if slot is None or last >= slot.acknowledged:
            return ""
        where = self._segments[-1].path if self._segments else self.wal_dir
        return (
            f"{where}: log ends at index {last} (byte offset {scan.log_end}) but this node had"
            f" acknowledged up to index {slot.acknowledged}: {slot.acknowledged - last} entries lost"
        )

    def _load_snapshot(self) -> tuple[Snapshot | None, str]:
        files = sorted(self.snap_dir.glob("*.snap"))
        if not files:
            return None, ""
        newest = files[-1]
        data = newest.read_bytes()
        parsed = fmt.parse_at(data, 0)
        if parsed is None or parsed[1] != len(data):
            return None, f"{newest}: corrupt snapshot at byte offset 0"
        _, index, term, voters, learners, app_data = parsed[0]
        for old in files[:-1]:
            old.unlink()
        return Snapshot(index, term, ConfState(tuple(voters), tuple(learners)), app_data), ""

    # ------------------------------------------------------------ writing

    def append(self, entries: list[Entry], hard_state: HardState | None = None) -> None:
        """Write entries (truncating a conflicting suffix) and the hard state; not durable
        until ``sync()``.  A damaged store writes nothing (see the module doc)."""
        if self.damage:
            return
        before = (self._last_index, self._batch_min, self._hard_state)
        try:
            self._append(entries, hard_state)
        except OSError:
            # Nothing of this call counts as written: a clean stop's ack slot
            # must not claim entries that never reached the file.
            self._last_index, self._batch_min, self._hard_state = before
            raise

    def _append(self, entries: list[Entry], hard_state: HardState | None) -> None:
        buf = bytearray()
        # One packer for the batch (packb builds one per call), framed in place.
        pack, crc32 = msgpack.Packer().pack, zlib.crc32
        for entry in entries:
            rotate = self._fd < 0 or self._size - fmt.RECORDS_START + len(buf) >= self.segment_bytes
            if rotate or entry.index < self._segments[-1].first:
                self._write(buf)
                buf = bytearray()
                self._rotate(entry.index)
            payload = pack([fmt.REC_ENTRY, entry.term, entry.index, int(entry.kind), entry.data])
            buf += HEADER.pack(len(payload), crc32(payload))
            buf += payload
            self._last_index = entry.index
            if self._batch_min is None or entry.index < self._batch_min:
                self._batch_min = entry.index
        if hard_state is not None:
            self._hard_state = hard_state
            if self._fd < 0:
                self._rotate(self._last_index + 1)
            buf += self._hard_state_record()
        self._write(buf)

    def sync(self) -> None:
        """Make everything appended so far durable: the next ack slot, then one
        fdatasync per touched segment (the slot shares the last segment's)."""
        if not self._dirty:
            return
        if self._fd >= 0 and self._segments[-1].version == 2:
            first = self._synced_last + 1
            if self._batch_min is not None:
                first = min(first, self._batch_min)
            self._write_slot(first)
        try:
            for fd in sorted(self._dirty):
                os.fdatasync(fd)
        except OSError:
            if self._synced_at[0] == self._fd:
                # The kernel may have dropped the pages: the caller's retry must
                # write the batch again at the same offsets, or zeros would be
                # left before valid records (which recovery calls corruption).
                self._size = self._synced_at[1]
                self._last_index, self._batch_min = self._synced_last, None
            raise
        self._dirty.clear()
        self._synced_last = self._last_index
        self._synced_at = (self._fd, self._size)
        self._batch_min = None

    def _write_slot(self, batch_first: int) -> None:
        hs = self._hard_state
        gen = self._ack_gen + 1
        slot = AckSlot(gen, batch_first, self._last_index, hs.term, hs.vote)
        os.pwrite(self._fd, slot.encode(), fmt.slot_offset(gen))
        self._ack_gen = gen
        self._dirty.add(self._fd)

    def _hard_state_record(self) -> bytes:
        hs = self._hard_state
        return fmt.frame(fmt.hard_state_payload(hs.term, hs.vote, hs.commit))

    def _write(self, buf: bytes | bytearray) -> None:
        if not buf:
            return
        start = self._size
        view = memoryview(buf)
        try:
            while view:
                written = os.pwrite(self._fd, view, self._size)
                view = view[written:]
                self._size += written
        except OSError:
            # Disk full (or worse): forget the partial bytes, so a retry of the
            # same write overwrites them instead of leaving a torn record behind.
            self._size = start
            raise
        self._dirty.add(self._fd)

    def _rotate(self, first_index: int) -> None:
        if self._fd >= 0:
            if self._segments[-1].version == 2:
                # The seal: recovery knows a sealed segment lost nothing at its end.
                self._write(fmt.frame(msgpack.packb([fmt.REC_SEAL, self._last_index])))
            if self._fd in self._dirty:
                os.fdatasync(self._fd)
                self._dirty.discard(self._fd)
            os.close(self._fd)
            self._fd = -1
        seq = self._segments[-1].seq + 1 if self._segments else 0
        path = self.wal_dir / f"{seq:016x}-{first_index:016x}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, fmt.RECORDS_START + self.segment_bytes)
            except OSError as exc:
                if exc.errno not in _NO_FALLOCATE:
                    raise  # disk full: refuse now rather than fail mid-record later
            header = fmt.segment_header(seq, first_index)
            os.pwrite(fd, header + bytes(fmt.RECORDS_START - len(header)), 0)
            os.fsync(fd)  # the allocation (file size) and header are durable before any record
            _fsync_dir(self.wal_dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd = fd
        self._size = fmt.RECORDS_START
        self._synced_at = (-1, 0)  # (no rollback into a segment made since the last sync)
        self._segments.append(Segment(seq, first_index, path, 2))
        self._write(self._hard_state_record())

    # ------------------------------------------------------------ snapshots

    def save_snapshot(self, snap: Snapshot) -> None:
        """Durably store ``snap`` (temp → fsync → rename → fsync dir), then mark the WAL.
        A snapshot no newer than the current one is ignored."""
        if self.damage:
            return
        if self._snapshot is not None and snap.index <= self._snapshot.index:
            return
        payload = msgpack.packb(
            [
                fmt.REC_SNAPSHOT,
                snap.index,
                snap.term,
                list(snap.conf.voters),
                list(snap.conf.learners),
                snap.data,
            ]
        )
        final = self.snap_dir / f"{snap.index:016x}-{snap.term:016x}.snap"
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = memoryview(fmt.frame(payload))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(self.snap_dir)
        self._mark_snapshot(snap)
        self._snapshot = snap
        self._last_index = max(self._last_index, snap.index)
        for old in self.snap_dir.glob("*.snap"):
            if old != final:
                old.unlink()

    def _mark_snapshot(self, snap: Snapshot) -> None:
        if self._fd < 0:
            self._rotate(snap.index + 1)
        self._write(fmt.frame(msgpack.packb([fmt.REC_SNAPSHOT, snap.index, snap.term])))
        # A snapshot from the leader may replace a longer log (its uncommitted
        # tail is dropped on replay), so what this sync promises is measured from
        # the snapshot: like a truncation, it lowers the batch's first index.
        first = min(self._synced_last + 1, snap.index + 1)
        self._batch_min = first if self._batch_min is None else min(self._batch_min, first)
        self._last_index = max(self._last_index, snap.index)
        self.sync()
        self._last_marker = (snap.index, snap.term)

    def compact(self, index: int) -> None:
        """Delete segments holding only entries below ``index`` (never past the snapshot)."""
        limit = min(index, self._snapshot.index + 1 if self._snapshot else 0)
        # Entries of segment i at or above any later segment's first index were truncated
        # by that later segment, so its live entries are all below that minimum.
        drop = 0
        later_min = None
        suffix_min: list[int] = [0] * len(self._segments)
        for i in range(len(self._segments) - 1, -1, -1):
            suffix_min[i] = later_min if later_min is not None else -1
            first = self._segments[i].first
            later_min = first if later_min is None else min(later_min, first)
        for i in range(len(self._segments) - 1):
            if 0 <= suffix_min[i] <= limit:
                drop = i + 1
            else:
                break
        if not drop:
            return
        for seg in self._segments[:drop]:
            seg.path.unlink()
        del self._segments[:drop]
        _fsync_dir(self.wal_dir)

    def segment_paths(self) -> list[Path]:
        return [seg.path for seg in self._segments]

    # ------------------------------------------------------------ repair

    def reset(self) -> Path | None:
        """Drop the whole WAL and every snapshot (a granted repair, or a forced new
        cluster): they are moved to ``damaged-<unix time>/`` beside them, where the
        operator can inspect them (older such directories are removed).  Returns
        that directory, or None if there was nothing to move."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._dirty.clear()
        self._synced_at = (-1, 0)
        aside: Path | None = None
        if any(self.wal_dir.iterdir()) or any(self.snap_dir.iterdir()):
            aside = self.dir / f"damaged-{int(time.time())}"
            for old in self.dir.glob("damaged-*"):
                if old != aside:
                    shutil.rmtree(old, ignore_errors=True)
            aside.mkdir(exist_ok=True)
            for sub in (self.wal_dir, self.snap_dir):
                target = aside / sub.name
                if target.exists():
                    shutil.rmtree(target)
                os.rename(sub, target)
            self.wal_dir.mkdir()
            self.snap_dir.mkdir()
            _fsync_dir(self.dir)
        self._segments = []
        self._snapshot = None
        self._last_marker = None
        self._last_index = self._synced_last = 0
        self._batch_min = None
        self._hard_state = HardState(self._hard_state.term, self._hard_state.vote, 0)
        self.damage = ""
        self._restored = RestoredState(self._hard_state, None, ())
        return aside

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            if self._segments[-1].version == 2:
                # A clean stop: an empty batch, so any later loss reads as damage.
                self._write_slot(self._last_index + 1)
                os.fdatasync(self._fd)
                self._dirty.clear()
            os.close(self._fd)
            self._fd = -1
