"""The in-memory Raft log: a compacted prefix, stable entries, unstable entries.

Layout (indexes)::

    offset            stable           last
      |  entries[0] ... |  ...unstable... |
      ^ term known (offset_term): the compaction point

``entries`` holds every entry with index in (offset, last].  Entries with index
<= ``stable`` have been handed to storage and acknowledged (``stable_to``);
the rest are returned by ``unstable_entries()`` for the next Ready.  A snapshot
received from the leader that the log does not match resets the log to it and
waits in ``pending_snapshot`` until persisted.  ``snapshot`` is the newest
snapshot (own or received), kept to send to followers that fell behind the
compaction point.
"""

from __future__ import annotations

from agent.errors import StorageError
from agent.raft.messages import Entry, Snapshot

ENTRY_OVERHEAD = 16
"""Bytes counted per entry on top of its data when batching by size."""


class RaftLog:
    def __init__(self, snapshot: Snapshot | None, entries: tuple[Entry, ...], commit: int) -> None:
        self.snapshot = snapshot
        self.offset = snapshot.index if snapshot else 0
        self.offset_term = snapshot.term if snapshot else 0
        self.entries: list[Entry] = [e for e in entries if e.index > self.offset]
        for pos, entry in enumerate(self.entries):
            if entry.index != self.offset + 1 + pos:
                # Storage checks this on open (a gap is damage); never an assert,
                # which ``python -O`` would skip.
                raise StorageError(
                    f"restored log is not contiguous: index {entry.index} where"
                    f" {self.offset + 1 + pos} was expected"
                )
        self.stable = self.last_index()
        self.pending_snapshot: Snapshot | None = None
        # A restored commit index may not exceed what is durable.
        self.committed = max(self.offset, min(commit, self.last_index()))
        self.applied = self.offset

    # ------------------------------------------------------------ queries

    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.offset

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """The term at ``index``; None if compacted away or beyond the end."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index():
            return None
        return self.entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a candidate's log at least as up to date as ours?"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); at least one if the range is non-empty, then up to max_bytes."""
        assert self.offset < lo <= hi <= self.last_index() + 1, (lo, hi, self.offset)
        ents = self.entries[lo - self.offset - 1 : hi - self.offset - 1]
        if max_bytes is None or not ents:
            return ents
        size = 0
        for n, entry in enumerate(ents):
            size += len(entry.data) + ENTRY_OVERHEAD
            if size > max_bytes and n > 0:
                return ents[:n]
        return ents

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (fast back-off)."""
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.term(index)
            if t is not None and t <= term:
                return index
            index -= 1
        return index

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.stable - self.offset :] if self.stable < self.last_index() else []

    # ------------------------------------------------------------ mutation

    def append(self, entries: list[Entry]) -> None:
        """Append after ``entries[0].index - 1``, truncating any suffix from there on."""
        if not entries:
            return
        after = entries[0].index - 1
        assert after >= self.committed, f"truncating committed entries ({after} < {self.committed})"
        assert after <= self.last_index(), "gap in the log"
        del self.entries[after - self.offset :]
        self.entries.extend(entries)
        self.stable = min(self.stable, after)

    def append_new(self, entry: Entry) -> None:
        """The leader's own proposal, right after the last entry (nothing to truncate)."""
        assert entry.index == self.last_index() + 1, "leader append must extend the log"
        self.entries.append(entry)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower side of AppendEntries; returns the last new index or None on mismatch."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            assert conflict > self.committed, f"conflict {conflict} <= commit {self.committed}"
            self.append(list(entries[conflict - prev_index - 1 :]))
        self.commit_to(min(commit, last_new))
        return last_new

    def _find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or differs in term; 0 if all known."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            assert index <= self.last_index(), f"commit {index} beyond last {self.last_index()}"
            self.committed = index
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        """Storage persisted entries up to ``index`` (of ``term``)."""
        if index > self.stable and self.match_term(index, term):
            self.stable = index

    def restore(self, snapshot: Snapshot) -> None:
        """Reset the log to a snapshot the log does not match."""
        self.snapshot = snapshot
        self.pending_snapshot = snapshot
        self.offset = snapshot.index
        self.offset_term = snapshot.term
        self.entries = []
        self.stable = snapshot.index
        self.committed = snapshot.index

    def compact(self, index: int, snapshot: Snapshot) -> None:
        """Forget entries <= ``index`` (index <= applied); remember ``snapshot``."""
        assert index <= self.applied, f"compacting unapplied entries ({index} > {self.applied})"
        self.snapshot = snapshot
        if index <= self.offset:
            return
        term = self.term(index)
        assert term is not None
        del self.entries[: index - self.offset]
        self.offset = index
        self.offset_term = term

    def next_committed(self, limit: int) -> list[Entry]:
        """Committed but not yet applied entries, at most ``limit``."""
        lo = max(self.applied, self.offset) + 1
        hi = min(self.committed, lo + limit - 1)
        return self.slice(lo, hi + 1) if hi >= lo else []
