"""This host's copies of other runs' output and of artifacts, on disk, bounded.

Layout (below ``<data_dir>/replicas``, the ``OutputStore`` layout of
``agent/output_store.py``): ``<task>/<epoch>.out|.err`` for output,
``<task>/<epoch>.a_<quoted path>`` for an artifact (``.part`` while it is
being received), and each run's metadata -- its items' complete flag, sha256,
error, ring key and finished time; sizes come from the files -- as one record
in the host's journal ``.meta-journal`` (``replica_journal.py``).  Runs stored
by an agent before the journal have ``<task>/<epoch>.meta`` files instead:
they load as before, and their next write moves them to the journal.  A chunk is
written only where it continues what is here (``offset <= size``), so a
lost or repeated chunk never leaves a hole; an item becomes *complete* when
its last byte is in and its SHA-256 matches the sender's, and a complete
item is never written again.

Bounds: an artifact larger than ``artifact_limit`` is refused; when a new
chunk would take the store above ``cap_bytes`` the copies of other tasks
whose run ended first are evicted until it fits -- never a copy still being
written (an incomplete copy whose run's host died counts as ended at its last
write once ``STALE_AFTER`` has passed) -- and if even that cannot make room the
chunk is refused with one line and nothing is evicted.  A write that fails
(a full disk) truncates the file back to what was acknowledged: what was
stored stays stored.  Refusals raise ``ReplicaRefused`` with the line.

Cheap cases (issue 14: most task output is empty): an item that arrives
complete and empty in its first chunk is only a row of its run's record (no
data file or directory: a read of a missing file is empty; nothing to hash,
truncate or fsync).  While ``defer_meta`` is set, metadata writes are only
noted, and ``flush_meta`` appends one record per run, all in one write: the
driver sets it for the chunks of one event-loop pass and flushes before it
sends their acks, so a pass's runs cost one ``write``, and nothing is
acknowledged before its row is written (as before).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import TaskError
from agent.output_store import check_task_id, item_file
from agent.runtime.replica_journal import MetaJournal, Rows, RunKey

log = logging.getLogger(__name__)

ARTIFACT_LIMIT_BYTES = 64 * 1024 * 1024
"""Largest artifact kept (bytes, default 64 MiB): bigger files are refused with one
line when collected; a replica refuses them too."""
REPLICA_CAP_BYTES = 1024 * 1024 * 1024
"""Bytes of replicas and artifacts one host keeps (default 1 GiB); above it the
oldest finished items are evicted first."""
STALE_AFTER = 600.0
"""Seconds without a write after which an incomplete copy (its run's host died
before it ended) counts as finished at its last write, for eviction and pruning."""
HASH_BLOCK = 1024 * 1024
EMPTY_SHA256 = hashlib.sha256().hexdigest()


class ReplicaRefused(Exception):
    """A chunk or item this store will not take; the message is one line."""


@dataclass(slots=True)
class StoredItem:
    """One item this host holds (a run's stream or an artifact)."""

    task_id: str
    epoch: int
    name: str
    ring_key: str
    size: int = 0
    complete: bool = False
    sha256: str = ""
    error: str = ""
    finished_at: float | None = None
    source: Path | None = None
    """Set for a run of this host: the executor's capture file (not in the store)."""

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.task_id, self.epoch, self.name)


