"""The Raft driver's storage calls: WAL syncs inline only while the disk is fast."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from agent.raft.storage import Storage
from agent.runtime import storage_io
from agent.runtime.storage_io import PROBE_EVERY, StorageIO


class SlowableStorage(Storage):
    """A WAL whose sync is instant or slow on demand (the real fdatasync's time
    depends on the box), recording the thread each sync ran on."""

    delay = 0.0
    threads: list[str]

    def sync(self) -> None:
        self.threads.append(threading.current_thread().name)
        if self.delay:
            threading.Event().wait(self.delay)


def test_syncs_leave_the_loop_while_the_disk_is_slow_and_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_io, "INLINE_SYNC_MAX", 0.01)  # "fast" even on a loaded box
    monkeypatch.setattr(storage_io, "INLINE_SYNC_CAP", 0.05)
    store = SlowableStorage.open(tmp_path, segment_bytes=1 << 20)
    assert isinstance(store, SlowableStorage)
    store.threads = []
    io = StorageIO(store)

    async def run() -> None:
        main = threading.current_thread().name
        for _ in range(10):
            await io.sync()
        assert io.inline and set(store.threads) == {main}
        store.delay = 0.08  # one sync past the cap
        await io.sync()
        assert not io.inline and io.slow_syncs == 1
        store.delay = 0.0
        for _ in range(PROBE_EVERY - 1):
            await io.sync()
        assert not io.inline and store.threads[-1] != main
        await io.sync()  # the probe: inline, fast, so back inline
        assert io.inline and store.threads[-1] == main
        stats = io.stats()
        assert stats["mode"] == "inline" and stats["thread_syncs"] == PROBE_EVERY
        assert stats["inline_syncs"] == 12 and stats["max_sync_ms"] >= 80
        await io.drain()

    asyncio.run(run())
    store.close()
