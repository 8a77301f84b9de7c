"""Replicating task output and artifacts to the hash ring's preference list.

Theory of operation.  An *item* is one run's stdout or stderr, or one
artifact: ``(task id, epoch, name)``.  Its *ring key* is the task's ``--key``
for a ``--strategy hash`` task, else the task id; its *targets* are the first
``sched.replication`` live hosts of that key's preference list
(``agent/sched/ring.py``, dead hosts skipped).  Every host that holds an item
-- the host that ran it (its capture file is the *source*) and every replica
-- pushes it to each target it does not know to hold all of it:

* a target nobody has heard from gets a *probe* (an empty ``ReplicaChunk``);
  its ``ReplicaAck`` says how many bytes it holds and whether its copy is
  complete (the sender's SHA-256 matched);
* then chunks of ``CHUNK_BYTES`` follow from the acknowledged size, one in
  flight per target, the next sent as soon as the previous is acknowledged,
  so a running task's output reaches its replicas while it runs; a chunk not
  acknowledged within ``RESEND_AFTER`` is sent again (the transport drops
  rather than blocks), a refusal (a full disk, the cap) waits ``RETRY_AFTER``;
* when a target dies or leaves, the list of live hosts moves on to the next
  host, which gets probed and filled by every surviving holder: the count
  returns to the factor without anybody coordinating.  Writes are positional
  and idempotent, so two holders filling one target do no harm.

What a holder knows of a target comes from the target's acks, and from the
target's own chunks: a chunk that carries the item's ``total`` comes from a
holder of the whole item (its ``node``), so two replicas of a finished item
do not probe each other, nor the host that ran it, once they have heard from
it.  A round looks only at the items that may still need a send (*active*):
an item whose every target is known to hold all of it rests until its next
re-probe or until the list of live hosts changes (``view``), so a round's cost
follows what is moving, not everything held.

A short run's streams are mostly complete and empty before anything of them is
sent: the first probes of such items that one round sends to a target go as
one chunk (the first item; the run's other streams in ``more``, other runs'
items in ``others``) and come back as one ack; an older agent ignores the
extra fields and gets those items one by one when they are sent again.

A run of this host that ends with both streams complete and empty before any
of their bytes or probes left (most short tasks) takes them out of the protocol
(``quiet``): nothing of them is sent, stored or acknowledged anywhere, and the
committed finish says the run's output is empty (``artifacts.py``), so every host
answers reads of it from the task's record.  A stream that grew, or that a round
already probed somewhere while it ran, keeps the protocol above.

An item is *under-replicated* on this host while fewer of its targets are
known to hold it (this host counts when it is a target) than there are
targets -- ``report``'s ``under_replicated``.

Sans-IO: time is an argument, sending a callable, the disk the
``ReplicaStore``; ``agent/runtime/artifacts.py`` drives it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import TaskError
from agent.runtime.replica_messages import (
    EmptyItem,
    ItemRef,
    ReplicaAck,
    ReplicaChunk,
    ReplicaData,
    ReplicaItemInfo,
    ReplicaRead,
)
from agent.runtime.replica_store import (
    EMPTY_SHA256,
    ReplicaRefused,
    ReplicaStore,
    StoredItem,
    file_sha256,
)

CHUNK_BYTES = 256 * 1024
"""Bytes per pushed chunk (default 256 KiB): well under the transport's frame limit,
small enough that one slow target does not hold a big frame."""
RESEND_AFTER = 2.0
"""Seconds before an unacknowledged chunk or probe is sent again (default 2 s)."""
RETRY_AFTER = 5.0
"""Seconds before a target that refused a chunk (full disk, cap) is tried again."""
MAX_TICK_BYTES = 8 * 1024 * 1024
"""Bytes one tick may start sending (default 8 MiB); the rest waits for acks."""
REPROBE_AFTER = 600.0
"""Seconds after which a target known to hold an item is probed again (default
10 min): a copy lost on its disk is noticed and refilled, at one small message per
item and target per period."""
READ_LIMIT = 1024 * 1024
"""Largest slice one ``ReplicaRead`` returns."""
BATCH_ITEMS = 512
"""Complete, empty items one chunk carries at most (default 512, about 40 KB with
task ids of 36 characters): a bigger burst goes as several chunks, each far under
the transport's frame limit."""

