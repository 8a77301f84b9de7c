"""How the Raft driver makes a Ready durable: snapshot, entries, hard state, fsync.

The Ready loop (``consensus.py``) hands each Ready here before it applies
anything.  ``persist`` writes the Ready's snapshot and entries and hard state to
the WAL and syncs when the Ready says it must (``must_sync``); a leader's Ready
that may go out before its own fsync (``send_first``: see ``consensus.py``'s
module doc) has its messages sent right after the append, so followers write
and fsync while the leader does.  A granted repair (``reset_storage``) first
moves the old log aside.

A full disk is not fatal: Raft pauses (``diskfull.py``: no acks, no votes, a
leader hands off) and the same writes are retried with a doubling delay until
they fit.  A failed write leaves nothing behind, and after a failed fsync the
pages it covered may already be marked clean, so a retry writes every record
again before it syncs.  Any other storage failure raises to the loop, which
stops the node: going on could acknowledge writes that are not durable.

``persist_snapshot`` saves a snapshot of our own state and compacts the WAL
behind it, in a thread (``storage_io.py``); a full disk leaves the WAL whole
and raises an alarm, and the snapshot is tried again later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agent.raft.messages import Ready, Snapshot
from agent.raft.storage import Storage
from agent.runtime.diskfull import RETRY_FIRST, RETRY_MAX, DiskFullMode, is_disk_full
from agent.runtime.storage_io import StorageIO
from agent.state.machine import StateMachine

log = logging.getLogger("agent.runtime.consensus")  # the driver's logger: its lines read as before


class ReadyWriter:
    """Writes Readys and snapshots to one node's Raft storage."""

    def __init__(
        self,
        storage: Storage,
        io: StorageIO,
        disk_full: DiskFullMode,
        send: Callable[[str, object], None],
        state: StateMachine,
    ) -> None:
        """``send(node_id, msg)`` reaches a peer; ``state`` is emptied when a granted
        repair moves the old log aside."""
        self._storage = storage
        self._io = io
        self._disk_full = disk_full
        self._send = send
        self._state = state

    def _reset_storage(self) -> None:
        """A granted repair (raft/repair.py): the log, snapshots and state go."""
        aside = self._storage.reset()
        self._state.restore(StateMachine().snapshot())
        log.warning(
            "repair granted by the leader: old WAL and snapshots moved to %s; catching up as a learner",
            aside,
        )

    async def persist(self, rd: Ready, send_first: bool) -> None:
        """Make ``rd``'s snapshot, entries and hard state durable, sending its messages
        after the append when ``send_first``.  A full disk pauses Raft and retries
        the same writes (a failed write leaves nothing behind) until they fit."""
        reset, sent, delay = rd.reset_storage, False, RETRY_FIRST
        while True:
            try:
                if reset:
                    self._reset_storage()
                    reset = False
                if rd.snapshot is not None:
                    self._storage.save_snapshot(rd.snapshot)  # a retry skips a saved one
                if rd.entries or rd.hard_state is not None:
                    self._storage.append(list(rd.entries), rd.hard_state)
                if send_first and not sent:
                    sent = True
                    for msg in rd.messages:
                        self._send(msg.to, msg)
                if rd.must_sync:
                    await self._io.sync()
                break
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                # After a failed fsync the pages it covered may be lost (Linux marks
                # them clean): the retry writes the records again, then syncs.
                self._disk_full.pause(exc)
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
        self._disk_full.resume()

    async def persist_snapshot(self, snap: Snapshot) -> None:
        """Save a snapshot of our own state and compact the WAL behind it.  Megabytes to
        checksum, write and fsync: in a thread, so the loop keeps serving (storage_io).
        A full disk leaves the WAL whole: an alarm, and a retry later (diskfull.py)."""
        try:
            await self._io.persist_snapshot(snap)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._disk_full.snapshot_failed(exc, snap)
        else:
            self._disk_full.snapshot_saved()
