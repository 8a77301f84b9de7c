"""Replicas at run time: the ``Replicator`` driven by a loop, reads through any host.

Theory of operation (the protocol is ``replication.py``'s, the disk
``replica_store.py``'s):

* a run that starts here registers its stdout/stderr capture files as items,
  so every ``TICK`` seconds what they grew by goes to the preference list of
  the task's ring key (``sched.replica_key``) among the live members, with
  ``sched.replication`` hosts (read from the replicated config each tick);
* a run's streams enter the protocol at the first round while it runs, or
  when a host asks for them (``ReplicaRead``, ``ReplicaListRequest``, a read
  here): a run that ends before either, with nothing written (the executor's
  ``silent``), never builds an item at all;
* when the run ends (failed runs too) its streams are marked complete with
  their SHA-256, its artifacts are collected from its working directory as
  its user (``artifact_collect.py``, in a worker thread) and stored here as
  items -- a refused artifact as an item holding its one-line error -- and
  the hosts of the list are named in the committed finish;
* a run whose streams both end empty before anything of them was sent
  (``Replicator.quiet``) replicates nothing of them: the finish's replica list
  carries the marker ``empty:<epoch>`` (``QUIET_PREFIX``; the older quiet runs'
  markers of the record are carried on, up to the list's bound), and any host
  answers a read or listing of those streams from the record, also once the
  run's host is gone.  ``replicas`` is a list of opaque strings to the state
  machine, so every release applies such a finish alike (byte-identical state);
  the markers are written only once every member reads them
  (``compat.QUIET_RELEASE``), older agents getting the streams as before;
* a read (``logs``, ``artifacts``) is served from this host's copy, else
  asked of every live host that may hold one (the run's host, the recorded
  replicas, the key's preference list one host longer than the factor) at
  once; the fullest answer within ``timeout`` wins;
* ``prune`` drops finished items on this host and asks every live member to
  do the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.runtime.artifact_collect import collect
from agent.runtime.replica_messages import (
    ReplicaAck,
    ReplicaChunk,
    ReplicaData,
    ReplicaItemInfo,
    ReplicaList,
    ReplicaListRequest,
    ReplicaPrune,
    ReplicaRead,
)
from agent.runtime.replica_store import EMPTY_SHA256, ReplicaRefused, ReplicaStore, StoredItem
from agent.runtime.replication import Replicator
from agent.sched import HashRing, SchedConfig, replica_key
from agent.state.commands import MAX_REPLICAS
from agent.state.tasks import TaskRecord
from agent.swim.members import MemberView

log = logging.getLogger(__name__)

QUIET_PREFIX = "empty:"
"""A finish's replica-list entry ``empty:<epoch>``: that run's stdout and stderr are
both empty and were never replicated (not a node id: those are 32 hex digits)."""
MAX_MARKERS = MAX_REPLICAS
"""Entries one finish's replica list holds at most (the command's bound): the
newest quiet runs' markers are kept when targets and markers would exceed it."""
TICK = 0.25
"""Seconds between replication rounds (default 0.25 s): how far a replica of a
running task's output lags behind it, at most, on an idle link."""
STREAMS = ("out", "err")


def quiet_marker(epoch: int) -> str:
    return f"{QUIET_PREFIX}{int(epoch)}"


def is_quiet(rec: TaskRecord, epoch: int, name: str) -> bool:
    """Whether ``rec``'s committed finishes say attempt ``epoch``'s stream ``name``
    is empty (its marker is in the record's replica list)."""
    return name in STREAMS and quiet_marker(epoch) in rec.replicas


def quiet_epochs(replicas: Iterable[object]) -> list[int]:
    """The attempts a replica list marks quiet (``empty:<epoch>``), in list order."""
    return [int(m[len(QUIET_PREFIX):]) for m in replicas
            if isinstance(m, str) and m.startswith(QUIET_PREFIX)
            and m[len(QUIET_PREFIX):].isdigit()]


def shown_record(record: dict[str, Any]) -> dict[str, Any]:
    """``task.get``'s record as a user reads it: ``replicas`` names hosts only, and the
    quiet runs' markers become ``empty_outputs`` (the attempts whose stdout and stderr
    were both empty, answered from the record)."""
    replicas = record.get("replicas") or []
    markers = [r for r in replicas if isinstance(r, str) and r.startswith(QUIET_PREFIX)]
    if not markers:
        return {**record, "empty_outputs": []}
    hosts = [r for r in replicas if r not in markers]
    return {**record, "replicas": hosts, "empty_outputs": sorted(quiet_epochs(markers))}