def file_sha256(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        left = limit
        while left is None or left > 0:
            block = handle.read(HASH_BLOCK if left is None else min(HASH_BLOCK, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


class ReplicaStore:
    """Items below ``root`` (see the module doc)."""

    def __init__(
        self, root: Path, node_name: str, *, cap_bytes: int = REPLICA_CAP_BYTES,
        artifact_limit: int = ARTIFACT_LIMIT_BYTES,
    ) -> None:
        self.root = root
        self.node_name = node_name
        self.cap_bytes = cap_bytes
        self.artifact_limit = artifact_limit
        self.items: dict[tuple[str, int, str], StoredItem] = {}
        self._names: dict[tuple[str, int], set[str]] = {}
        """(task id, epoch) -> names of the items this store added for that run."""
        self.used = 0
        """Bytes of the items held here (sources excluded)."""
        self.defer_meta = False
        """While True, ``.meta`` writes wait for ``flush_meta`` (see the module doc)."""
        self._dirty: set[tuple[str, int]] = set()
        self._journal = MetaJournal(root)
        self._journaled: set[RunKey] = set()
        """Runs with a live (non-empty) record in the journal."""
        self._legacy: set[RunKey] = set()
        """Runs loaded from a ``.meta`` file (an agent before the journal)."""

    # ------------------------------------------------------------ paths and loading

    def path(self, item: StoredItem) -> Path:
        if item.source is not None:
            return item.source
        check_task_id(item.task_id)
        base = self.root / item.task_id / f"{int(item.epoch)}.{item_file(item.name)}"
        if item.name.startswith("a:") and not item.complete:
            return base.with_name(base.name + ".part")
        return base

    def _meta_path(self, task_id: str, epoch: int) -> Path:
        check_task_id(task_id)
        return self.root / task_id / f"{int(epoch)}.meta"

    def load(self) -> list[StoredItem]:
        """Every item the journal and the legacy ``.meta`` files below ``root`` describe
        (sizes from the files); a run in both is the journal's (its newer write)."""
        if not self.root.is_dir():
            return []
        runs: dict[RunKey, Rows] = {}
        for meta in sorted(self.root.glob("*/*.meta")):
            try:
                key = (meta.parent.name, int(meta.name.split(".")[0]))
                runs[key] = json.loads(meta.read_text())
                self._legacy.add(key)
            except (OSError, ValueError) as exc:
                log.warning("replica metadata %s unreadable, skipped: %s", meta, exc)
        try:
            journaled = self._journal.replay()
        except OSError as exc:
            log.warning("replica journal %s unreadable, skipped: %s", self._journal.path, exc)
            journaled = {}
        runs.update(journaled)
        self._journaled.update(journaled)
        found: list[StoredItem] = []
        for (task_id, epoch), rows in runs.items():
            try:
                for name, row in rows.items():
                    item = StoredItem(task_id, epoch, name, str(row["ring_key"]),
                                      0, bool(row["complete"]), str(row["sha256"]),
                                      str(row["error"]), row["finished_at"])
                    item.size = self._size_on_disk(item)
                    self.items[item.key] = item
                    self._names.setdefault((item.task_id, item.epoch), set()).add(name)
                    self.used += item.size
                    found.append(item)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, TaskError) as exc:
                log.warning("replica metadata of %s epoch %s unreadable, skipped: %s",
                            task_id, epoch, exc)
        return found

    def _size_on_disk(self, item: StoredItem) -> int:
        try:
            return self.path(item).stat().st_size
        except FileNotFoundError:
            return 0

    def _save_meta(self, task_id: str, epoch: int) -> None:
        if self.defer_meta:
            self._dirty.add((task_id, epoch))
            return
        self._write_meta((task_id, epoch))

    def flush_meta(self) -> set[tuple[str, int]]:
        """Write the metadata of every run noted while ``defer_meta`` was set, in one
        journal write; the runs whose write failed (logged): all of them, or none.
        Failed runs stay noted: the next flush (the holder's resend of a chunk, whose
        item is already complete here) writes them again before anything is acked."""
        dirty, self._dirty = self._dirty, set()
        try:
            self._write_meta(*dirty)
        except OSError as exc:
            log.warning("replica metadata of %d run(s) not written: %s", len(dirty), exc)
            self._dirty = dirty
            return set(dirty)
        return set()

    def _rows(self, key: RunKey) -> Rows:
        # The run's names from the index, not a scan of every item held (a scan per
        # chunk made a host's replica work grow with everything it held).
        names = self._names.get(key, set())
        found = [i for n in sorted(names) if (i := self.items.get((*key, n)))]
        names.intersection_update(i.name for i in found)
        if not names:
            self._names.pop(key, None)
        return {
            i.name: {"ring_key": i.ring_key, "complete": i.complete, "sha256": i.sha256,
                     "error": i.error, "finished_at": i.finished_at}
            for i in found
            if i.source is None
        }

    def _write_meta(self, *runs: RunKey) -> None:
        """Append the records of ``runs`` to the journal in one write (``OSError``)."""
        records = []
        for key in runs:
            rows = self._rows(key)
            if rows or key in self._journaled:  # (an empty record drops the run)
                records.append((key, rows))
        self._journal.append(records)
        for key, rows in records:
            if rows:
                self._journaled.add(key)
            else:
                self._journaled.discard(key)
        for key in self._legacy.intersection(runs):  # the journal holds it now
            self._legacy.discard(key)
            with contextlib.suppress(OSError):
                self._meta_path(*key).unlink()
        if self._journal.wants_compaction(len(self._journaled)):
            try:
                self._journal.compact([(key, self._rows(key)) for key in self._journaled])
            except OSError as exc:  # the journal as it was still holds everything
                log.warning("replica journal not compacted: %s", exc)

    # ------------------------------------------------------------ writes

    def item(self, task_id: str, epoch: int, name: str, ring_key: str) -> StoredItem:
        """The item, created empty (not yet on disk) if new; ``TaskError`` on a bad name."""
        key = (task_id, epoch, name)
        found = self.items.get(key)
        if found is None:
            found = StoredItem(task_id, epoch, name, ring_key)
            check_task_id(task_id)  # (what ``path`` checks, without building it)
            item_file(name)
        return found

    def write_chunk(
        self, item: StoredItem, offset: int, data: bytes, total: int, sha256: str,
        finished_at: float | None, error: str,
    ) -> None:
        """Take a pushed chunk (see the module doc); ``ReplicaRefused`` with one line."""
        if item.complete or offset > item.size:
            return
        end = offset + len(data)
        if item.name.startswith("a:") and max(end, total) > self.artifact_limit:
            raise ReplicaRefused(
                f"{item.name[2:]}: {max(end, total)} bytes is over the per-artifact limit "
                f"of {self.artifact_limit} bytes on {self.node_name}"
            )
        growth = max(0, end - item.size)
        self._make_room(growth, item)
        known = item.key in self.items
        self.items[item.key] = item
        self._names.setdefault((item.task_id, item.epoch), set()).add(item.name)
        item.finished_at, item.error = finished_at, error
        if not known and total == 0 and item.size == 0:  # complete and empty: a .meta row
            self._complete(item, 0, sha256, on_disk=False)
            return
        if growth or not known:
            self._write(item, offset, data)
            self.used += growth
            item.size = max(item.size, end)
        if total >= 0 and item.size >= total:
            self._complete(item, total, sha256)
        elif not known:
            self._save_meta(item.task_id, item.epoch)

    def _write(self, item: StoredItem, offset: int, data: bytes) -> None:
        path = self.path(item)
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.pwrite(fd, data, offset)
            except OSError:
                os.ftruncate(fd, item.size)  # nothing half-written is kept
                raise
            finally:
                os.close(fd)
        except OSError as exc:
            raise ReplicaRefused(
                f"cannot store {item.task_id} {item.name} on {self.node_name}: "
                f"{exc.strerror or exc} ({self.root})"
            ) from None

    def _complete(self, item: StoredItem, total: int, sha256: str, on_disk: bool = True) -> None:
        path = self.path(item)
        on_disk = on_disk and path.exists()
        digest = file_sha256(path, total) if on_disk else EMPTY_SHA256
        if sha256 and digest != sha256:
            self._drop_bytes(item)
            raise ReplicaRefused(f"{item.task_id} {item.name}: checksum mismatch, copy discarded")
        if on_disk:
            with open(path, "r+b") as handle:
                handle.truncate(total)
                handle.flush()
                if total:  # an empty copy has no data to make durable (its meta is not fsynced)
                    os.fsync(handle.fileno())
        item.complete, item.sha256 = True, digest
        final = self.path(item)
        if on_disk and final != path:
            os.replace(path, final)
        self._save_meta(item.task_id, item.epoch)

    def put(self, item: StoredItem, data: bytes) -> None:
        """Store a whole item collected here (an artifact, or its one-line error)."""
        self.write_chunk(item, 0, data, len(data), hashlib.sha256(data).hexdigest(),
                         item.finished_at, item.error)

    def _drop_bytes(self, item: StoredItem) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(item).unlink()
        self.used -= item.size
        item.size = 0

    def _make_room(self, growth: int, keep: StoredItem) -> None:
        if self.used + growth <= self.cap_bytes:
            return
        ended = {i.key: at for i in self.items.values()
                 if i.task_id != keep.task_id and (at := self.ended_at(i)) is not None}
        victims = sorted((self.items[k] for k in ended), key=lambda i: ended[i.key])
        if self.used - sum(v.size for v in victims) + growth > self.cap_bytes:
            raise ReplicaRefused(
                f"replica store on {self.node_name} is full ({self.used} of {self.cap_bytes} "
                f"bytes, held by runs not yet finished)"
            )
        for victim in victims:
            if self.used + growth <= self.cap_bytes:
                break
            log.info("replica cap: evicting %s epoch %d %s", victim.task_id, victim.epoch,
                     victim.name)
            self.remove(victim)

    def ended_at(self, item: StoredItem) -> float | None:
        """When a copy held here stopped changing: its run's finish, or for an
        incomplete copy untouched for ``STALE_AFTER`` its last write; None for a
        run's own capture and for a copy still being written."""
        if item.source is not None:
            return None
        if item.complete:
            return item.finished_at if item.finished_at is not None else 0.0
        try:
            mtime = self.path(item).stat().st_mtime
        except OSError:
            return 0.0
        return mtime if time.time() - mtime > STALE_AFTER else None

    def remove(self, item: StoredItem) -> None:
        if item.source is None:
            self._drop_bytes(item)
        self.items.pop(item.key, None)
        if item.source is None:
            self._save_meta(item.task_id, item.epoch)
            with contextlib.suppress(OSError):
                (self.root / item.task_id).rmdir()  # only once empty

    def prune(self, before: float) -> int:
        """Remove finished items whose run finished before ``before``; how many."""
        old = [i for i in self.items.values()
               if (at := self.ended_at(i)) is not None and at < before]
        for item in old:
            self.remove(item)
        return len(old)

    # ------------------------------------------------------------ reads

    def read(self, item: StoredItem, offset: int, limit: int) -> bytes:
        try:
            with self.path(item).open("rb") as handle:
                handle.seek(max(0, offset))
                return handle.read(max(0, limit))
        except FileNotFoundError:
            return b""

