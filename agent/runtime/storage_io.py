"""How the Raft driver runs its blocking storage calls: WAL syncs and snapshots.

Theory of operation: the ready loop is the only user of ``Storage`` and runs
one Ready at a time, so whatever this module runs -- inline or in the default
executor -- has the storage to itself.

* ``sync()`` fdatasyncs the WAL inline while the disk has been fast, else in
  a worker thread.  In a thread the loop keeps stepping proposals and
  messages into the core meanwhile (the next Ready persists them with one
  fsync), but on a busy leader the worker then waits for the GIL -- up to the
  interpreter's 5 ms switch interval -- before the Ready can finish.  A
  sub-millisecond sync costs the loop less than that hop, and requests still
  queue up (in the sockets) for the next group commit.  One slow sync (more
  than ``INLINE_SYNC_MAX``) moves syncing to the thread, so a slow disk never
  stalls the loop (SWIM, the control socket) for long, until
  ``FAST_SYNCS_TO_INLINE`` fast syncs in a row show the disk is fast again.
  It starts in the thread: inline is earned.
* ``persist_snapshot()`` (megabytes to checksum, write and fsync) always runs
  in the thread.
* Thread calls are shielded: a cancelled ready loop must not leave one running
  while the storage closes, so ``drain()`` waits for the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from agent.raft.messages import Snapshot
from agent.raft.storage import Storage

INLINE_SYNC_MAX = 0.001
"""Seconds: a WAL sync slower than this moves syncing off the event loop."""

FAST_SYNCS_TO_INLINE = 200
"""Consecutive fast syncs in the worker thread before syncing inline again."""


class StorageIO:
    """The blocking calls of one ``Storage``, run as the module docstring says."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.inline = False
        self.fast_syncs = 0
        """Consecutive fast syncs (in the thread) since the last slow one."""
        self.syncs = 0
        self.inline_syncs = 0
        self.slow_syncs = 0
        self.max_sync = 0.0
        """Seconds: the slowest sync seen (a slow disk shows here first)."""
        self._last: asyncio.Future[object] | None = None

    async def sync(self) -> None:
        if self.inline:
            self.inline_syncs += 1
            if not self._timed_sync():
                self.inline = False
            return
        await self._in_thread(self._timed_sync)
        if self.fast_syncs >= FAST_SYNCS_TO_INLINE:
            self.inline = True

    def _timed_sync(self) -> bool:
        """One sync, counted; True if it was fast."""
        started = time.perf_counter()
        self.storage.sync()
        took = time.perf_counter() - started
        self.syncs += 1
        self.max_sync = max(self.max_sync, took)
        if took > INLINE_SYNC_MAX:
            self.slow_syncs += 1
            self.fast_syncs = 0
            return False
        self.fast_syncs += 1
        return True

    def stats(self) -> dict[str, Any]:
        """For the ``report`` method: how WAL syncs run and how fast the disk is."""
        return {
            "mode": "inline" if self.inline else "thread",
            "syncs": self.syncs,
            "inline_syncs": self.inline_syncs,
            "slow_syncs": self.slow_syncs,
            "max_sync_ms": round(self.max_sync * 1000.0, 3),
        }

    async def persist_snapshot(self, snap: Snapshot) -> None:
        """Save ``snap`` durably, then drop the WAL segments it covers."""
        await self._in_thread(self._persist_snapshot, snap)

    def _persist_snapshot(self, snap: Snapshot) -> None:
        self.storage.save_snapshot(snap)
        self.storage.compact(snap.index)

    async def _in_thread(self, fn: Callable[..., object], *args: Any) -> None:
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._last = fut
        await asyncio.shield(fut)

    async def drain(self) -> None:
        """Wait for a thread call a cancelled ready loop left running."""
        if self._last is not None:
            with contextlib.suppress(Exception):
                await self._last