QUIET_KEEP = 4096
"""Items that left the protocol empty (``Replicator.quiet``) this host still answers
reads of itself (default 4096, about 2,000 runs): the window until their finish is
committed, after which any host answers them from the task's record."""

ItemKey = tuple[str, int, str]
FOLDED = ("out", "err")
"""Item names whose first probes go together when complete and empty (a run's streams)."""


def _empty_done(item: StoredItem) -> bool:
    return item.complete and item.size == 0 and not item.error and item.sha256 == EMPTY_SHA256


@dataclass(slots=True)
class _Peer:
    """What this host knows of one target's copy of one item."""

    size: int = -1
    """Bytes the target acknowledged (-1: not heard from)."""
    complete: bool = False
    error: str = ""
    sent_at: float | None = None
    """When the chunk in flight left (None: nothing in flight)."""
    retry_at: float = 0.0
    acked_at: float = 0.0


@dataclass(slots=True)
class _Tracked:
    item: StoredItem
    peers: dict[str, _Peer] = field(default_factory=dict)


class Replicator:
    """Who holds what, and what to send next (see the module doc)."""

    def __init__(
        self,
        *,
        node_id: str,
        store: ReplicaStore,
        targets: Callable[[str], list[str]],
        send: Callable[[str, object], None],
        view: Callable[[], object] | None = None,
    ) -> None:
        """``targets(ring_key)``: the live preference list now; ``send(node, msg)``;
        ``view()``: a value that changes whenever ``targets`` may answer differently
        (None: unknown, so every round looks at every item)."""
        self.node_id = node_id
        self.store = store
        self._targets = targets
        self._send = send
        self._view = view
        self._view_seen: object = object()
        self._targets_cache: dict[str, list[str]] = {}
        self._tracked: dict[ItemKey, _Tracked] = {}
        self._active: dict[ItemKey, None] = {}
        """Items a round looks at (insertion-ordered)."""
        self._resting: list[tuple[float, ItemKey]] = []
        """Heap of (when to look again, item) for items every target holds."""
        self._quiet: dict[ItemKey, StoredItem] = {}
        """Items that left the protocol empty (``quiet``), newest last, at most
        ``QUIET_KEEP``."""
        self.quieted = 0
        """Items that left the protocol empty so far (a counter for tests and figures)."""
        self._round: dict[str, list[StoredItem]] | None = None
        """During a round: target -> complete, empty items whose first probe waits
        for the round's end (one chunk per target)."""
        for item in store.load():
            self._track(item)

    def _track(self, item: StoredItem) -> _Tracked:
        tracked = self._tracked[item.key] = _Tracked(item)
        self._active[item.key] = None
        return tracked

    def _targets_of(self, ring_key: str) -> list[str]:
        if self._view is None:
            return self._targets(ring_key)
        found = self._targets_cache.get(ring_key)
        if found is None:
            found = self._targets_cache[ring_key] = self._targets(ring_key)
        return found

    # ------------------------------------------------------------ local items

    def add_source(self, task_id: str, epoch: int, name: str, path: Path, ring_key: str) -> None:
        """A run of this host writes ``path``: replicate it while it grows."""
        item = StoredItem(task_id, epoch, name, ring_key, source=path)
        self.store.items[item.key] = item
        self._track(item)

    def finish_source(self, task_id: str, epoch: int, name: str, finished_at: float) -> None:
        tracked = self._tracked.get((task_id, epoch, name))
        if tracked is None or tracked.item.source is None:
            return
        item = tracked.item
        try:
            item.size = item.source.stat().st_size if item.source else 0
            item.sha256 = file_sha256(item.source, item.size) if item.source and item.size \
                else EMPTY_SHA256 if item.source else ""
        except OSError:
            item.size, item.sha256 = 0, hashlib.sha256().hexdigest()
        item.complete, item.finished_at = True, finished_at
        self._active[item.key] = None

    def quiet(self, task_id: str, epoch: int, names: tuple[str, ...]) -> bool:
        """Whether the run's items ``names`` are sources of this host, complete, empty
        and never sent anywhere: then they leave the protocol (no probe, chunk or ack
        for them, ever; the committed finish says they are empty) and are kept only in
        a bounded local table that answers reads until the finish is committed."""
        found = []
        for name in names:
            tracked = self._tracked.get((task_id, epoch, name))
            if tracked is None or tracked.item.source is None or tracked.peers \
                    or not _empty_done(tracked.item):
                return False
            found.append(tracked.item)
        if not found:
            return False
        for item in found:
            del self._tracked[item.key]
            self._active.pop(item.key, None)
            self.store.items.pop(item.key, None)
        self.keep_quiet(task_id, epoch, names, found[0].ring_key, found[0].finished_at or 0.0)
        return True

    def keep_quiet(self, task_id: str, epoch: int, names: tuple[str, ...], ring_key: str,
                   finished_at: float) -> None:
        """Items of a run of this host that ended empty without ever entering the
        protocol (``quiet`` without the items): only the bounded local table."""
        for name in names:
            item = StoredItem(task_id, epoch, name, ring_key, 0, True, EMPTY_SHA256,
                              finished_at=finished_at)
            self._quiet[item.key] = item
        while len(self._quiet) > QUIET_KEEP:
            del self._quiet[next(iter(self._quiet))]
        self.quieted += len(names)

    def put_local(self, item: StoredItem, data: bytes) -> None:
        """Store a whole item collected here (``ReplicaRefused`` with one line)."""
        self.store.put(item, data)
        self._track(item)

    def item(self, task_id: str, epoch: int, name: str) -> StoredItem | None:
        key = (task_id, epoch, name)
        tracked = self._tracked.get(key)
        # (an item the store dropped, e.g. evicted, is forgotten at its next round)
        if tracked is not None and tracked.item.key in self.store.items:
            return tracked.item
        return self._quiet.get(key)

    def items_of(self, task_id: str) -> list[StoredItem]:
        return [*(t.item for k, t in self._tracked.items()
                  if t.item.task_id == task_id and k in self.store.items),
                *(i for i in self._quiet.values() if i.task_id == task_id)]

    def prune(self, before: float) -> int:
        removed = self.store.prune(before)
        self._tracked = {k: t for k, t in self._tracked.items() if k in self.store.items}
        return removed

    # ------------------------------------------------------------ pushing

    def tick(self, now: float) -> None:
        """Send what each target lacks (bounded by ``MAX_TICK_BYTES``)."""
        self._wake(now)
        self._round = {}
        try:
            self._tick(now)
        finally:
            batches, self._round = self._round, None
            for node, items in batches.items():
                for start in range(0, len(items), BATCH_ITEMS):
                    self._send_batch(node, items[start:start + BATCH_ITEMS])

    def _tick(self, now: float) -> None:
        budget = MAX_TICK_BYTES
        for key in list(self._active):
            tracked = self._tracked.get(key)
            if tracked is None or key not in self.store.items:
                self._tracked.pop(key, None)
                self._active.pop(key, None)
                continue
            item = tracked.item
            if item.source is not None and not item.complete:
                try:
                    item.size = item.source.stat().st_size
                except OSError:
                    continue
            targets = self._targets_of(item.ring_key)
            for node in targets:
                if node != self.node_id:
                    budget -= self._maybe_send(tracked, node, now)
            self._maybe_rest(tracked, targets)
            if budget <= 0:
                return

    def _wake(self, now: float) -> None:
        """Make active what is due for a re-probe, or everything when the view moved."""
        view = self._view() if self._view is not None else object()
        if view != self._view_seen:
            self._view_seen = view
            self._targets_cache.clear()
            self._active.update(dict.fromkeys(self._tracked))
            self._resting.clear()
        while self._resting and self._resting[0][0] <= now:
            _, key = heapq.heappop(self._resting)
            if key in self._tracked:
                self._active[key] = None

    def _maybe_rest(self, tracked: _Tracked, targets: list[str]) -> None:
        """Leave the active set when every target holds the whole item."""
        item = tracked.item
        if not item.complete:
            return
        acked = []
        for node in targets:
            if node == self.node_id:
                continue
            peer = tracked.peers.get(node)
            if peer is None or peer.sent_at is not None or peer.error or not peer.complete \
                    or peer.size < item.size:
                return
            acked.append(peer.acked_at)
        del self._active[item.key]
        heapq.heappush(self._resting, (min(acked, default=0.0) + REPROBE_AFTER, item.key))

    def _maybe_send(self, tracked: _Tracked, node: str, now: float) -> int:
        peer = tracked.peers.setdefault(node, _Peer())
        if peer.sent_at is not None and now - peer.sent_at < RESEND_AFTER:
            return 0
        if peer.error and now < peer.retry_at:
            return 0
        item = tracked.item
        if peer.size >= 0 and peer.size >= item.size and (peer.complete or not item.complete):
            if now - peer.acked_at < REPROBE_AFTER:
                return 0
            peer.size = -1  # probe again: the copy may be gone
        return self._send_chunk(tracked, node, peer, now)

    def _send_chunk(self, tracked: _Tracked, node: str, peer: _Peer, now: float) -> int:
        item = tracked.item
        offset = max(0, peer.size)
        if self._round is not None and peer.size < 0 and peer.sent_at is None \
                and _empty_done(item):
            self._round.setdefault(node, []).append(item)  # goes at the round's end
            peer.sent_at = now
            return 0
        data = b"" if peer.size < 0 else self.store.read(item, offset, CHUNK_BYTES)
        done = item.complete and offset + len(data) >= item.size
        more = self._fold(tracked, node, peer, now)
        self._send(node, ReplicaChunk(
            item.task_id, item.epoch, item.name, offset, data,
            item.size if done else -1, item.sha256 if done else "", item.ring_key,
            item.finished_at or 0.0, item.error, self.node_id, more,
        ))
        peer.sent_at = now
        return len(data)

    def _send_batch(self, node: str, items: list[StoredItem]) -> None:
        """One chunk for a round's first probes of complete, empty items to ``node``."""
        first, rest = items[0], items[1:]
        more = tuple(i.name for i in rest
                     if (i.task_id, i.epoch) == (first.task_id, first.epoch))
        others = tuple(EmptyItem(i.task_id, i.epoch, i.name, i.ring_key, i.finished_at or 0.0)
                       for i in rest if (i.task_id, i.epoch) != (first.task_id, first.epoch))
        self._send(node, ReplicaChunk(
            first.task_id, first.epoch, first.name, 0, b"", 0, first.sha256, first.ring_key,
            first.finished_at or 0.0, "", self.node_id, more, others,
        ))

    def _fold(self, tracked: _Tracked, node: str, peer: _Peer, now: float) -> tuple[str, ...]:
        """The run's other streams that go with this first probe to ``node`` (each
        complete, empty, error-free and never sent there); marked sent."""
        if peer.size >= 0 or peer.sent_at is not None or not _empty_done(tracked.item):
            return ()
        more = []
        item = tracked.item
        for name in FOLDED:
            other = self._tracked.get((item.task_id, item.epoch, name))
            if other is None or other is tracked or not _empty_done(other.item):
                continue
            their = other.peers.setdefault(node, _Peer())
            if their.size < 0 and their.sent_at is None and not their.error:
                their.sent_at = now
                more.append(name)
        return tuple(more)

    def on_ack(self, msg: ReplicaAck, node: str, now: float) -> None:
        for name in msg.more:
            self.on_ack(ReplicaAck(msg.task_id, msg.epoch, name, 0, True, "", msg.node),
                        node, now)
        for ref in msg.others:
            self.on_ack(ReplicaAck(ref.task_id, ref.epoch, ref.name, 0, True, "", msg.node),
                        node, now)
        tracked = self._tracked.get((msg.task_id, msg.epoch, msg.name))
        if tracked is None:
            return
        peer = tracked.peers.setdefault(node, _Peer())
        peer.size, peer.complete, peer.error = msg.size, msg.complete, msg.error
        peer.sent_at, peer.acked_at = None, now
        self._active[tracked.item.key] = None
        if msg.error:
            peer.retry_at = now + RETRY_AFTER
            return
        if node in self._targets_of(tracked.item.ring_key):
            self._maybe_send(tracked, node, now)  # stream on without waiting for a tick

    # ------------------------------------------------------------ receiving

    def on_chunk(self, msg: ReplicaChunk, now: float | None = None) -> ReplicaAck:
        """Store a pushed chunk; the ack to send back.  With ``now``, a chunk that
        names its sender and the item's total tells that the sender holds it all."""
        try:
            item = self.store.item(msg.task_id, msg.epoch, msg.name, msg.ring_key)
        except TaskError as exc:
            return ReplicaAck(msg.task_id, msg.epoch, msg.name, 0, False, str(exc), self.node_id)
        error = ""
        if item.source is None:
            try:
                self.store.write_chunk(
                    item, msg.offset, msg.data, msg.total, msg.sha256,
                    msg.finished_at or None, msg.error,
                )
            except ReplicaRefused as exc:
                error = str(exc)
            if item.key in self.store.items and item.key not in self._tracked:
                self._track(item)
        tracked = self._tracked.get(item.key)
        if tracked is not None:
            self._active[item.key] = None
            if now is not None and msg.node and msg.node != self.node_id and msg.total >= 0:
                tracked.peers[msg.node] = _Peer(size=msg.total, complete=True, acked_at=now)
        return ReplicaAck(msg.task_id, msg.epoch, msg.name, item.size, item.complete, error,
                          self.node_id)

    def on_chunks(self, msg: ReplicaChunk, now: float) -> list[ReplicaAck]:
        """``on_chunk`` for the chunk and each item of its ``more``: the acks to send
        (the folded items that are now held complete ride on the first)."""
        ack = self.on_chunk(msg, now)
        if not msg.more and not msg.others:
            return [ack]
        held, refs, separate = [], [], []
        empty = dataclasses.replace(msg, offset=0, data=b"", total=0, sha256=EMPTY_SHA256,
                                    error="", more=(), others=())
        for name in msg.more:
            one = self.on_chunk(dataclasses.replace(empty, name=name), now)
            if one.complete and not one.error and one.size == 0:
                held.append(name)
            else:
                separate.append(one)
        for item in msg.others:
            one = self.on_chunk(dataclasses.replace(
                empty, task_id=item.task_id, epoch=item.epoch, name=item.name,
                ring_key=item.ring_key, finished_at=item.finished_at), now)
            if one.complete and not one.error and one.size == 0:
                refs.append(ItemRef(item.task_id, item.epoch, item.name))
            else:
                separate.append(one)
        return [dataclasses.replace(ack, more=tuple(held), others=tuple(refs)), *separate]

    def on_read(self, msg: ReplicaRead) -> ReplicaData:
        item = self.item(msg.task_id, msg.epoch, msg.name)
        if item is None:
            return ReplicaData(msg.request_id, msg.task_id, msg.epoch, msg.name, msg.offset,
                               b"", 0, False, False, "", "", False)
        data = b"" if item.key in self._quiet \
            else self.store.read(item, msg.offset, max(0, min(msg.limit, READ_LIMIT)))
        size = item.size
        if item.source is not None and not item.complete:
            size = max(size, msg.offset + len(data))
        return ReplicaData(msg.request_id, msg.task_id, msg.epoch, msg.name, msg.offset, data,
                           size, item.complete, True, item.sha256, item.error,
                           item.source is not None and not item.complete)

    def infos(self, task_id: str) -> tuple[ReplicaItemInfo, ...]:
        return tuple(
            ReplicaItemInfo(i.epoch, i.name, i.size, i.complete, i.sha256, i.error)
            for i in self.items_of(task_id)
        )

    # ------------------------------------------------------------ figures

    def holders(self, key: ItemKey) -> tuple[list[str], list[str]]:
        """(targets, the targets known to hold the item) of one item held here."""
        tracked = self._tracked[key]
        item = tracked.item
        targets = self._targets(item.ring_key)
        have = []
        for node in targets:
            if node == self.node_id:
                have.append(node)
                continue
            peer = tracked.peers.get(node)
            if peer is not None and peer.size >= item.size and (peer.complete or not item.complete):
                have.append(node)
        return targets, have

    def under_replicated(self) -> list[dict[str, object]]:
        """Items held here with fewer known holders than targets; ``error`` is the
        last refusal a target sent for it (one line, "" if none)."""
        out: list[dict[str, object]] = []
        for key in list(self._tracked):
            if key not in self.store.items:
                continue
            targets, have = self.holders(key)
            if len(have) < len(targets):
                task_id, epoch, name = key
                peers = self._tracked[key].peers
                error = next((peers[n].error for n in targets
                              if n in peers and peers[n].error), "")
                out.append({"task": task_id, "epoch": epoch, "item": name,
                            "holders": len(have), "want": len(targets), "error": error})
        return out
