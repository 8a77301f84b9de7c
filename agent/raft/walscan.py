"""WAL recovery's pieces that need no ``Storage``: segments, the scan, the replay.

``Storage._recover`` (``storage.py``, whose module doc tables what is damage and
what is a torn tail) lists the segments, scans each into a :class:`Scan`, replays
every record into the entry list (:func:`replay`), and keeps the entries that
follow the newest snapshot (:func:`entries_after_snapshot`).  These functions only
read and compute, except :func:`zero_range`, which cuts a torn tail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import StorageError
from agent.raft import walformat as fmt
from agent.raft.messages import Entry, EntryKind, HardState, Snapshot
from agent.raft.walformat import AckSlot


class Segment:
    """One WAL segment file: its sequence number, first index, path and format version."""

    __slots__ = ("first", "path", "seq", "version")

    def __init__(self, seq: int, first: int, path: Path, version: int) -> None:
        self.seq, self.first, self.path, self.version = seq, first, path, version


@dataclass(slots=True)
class Scan:
    """What recovery has found so far, segment by segment."""

    damage: str = ""
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState = field(default_factory=HardState)
    log_end: int = 0
    slot: AckSlot | None = None
    marker_at: str = ""


def with_slot_vote(hard_state: HardState, slot: AckSlot) -> HardState:
    """The ack slot's term and vote where they are newer than the WAL's: believing
    we voted when the vote's sync may not have finished is safe."""
    if (slot.term, bool(slot.vote)) > (hard_state.term, bool(hard_state.vote)):
        return HardState(slot.term, slot.vote, hard_state.commit)
    return hard_state


def list_segments(wal_dir: Path) -> list[Segment]:
    """The WAL directory's segments in sequence order (``.wal``: version 1, ``.seg``: 2)."""
    found = []
    for path in wal_dir.iterdir():
        version = {".wal": 1, ".seg": 2}.get(path.suffix)
        if version is None:
            continue
        seq_text, _, first_text = path.stem.partition("-")
        try:
            found.append(Segment(int(seq_text, 16), int(first_text, 16), path, version))
        except ValueError:
            raise StorageError(f"{path}: not a WAL segment name") from None
    return sorted(found, key=lambda s: s.seq)


def replay(record: list[Any], entries: list[Entry]) -> str:
    """Apply one record to ``entries``; a non-empty result describes a gap."""
    kind = record[0]
    if kind == fmt.REC_ENTRY:
        _, term, index, entry_kind, data = record
        if entries and index <= entries[-1].index:
            del entries[max(0, index - entries[0].index) :]
        if entries and index != entries[-1].index + 1:
            return f"WAL gap before index {index}"
        entries.append(Entry(term, index, EntryKind(entry_kind), data))
    elif kind == fmt.REC_SNAPSHOT:
        _, index, term = record
        matches = bool(entries) and entries[0].index <= index <= entries[-1].index
        if matches and entries[index - entries[0].index].term == term:
            del entries[: index - entries[0].index + 1]
        else:
            entries.clear()
    return ""


def entries_after_snapshot(
    entries: list[Entry], snap: Snapshot | None, where: Path
) -> tuple[list[Entry], str, bool]:
    """The entries that follow ``snap`` (or index 0), a gap if they do not, and
    whether the snapshot replaced a log that did not match it.  ``where`` (the first
    segment, or the WAL directory) is named in a gap's description."""
    if not entries:
        return [], "", False
    base = snap.index if snap else 0
    first, last = entries[0].index, entries[-1].index
    if snap is not None and first <= snap.index <= last:
        if entries[snap.index - first].term != snap.term:
            return [], "", True  # written before a snapshot that replaced the log
        return entries[snap.index - first + 1 :], "", False
    if last <= base:
        return [], "", False
    if first != base + 1:
        what = f"snapshot {base}" if snap else "no snapshot"
        gap = f"WAL starts at index {first} after {what} (a snapshot is missing)"
        return [], f"{where}: {gap} at byte offset 0", False
    return entries, "", False


def zero_range(path: Path, start: int, end: int) -> None:
    """Zero ``path``'s bytes ``[start, end)`` and fsync: a torn tail is cut this way."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(end - start), start)
        os.fsync(fd)
    finally:
        os.close(fd)
