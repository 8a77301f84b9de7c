"""How the Raft driver runs its blocking storage calls: WAL syncs and snapshots.

Theory of operation: the ready loop is the only user of ``Storage`` and runs
one Ready at a time, so whatever this module runs -- inline or in the default
executor -- has the storage to itself.

* ``sync()`` fdatasyncs the WAL inline while the disk is fast, else in a
  worker thread.  In a thread the loop keeps stepping proposals and messages
  into the core meanwhile (the next Ready persists them with one fsync), but
  on a busy leader the worker then waits for the GIL -- up to the
  interpreter's 5 ms switch interval -- before the Ready can finish.  A
  sync of a millisecond or two costs the loop less than that hop, and
  requests still queue up (in the sockets) for the next group commit.  When
  inline syncs average more than ``INLINE_SYNC_MAX``, or one takes more than
  ``INLINE_SYNC_CAP``, syncing moves to the thread, so a slow disk stalls the
  loop (SWIM, the control socket) only for one sync in ``PROBE_EVERY``: the
  probe, run inline because a sync timed in the worker includes its wait for
  the GIL.  A fast probe moves syncing back inline.
* ``persist_snapshot()`` (megabytes to checksum, write and fsync) always runs
  in the thread.
* Thread calls are shielded: a cancelled ready loop must not leave one running
  while the storage closes, so ``drain()`` waits for the last one.
* A call that fails raises to the driver, from the thread as inline.  A full
  disk (``ENOSPC``) is not fatal there: the driver retries the whole Ready,
  writing its records again before the next sync, since pages a failed
  fsync covered may already be marked clean (``runtime/diskfull.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from agent.raft.messages import Snapshot
from agent.raft.storage import Storage

INLINE_SYNC_MAX = 0.002
"""Seconds: inline syncs averaging more than this move syncing off the event loop."""

INLINE_SYNC_CAP = 0.02
"""Seconds: a single inline sync slower than this moves syncing off the event loop."""

PROBE_EVERY = 100
"""In thread mode, every this many syncs one runs inline to time the disk."""


class StorageIO:
    """The blocking calls of one ``Storage``, run as the module docstring says."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.inline = True
        self.thread_syncs = 0
        self.inline_syncs = 0
        self.slow_syncs = 0
        self.average: float | None = None
        """Seconds: moving average of inline syncs."""
        self.max_sync = 0.0
        """Seconds: the slowest sync seen (a slow disk shows here first)."""
        self._last: asyncio.Future[object] | None = None

    async def sync(self) -> None:
        if self.inline:
            self.inline = self._timed_sync()
            return
        self.thread_syncs += 1
        if self.thread_syncs % PROBE_EVERY == 0:
            # An inline probe: a sync timed in the worker includes its wait for
            # the GIL, so only a sync on the loop's own thread measures the disk.
            self.inline = self._timed_sync()
            return
        await self._in_thread(self.storage.sync)

    def _timed_sync(self) -> bool:
        """One sync on the loop's thread, counted; True if the disk looks fast:
        the moving average within ``INLINE_SYNC_MAX`` and this one within
        ``INLINE_SYNC_CAP`` (one outlier among fast syncs is tolerated)."""
        self.inline_syncs += 1
        started = time.perf_counter()
        self.storage.sync()
        took = time.perf_counter() - started
        self.max_sync = max(self.max_sync, took)
        if took > INLINE_SYNC_MAX:
            self.slow_syncs += 1
        self.average = took if self.average is None else 0.9 * self.average + 0.1 * took
        if took > INLINE_SYNC_CAP or self.average > INLINE_SYNC_MAX:
            self.average = None  # the next probe starts afresh
            return False
        return True

    def stats(self) -> dict[str, Any]:
        """For the ``report`` method: how WAL syncs run and how fast the disk is."""
        return {
            "mode": "inline" if self.inline else "thread",
            "inline_syncs": self.inline_syncs,
            "thread_syncs": self.thread_syncs,
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
