"""Property tests of the WAL against a model: random appends (with conflicting
suffixes), hard states, snapshots, compactions and a crash that tears the
unsynced tail at an arbitrary byte.  Whatever was synced must come back."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.raft.messages import ConfState, Entry, EntryKind, HardState, Snapshot
from agent.raft.storage import Storage


class Model:
    """What a correct log holds: entries after the snapshot, the last hard state."""

    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {}
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None

    def append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        self.entries = {i: e for i, e in self.entries.items() if i < first}
        self.entries.update({e.index: e for e in entries})

    def last_index(self) -> int:
        if self.entries:
            return max(self.entries)
        return self.snapshot.index if self.snapshot else 0

    def restored_entries(self) -> list[Entry]:
        base = self.snapshot.index if self.snapshot else 0
        return [self.entries[i] for i in sorted(self.entries) if i > base]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 6), st.integers(1, 8), st.integers(1, 60)),
        st.tuples(st.just("snapshot"), st.integers(0, 10), st.just(0), st.just(0)),
        st.tuples(st.just("compact"), st.integers(0, 10), st.just(0), st.just(0)),
        st.tuples(st.just("install"), st.integers(0, 5), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, cut=st.floats(0, 1), junk=st.sampled_from([b"", b"\0" * 64, b"\x17\x00\x00"]))
def test_synced_state_survives_a_torn_tail(
    ops: list[tuple[str, int, int, int]], cut: float, junk: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        store = Storage.open(path, segment_bytes=400)
        model = Model()
        term = 1
        for kind, a, b, c in ops:
            last = model.last_index()
            if kind == "append":
                # back up by ``a`` entries (a conflicting suffix) and write ``b`` new ones
                base = model.snapshot.index if model.snapshot else 0
                start = max(base + 1, last + 1 - a)
                term += 1 if a else 0
                entries = [
                    Entry(term, i, EntryKind.NORMAL, bytes([i % 251]) * c) for i in range(start, start + b)
                ]
                hs = HardState(term, "n1", min(start - 1, last))
                store.append(entries, hs)
                model.append(entries)
                model.hard_state = hs
            elif kind == "snapshot" and last > 0:
                index = max(1, last - a)
                held = model.entries.get(index)
                if held is None:
                    continue
                snap = Snapshot(index, held.term, ConfState(("n1",)), b"app@%d" % index)
                store.sync()
                store.save_snapshot(snap)
                if model.snapshot is None or index > model.snapshot.index:
                    model.snapshot = snap  # an older snapshot is ignored
            elif kind == "install":
                # A leader's snapshot beyond our log replaces it entirely.
                term += 1
                snap = Snapshot(last + a + 1, term, ConfState(("n1", "n2")), b"leader")
                store.save_snapshot(snap)
                model.snapshot = snap
                model.entries = {}
            elif kind == "compact" and model.snapshot is not None:
                store.compact(model.snapshot.index - a)
            store.sync()
        # Crash: an unsynced write is torn somewhere inside, plus junk after it.
        segments = store.segment_paths()
        end = store._size
        store.close()
        if segments:
            with segments[-1].open("r+b") as f:  # the torn write lands where the log ends
                f.seek(end)
                f.write(_frame_like(cut) + junk)
        restored = Storage.open(path, segment_bytes=400).load()
        assert restored.hard_state == model.hard_state
        assert restored.snapshot == model.snapshot
        assert list(restored.entries) == model.restored_entries()


def _frame_like(cut: float) -> bytes:
    """A prefix of a plausible record (header says 40 bytes follow)."""
    record = (40).to_bytes(4, "little") + (12345).to_bytes(4, "little") + b"x" * 40
    return record[: int(len(record) * cut)]
