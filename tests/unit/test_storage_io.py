"""The Raft driver's storage calls: WAL syncs inline only while the disk is fast."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from agent.raft.messages import Entry, EntryKind, HardState
from agent.raft.storage import Storage
from agent.runtime import storage_io
from agent.runtime.storage_io import FAST_SYNCS_TO_INLINE, StorageIO


class SlowableStorage(Storage):
    """A WAL whose sync is instant or slow on demand (the real fdatasync's time
    depends on the box), recording the thread each sync ran on."""

    slow = False
    threads: list[str]

    def sync(self) -> None:
        self.threads.append(threading.current_thread().name)
        if self.slow:
            threading.Event().wait(2 * storage_io.INLINE_SYNC_MAX)


def test_inline_is_earned_and_lost_on_one_slow_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_io, "INLINE_SYNC_MAX", 0.05)  # "fast" even on a loaded box
    store = SlowableStorage.open(tmp_path, segment_bytes=1 << 20)
    assert isinstance(store, SlowableStorage)
    store.threads = []
    io = StorageIO(store)

    async def run() -> None:
        main = threading.current_thread().name
        for index in range(1, FAST_SYNCS_TO_INLINE + 3):
            store.append([Entry(1, index, EntryKind.NORMAL, b"x")], HardState(1, "", 0))
            await io.sync()
        assert io.inline and store.threads[-1] == main  # earned: now inline
        assert all(t != main for t in store.threads[:FAST_SYNCS_TO_INLINE])
        store.slow = True
        await io.sync()
        assert not io.inline and io.slow_syncs == 1  # one slow sync: back to the thread
        await io.sync()
        assert store.threads[-1] != main
        stats = io.stats()
        assert stats["mode"] == "thread" and stats["syncs"] == FAST_SYNCS_TO_INLINE + 4
        await io.drain()

    asyncio.run(run())
    store.close()