def replica_list(targets: list[str], rec: TaskRecord, epoch: int, quiet: bool) -> list[str]:
    """A finish's replica list: ``targets``, this run's marker when ``quiet``, and the
    record's older markers (newest kept first when over ``MAX_MARKERS``)."""
    markers = [m for m in rec.replicas
               if m.startswith(QUIET_PREFIX) and m != quiet_marker(epoch)]
    if quiet:
        markers.append(quiet_marker(epoch))
    room = max(0, MAX_MARKERS - len(targets))
    return [*targets, *markers[len(markers) - room:]] if markers else targets


class ReplicaService:
    """This host's replicas: pushing, serving, collecting, reading remote copies."""

    def __init__(
        self,
        *,
        node_id: str,
        node_name: str,
        root: Path,
        members: Callable[[], list[MemberView]],
        sched_config: Callable[[], SchedConfig],
        send_to_node: Callable[[str, object], None],
        send_to_addr: Callable[[str, object], None],
        records: Callable[[str], TaskRecord | None],
        timeout: float = 3.0,
        cap_bytes: int | None = None,
        artifact_limit: int | None = None,
        quiet_allowed: Callable[[], bool] | None = None,
    ) -> None:
        """``timeout``: seconds a remote read waits (runtime.output_timeout);
        ``quiet_allowed()``: whether every member reads a finish's ``empty:<epoch>``
        markers (None: yes), else a quiet run's streams are replicated as before."""
        limits: dict[str, int] = {}
        if cap_bytes is not None:
            limits["cap_bytes"] = cap_bytes
        if artifact_limit is not None:
            limits["artifact_limit"] = artifact_limit
        self.store = ReplicaStore(root, node_name, **limits)
        self.node_id = node_id
        self._members = members
        self._sched_config = sched_config
        self._send_to_node = send_to_node
        self._send_to_addr = send_to_addr
        self._timeout = timeout
        self._quiet_allowed = quiet_allowed
        self.task_record = records
        """The replicated task record of an id (None: no such task)."""
        self._ring: HashRing | None = None
        self._alive: frozenset[str] = frozenset()
        self._factor = 3
        self._view = 0
        """Bumped whenever the ring, the live hosts or the factor change."""
        self.refresh_view()
        self.replicator = Replicator(
            node_id=node_id, store=self.store, targets=self.targets, send=send_to_node,
            view=lambda: self._view,
        )
        self._pending: dict[tuple[str, int], tuple[str, Callable[[str], Path]]] = {}
        """Runs of this host whose streams have not entered the protocol yet:
        (task id, epoch) -> (ring key, capture path of a stream)."""
        self._acks: list[tuple[str, ReplicaAck]] = []
        """Acks of this event-loop pass's chunks, sent once their .meta are written."""
        self._ids = itertools.count(1)
        self._waiters: dict[int, tuple[int, list[object], asyncio.Event]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the ring

    def refresh_view(self) -> None:
        """Read the members and the factor once (for one tick's many lookups)."""
        cfg = self._sched_config()
        members = [m for m in self._members() if m.state != "left"]
        ids = frozenset(m.id for m in members) | {self.node_id}
        if self._ring is None or self._ring.nodes != ids or self._ring.vnodes != cfg.vnodes:
            self._ring = HashRing(ids, cfg.vnodes)
            self._view += 1
        alive = frozenset(m.id for m in members if m.state == "alive") | {self.node_id}
        if alive != self._alive or cfg.replication != self._factor:
            self._view += 1
        self._alive, self._factor = alive, cfg.replication

    def targets(self, ring_key: str, extra: int = 0) -> list[str]:
        """The first ``sched.replication`` (+ ``extra``) live hosts of ``ring_key``'s list."""
        assert self._ring is not None
        return self._ring.preference_list(ring_key, self._factor + extra,
                                          self._alive.__contains__)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="replicas")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.refresh_view()
                for run in list(self._pending):
                    self._enter(*run)
                self.replicator.tick(time.time())
            except Exception:
                log.exception("replication round failed")

    # ------------------------------------------------------------ runs of this host

    def run_started(self, rec: TaskRecord, epoch: int, path_of: Callable[[str], Path]) -> None:
        """A run of this host started: its streams enter the protocol at the next round
        (or a read), as the round would send their first bytes then anyway."""
        self._pending[(rec.id, epoch)] = (replica_key(rec.id, rec.key, rec.strategy), path_of)

    def _enter(self, task_id: str, epoch: int) -> None:
        """A pending run's streams become items of the protocol (module doc)."""
        pending = self._pending.pop((task_id, epoch), None)
        if pending is not None:
            key, path_of = pending
            for stream in STREAMS:
                self.replicator.add_source(task_id, epoch, stream, path_of(stream), key)

    def _enter_task(self, task_id: str) -> None:
        for run in [r for r in self._pending if r[0] == task_id]:
            self._enter(*run)

    async def run_finished(
        self, rec: TaskRecord | None, task_id: str, epoch: int, workdir: Path | None,
        user: tuple[int, int] | None, silent: bool = False,
    ) -> list[str]:
        """Complete the run's streams, collect its artifacts; the finish's replica list
        (the hosts that get them, and the quiet runs' markers).  ``silent``: the
        executor saw neither stream write a byte."""
        now = time.time()
        quiet = self._finish_streams(rec, task_id, epoch, silent, now)
        if rec is None:
            return []
        key = replica_key(rec.id, rec.key, rec.strategy)
        if rec.artifacts and workdir is not None:
            found = await asyncio.to_thread(
                collect, workdir, list(rec.artifacts), self.store.artifact_limit, user
            )
            for got in found:
                self._keep_artifact(StoredItem(task_id, epoch, f"a:{got.name}", key,
                                               error=got.error, finished_at=now), got.data)
            self.refresh_view()  # (else the last round's view: at most a TICK old)
        return self._finish_replicas(rec, epoch, quiet)

    def run_finished_now(
        self, rec: TaskRecord | None, task_id: str, epoch: int, silent: bool = False,
    ) -> list[str] | None:
        """``run_finished`` for a run without artifacts, at once (nothing to await);
        None for a run with artifacts (``run_finished`` collects them)."""
        if rec is not None and rec.artifacts:
            return None
        quiet = self._finish_streams(rec, task_id, epoch, silent, time.time())
        return [] if rec is None else self._finish_replicas(rec, epoch, quiet)

    def _finish_replicas(self, rec: TaskRecord, epoch: int, quiet: bool) -> list[str]:
        """The finish's replica list (``replica_list``) on the run's replica key."""
        return replica_list(self.targets(replica_key(rec.id, rec.key, rec.strategy)),
                            rec, epoch, quiet)

    def _finish_streams(
        self, rec: TaskRecord | None, task_id: str, epoch: int, silent: bool, now: float,
    ) -> bool:
        """Complete the run's streams; whether they left the protocol empty (quiet)."""
        allowed = rec is not None and (self._quiet_allowed is None or self._quiet_allowed())
        if silent and allowed and (task_id, epoch) in self._pending:
            key, _ = self._pending.pop((task_id, epoch))
            self.replicator.keep_quiet(task_id, epoch, STREAMS, key, now)
            return True
        self._enter(task_id, epoch)
        for stream in STREAMS:
            self.replicator.finish_source(task_id, epoch, stream, now)
        return allowed and self.replicator.quiet(task_id, epoch, STREAMS)

    def _keep_artifact(self, item: StoredItem, data: bytes) -> None:
        try:
            self.replicator.put_local(item, data)
        except ReplicaRefused as exc:
            log.warning("task %s: %s", item.task_id, exc)
            failed = StoredItem(item.task_id, item.epoch, item.name, item.ring_key,
                                error=str(exc), finished_at=item.finished_at)
            with contextlib.suppress(ReplicaRefused):
                self.replicator.put_local(failed, b"")
        if item.error:
            log.warning("task %s: %s", item.task_id, item.error)

    # ------------------------------------------------------------ peers

    def on_message(self, from_addr: str, msg: object) -> None:
        match msg:
            case ReplicaChunk():
                self._on_chunk(from_addr, msg)
            case ReplicaAck():
                self.replicator.on_ack(msg, msg.node, time.time())
            case ReplicaRead():
                self._enter(msg.task_id, msg.epoch)
                self._send_to_addr(from_addr, self.replicator.on_read(msg))
            case ReplicaListRequest():
                self._enter_task(msg.task_id)
                self._send_to_addr(from_addr, ReplicaList(
                    msg.request_id, msg.task_id, self.replicator.infos(msg.task_id)))
            case ReplicaData() | ReplicaList():
                self._answer(msg.request_id, msg)
            case ReplicaPrune():
                removed = self.replicator.prune(msg.before)
                log.info("pruned %d replica item(s) finished before %.0f", removed, msg.before)

    def _on_chunk(self, from_addr: str, msg: ReplicaChunk) -> None:
        """Store a chunk; its ack goes at the end of this pass of the event loop, after
        the .meta files of the pass's chunks are written (one per run)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and not self._acks:
            self.store.defer_meta = True
            loop.call_soon(self._send_acks)
        for ack in self.replicator.on_chunks(msg, time.time()):
            if loop is None:
                self._send_to_addr(from_addr, ack)
            else:
                self._acks.append((from_addr, ack))

    def _send_acks(self) -> None:
        acks, self._acks = self._acks, []
        self.store.defer_meta = False
        failed = self.store.flush_meta()
        for addr, ack in acks:
            if (ack.task_id, ack.epoch) in failed:  # unacked: the holder sends again
                continue
            if failed and ack.others:
                ack = dataclasses.replace(ack, others=tuple(
                    r for r in ack.others if (r.task_id, r.epoch) not in failed))
            self._send_to_addr(addr, ack)

    def _answer(self, request_id: int, msg: object) -> None:
        waiter = self._waiters.get(request_id)
        if waiter is not None:
            waiter[1].append(msg)
            if len(waiter[1]) >= waiter[0]:
                waiter[2].set()

    async def _ask(self, nodes: list[str], make: Callable[[int], object]) -> list[object]:
        """Send ``make(request id)`` to every node; the answers within the timeout."""
        if not nodes:
            return []
        request_id = next(self._ids)
        answers: list[object] = []
        done = asyncio.Event()
        self._waiters[request_id] = (len(nodes), answers, done)
        try:
            for node in nodes:
                self._send_to_node(node, make(request_id))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self._timeout)
        finally:
            self._waiters.pop(request_id, None)
        return answers

    def candidates(self, rec: TaskRecord) -> list[str]:
        """Live hosts other than this one that may hold a copy of ``rec``'s items."""
        self.refresh_view()
        key = replica_key(rec.id, rec.key, rec.strategy)
        nodes = [rec.node, *(n for n in rec.replicas if not n.startswith(QUIET_PREFIX)),
                 *self.targets(key, extra=1)]
        seen: list[str] = []
        for node in nodes:
            if node and node != self.node_id and node in self._alive and node not in seen:
                seen.append(node)
        return seen

    # ------------------------------------------------------------ reads

    async def read(
        self, rec: TaskRecord, epoch: int, name: str, offset: int, limit: int
    ) -> ReplicaData | None:
        """A slice of one item from this host or the fullest remote copy (None: nowhere);
        a quiet run's stream from the record."""
        if is_quiet(rec, epoch, name):
            return ReplicaData(0, rec.id, epoch, name, offset, b"", 0, True, True,
                               EMPTY_SHA256, "", False)
        self._enter(rec.id, epoch)
        local = self.replicator.on_read(ReplicaRead(0, rec.id, epoch, name, offset, limit))
        if local.found and (local.complete or local.live):
            return local
        answers = await self._ask(self.candidates(rec), lambda rid: ReplicaRead(
            rid, rec.id, epoch, name, offset, limit))
        found = [a for a in answers if isinstance(a, ReplicaData) and a.found]
        if local.found:
            found.append(local)
        if not found:
            return None
        return max(found, key=lambda a: (a.live, a.complete, a.size))

    async def listing(self, rec: TaskRecord) -> list[dict[str, Any]]:
        """Every item any reachable holder has of ``rec`` (the most complete copy each)."""
        best: dict[tuple[int, str], dict[str, Any]] = {}
        self._enter_task(rec.id)
        infos = list(self.replicator.infos(rec.id))
        infos += [ReplicaItemInfo(epoch, name, 0, True, EMPTY_SHA256, "")
                  for epoch in quiet_epochs(rec.replicas) for name in STREAMS]
        answers = await self._ask(self.candidates(rec),
                                  lambda rid: ReplicaListRequest(rid, rec.id))
        for answer in answers:
            if isinstance(answer, ReplicaList):
                infos.extend(answer.items)
        for info in infos:
            row = {"epoch": info.epoch, "name": info.name, "size": info.size,
                   "complete": info.complete, "sha256": info.sha256, "error": info.error}
            old = best.get((info.epoch, info.name))
            if old is None or (info.complete, info.size) > (old["complete"], old["size"]):
                best[(info.epoch, info.name)] = row
        return [best[k] for k in sorted(best)]

    def prune(self, before: float) -> int:
        """Prune here and ask every live member to; items removed here."""
        self.refresh_view()
        for node in self._alive:
            if node != self.node_id:
                self._send_to_node(node, ReplicaPrune(before))
        return self.replicator.prune(before)

    def under_replicated(self) -> list[dict[str, object]]:
        self.refresh_view()
        return self.replicator.under_replicated()
