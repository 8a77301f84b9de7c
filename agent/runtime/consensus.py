"""The Raft driver: ticks, the Ready loop, proposals, linearizable reads, forwarding.

The loop is etcd's: persist (append + one fsync for everything gathered since
the last one: group commit) → send → apply → advance.  While an fsync runs
the next proposals and messages queue up -- in the core while it runs in a
worker thread (a slow disk), in the sockets while it runs inline (a disk
that syncs in under a millisecond; see ``storage_io``) -- so the next Ready
carries all of them and one fsync covers them.

A leader sends its Ready's messages *before* its own fsync, so followers
write and fsync the new entries while the leader does (Raft thesis §10.2.1,
what etcd's raft does).  This is safe because none of those messages depends
on the leader's copy of the new entries: the core counts the leader towards
a commit quorum only for entries it has persisted (``advance``), so no commit
index it sends, and nothing it acknowledges or applies, can rest on a
non-durable local entry.  Everything else still waits for the fsync: a Ready
that changes the term or vote (vote requests and grants depend on it), one
with a snapshot, and every Ready of a follower or candidate (append acks
depend on the entries being on disk).  Apply always follows the fsync.

Pending writes wait on a bare future; one sweep per tick fails those past
``runtime.commit_timeout`` instead of a timer (and a shield) per write, which cost
about a tenth of the leader's CPU at saturation.

Writes: on the leader, ``propose`` appends and waits until the entry is
applied; on a follower the encoded command is forwarded to the leader
(``ForwardPropose``) and the leader answers with the apply result.

A write on a node that knows no working leader -- the cluster is forming,
or electing after the leader died -- waits for one up to the request timeout
(``leader_wait.py``), instead of failing; only a real minority fails at once
with ``NoQuorumError`` (exit code 3 in the CLI).  A write forwarded to a
leader that is replaced (``leader_id`` names another node) is sent again to
the new one; its command carries the client's ``rid``, so a copy the old
leader got committed makes the second one a no-op (StateMachine's rid
cache), and a command without a rid is never sent twice.  A write not
committed within ``commit_timeout`` fails with ``NoQuorumError`` too.

Reads: ``read_barrier`` runs ReadIndex (the core forwards it to the leader
from followers) and waits until the local state machine has applied that
index: a linearizable read from any node.

Disk full: a Ready that does not fit on disk is kept and retried until it
does, with Raft paused here meanwhile (no acks, no votes, a leader hands
off, writes go to the leader elsewhere); see ``diskfull.py``.

Bootstrap: a node with an empty log stays a non-voting nobody until either a
leader adds it (as a learner) or, after ``bootstrap_grace`` seconds with no
member advertising a Raft role, it is the smallest alive node id and founds
the cluster with an odd number of the alive members as voters
(``bootstrap.founding_voters``: never two); the leader's autopilot then adds
everyone else as learners and promotes caught-up learners up to ``max_voters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

from agent.errors import (
    LocalError,
    NoQuorumError,
    StorageError,
)
from agent.metrics.trackers import LeaderTerms
from agent.raft.confchange import plan_voter_changes
from agent.raft.core import RaftNode, bootstrap_state
from agent.raft.messages import EntryKind, Ready, Role
from agent.raft.storage import Storage
from agent.runtime import recovery
from agent.runtime.compat import ReleaseGate
from agent.runtime.consensus_requests import ClientRequests, PendingWrite
from agent.runtime.consensus_views import ConsensusViews
from agent.runtime.diskfull import DiskFullMode, fatal_line, is_disk_full
from agent.runtime.forwarding import Forwarder
from agent.runtime.leader_wait import LeaderWait
from agent.runtime.ready_writer import ReadyWriter
from agent.runtime.storage_io import StorageIO
from agent.state.machine import ApplyResult, StateMachine

log = logging.getLogger(__name__)

CAUGHT_UP_LAG = 20
"""A learner within this many entries of the leader's last index may be promoted."""


def _publish_nowhere(topic: str, data: dict[str, Any]) -> None:
    """Events before ``connect``: nobody listens yet."""


def _ignore_applied(index: int, result: ApplyResult) -> None:
    """Applied entries before ``connect``."""


def _ignore_role(role: str) -> None:
    """Role changes before ``connect``."""


def _never() -> bool:
    return False


def _wants_everything(topic: str) -> bool:
    return True


class ConsensusDriver(ConsensusViews, ClientRequests):
    """Drives one RaftNode over the runtime's transport; owns storage and the state machine."""

    def __init__(
        self,
        *,
        config: Any,
        node_id: str,
        data_dir: str,
        send: Callable[[str, object], None],
        on_unrepairable: Callable[[str], None] | None = None,
    ) -> None:
        """``send(node_id, msg)`` reaches a peer (the router); ``on_unrepairable(line)``
        is called once if damaged storage is not repaired in time (recovery.py).
        Opens the WAL and restores the state: ``close()`` even if never started."""
        self.config = config
        self._commit_timeout = config.runtime.commit_timeout
        self._read_timeout = config.runtime.read_timeout
        self._leader_lost_spread = config.runtime.leader_lost_spread
        self.raft_config = config.raft
        self.node_id = node_id
        self._storage = Storage.open(os.path.join(data_dir, "raft"), self.raft_config.segment_bytes)
        self._io = StorageIO(self._storage)
        self._state = StateMachine()
        self._send = send
        # Listeners (``connect``): the components they feed are built after this one.
        self._publish: Callable[[str, dict[str, Any]], None] = _publish_nowhere
        self._on_applied: Callable[[int, ApplyResult], None] = _ignore_applied
        self._on_role_change: Callable[[str], None] = _ignore_role
        # Does anyone follow this event topic?  Lets the apply loop skip building
        # events (and the state machine its summaries) nobody will read.
        self._wants: Callable[[str], bool] = _wants_everything
        self._rng = random.Random()
        restored = self._storage.load()
        if restored.snapshot is not None:
            self._state.restore(restored.snapshot.data)
        self._node = RaftNode(self.raft_config, node_id, restored, self._rng)
        self.data_dir = data_dir
        self._on_unrepairable = on_unrepairable
        if restored.damaged:
            if self._node.conf.voters == (node_id,):
                raise StorageError(recovery.only_voter_refusal(restored.damaged, data_dir))
            log.error(
                "storage damaged: %s; not voting or acknowledging until the leader repairs this node",
                restored.damaged,
            )
        self._pending: dict[int, PendingWrite] = {}
        self._queued_writes = []  # client writes for this pass's group commit
        self._batches_allowed: Callable[[], bool] = lambda: True  # see use_batch_gate
        self._compact_allowed: Callable[[], bool] = lambda: True
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._forwarder = Forwarder(
            answer_within=self._commit_timeout + 1.0, resend_after=config.runtime.forward_resend
        )
        self._known_leader = ""
        """The leader last seen in the core: a change wakes writes waiting for one."""
        self._leader_wait = LeaderWait(
            node_id, self._core, self.raft_config.election_timeout,
            self.raft_config.election_ticks, self._commit_timeout,
        )
        self._heard = self._leader_wait.heard
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._role = ""
        self.elections = 0
        self.commit_latencies: list[float] = []
        self.leader_terms = LeaderTerms()
        """Term changes in the applied log: the cluster's leader changes (agent/metrics)."""
        self._started_at = 0.0
        """Loop time of ``start()``: a damaged node gives up ``repair_wait`` after it."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The running loop, once started (spares a lookup per write)."""
        self._applied_at = 0.0
        """Loop time when the current Ready's entries are applied (commit latencies)."""
        hs = restored.hard_state
        # (term, vote) last fsynced: a leader may send before its fsync only
        # when its Ready does not change them.
        self._durable_term_vote = (hs.term, hs.vote)
        self.disk_full = DiskFullMode(
            name=str(getattr(config, "name", "") or node_id),
            node_id=node_id,
            directory=str(self._storage.dir),
            election_timeout=float(self.raft_config.election_timeout),
            core=self._core,
            send=send,
            publish=self._publish_alarm,
            role_name=self.role_name,
            report_role=self.report_role,
            fail_writes=self._fail_writes,
            core_reads=self._reads,
            applied_index=self._applied_index,
        )
        """Disk-full alarms, and Raft paused while the WAL does not fit (diskfull.py)."""
        self._writer = ReadyWriter(self._storage, self._io, self.disk_full, send, self._state)
        """Makes each Ready durable (ready_writer.py)."""

    def connect(
        self,
        *,
        publish: Callable[[str, dict[str, Any]], None],
        wants: Callable[[str], bool],
        on_applied: Callable[[int, ApplyResult], None],
        on_role_change: Callable[[str], None],
    ) -> None:
        """Attach the listeners, before ``start``: ``publish(topic, data)`` control
        events (``wants(topic)``: does anyone follow it), ``on_applied(index,
        result)`` after each applied entry, ``on_role_change(role)`` when this
        node's Raft role changes.  Until then events go nowhere."""
        self._publish = publish
        self._wants = wants
        self._on_applied = on_applied
        self._on_role_change = on_role_change

    # ------------------------------------------------------------ leadership

    def transfer_leadership(self, to: str) -> None:
        """Leader only: hand leadership to voter ``to`` (``NotLeaderError``/``LocalError``)."""
        self._node.transfer_leadership(to)
        self.wake()

    def use_reachability(self, reachable: Callable[[str], bool]) -> None:
        """The link layer's "do we reach this voter now" for the minority rule
        (leader_wait.py); the composition root passes the router's."""
        self._leader_wait.reachable = reachable

    def use_batch_gate(self, allowed: Callable[[], bool]) -> None:
        """Whether every member applies ``batch`` entries now (``runtime/compat.py``:
        during a rolling upgrade from a release without them, the group commit
        proposes each write as itself).  A ``ReleaseGate`` also says when they
        apply ``kv.puts`` (its ``compact``); any other gate means they may not."""
        self._batches_allowed = allowed
        self._compact_allowed = allowed.compact if isinstance(allowed, ReleaseGate) else _never

    async def leader_gone(self, leader: str) -> None:
        """``leader``'s port refuses connections (leader_loss.py): forget it, which
        ends its lease here, and campaign after a random delay of up to
        ``runtime.leader_lost_spread`` unless a leader appeared meanwhile."""
        if self._node.leader_id != leader or self.disk_full.paused:
            return
        self._node.leader_lost()
        self.wake()
        await asyncio.sleep(self._rng.uniform(0.0, self._leader_lost_spread))
        self._node.campaign()
        self.wake()

    def _core(self) -> RaftNode:
        return self._node

    def _applied_index(self) -> int:
        return self._state.applied_index

    def _publish_alarm(self, data: dict[str, Any]) -> None:
        self._publish("consensus", data)

    def _fail_writes(self, error: Callable[[], BaseException]) -> None:
        """Fail every write waiting for its commit with ``error()`` (disk full)."""
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(error())
        self._pending.clear()

    # ------------------------------------------------------------ lifecycle

    @property
    def bootstrapped(self) -> bool:
        # A damaged node never founds a cluster: it waits for the one it belonged to.
        return bool(self._node.conf.voters) or self._node.commit_index > 0 or bool(self._node.damaged)

    def bootstrap(self, voters: list[str]) -> None:
        """Found a new cluster with ``voters`` (this node among them; see the
        module doc and ``bootstrap.founding_voters``)."""
        assert not self.bootstrapped and self.node_id in voters
        restored = bootstrap_state(voters)
        try:
            self._storage.append(list(restored.entries), restored.hard_state)
            self._storage.sync()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.disk_full.raise_alarm("bootstrap", exc)  # the autopilot loop tries again
            return
        self.disk_full.clear_alarm("bootstrap")
        self._durable_term_vote = (restored.hard_state.term, restored.hard_state.vote)
        self._node = RaftNode(self.raft_config, self.node_id, restored, self._rng)
        log.info("founded a new cluster with voters %s", ", ".join(sorted(voters)))
        self.wake()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started_at = self._loop.time()
        self._tasks = [
            asyncio.create_task(self._tick_loop(), name="raft-tick"),
            asyncio.create_task(self._ready_loop(), name="raft-ready"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._io.drain()
        for *_, queued in self._queued_writes:
            if not queued.done():
                queued.set_exception(NoQuorumError("agent is shutting down"))
        self._queued_writes.clear()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(NoQuorumError("agent is shutting down"))
        self._forwarder.fail_all(lambda: NoQuorumError("agent is shutting down"))
        if self.disk_full.unwritten:
            # A write that did not fit was never acknowledged; closing would write a
            # clean-stop ack slot covering it (Storage counts it as appended), so
            # recovery would report it lost.  The last sync's slot stands instead.
            log.warning("stopping with the disk full: the WAL keeps what its last sync made durable")
            return
        try:
            self._storage.close()
        except OSError as exc:
            log.error("closing the WAL: %s", fatal_line(exc, str(self._storage.dir)))

    def wake(self) -> None:
        self._wakeup.set()

    # ------------------------------------------------------------ loops

    async def _tick_loop(self) -> None:
        interval = self.raft_config.tick_interval
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            self._leader_wait.ticks += 1
            if not self.disk_full.paused:  # paused: the core stands still (diskfull.py)
                self._node.tick()
            self.wake()
            if self._node.damaged and loop.time() - self._started_at > self.raft_config.repair_wait:
                self._give_up_repair()
            self._expire_waiters(loop.time())

    def _expire_waiters(self, now: float) -> None:
        """Fail writes (local and forwarded) whose deadline passed.

        ``_pending`` is in insertion order and every deadline is insertion time
        plus one constant, so the sweep stops at the first live one."""
        while self._pending:
            index, pending = next(iter(self._pending.items()))
            if pending.started + self._commit_timeout > now and not pending.future.done():
                break
            del self._pending[index]
            if not pending.future.done():
                pending.future.set_exception(
                    NoQuorumError(f"write not committed within {self._commit_timeout:.0f}s")
                )
        self._forwarder.expire(now)

    async def _ready_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                unsaved = self.disk_full.snapshot_due(time.monotonic())
                if unsaved is not None:
                    await self._writer.persist_snapshot(unsaved)
                while (rd := self._node.ready()) is not None:
                    await self._handle_ready(rd)
                if self._node.leader_id != self._known_leader:
                    self._leader_changed(self._node.leader_id)
            except Exception as exc:
                # A storage failure other than a full disk must stop the node:
                # continuing could ack writes that are not durable.
                log.critical("%s", fatal_line(exc, str(self._storage.dir)))
                log.debug("the failure in the Raft ready loop", exc_info=True)
                os._exit(70)

    def _give_up_repair(self) -> None:
        line = recovery.unrepaired_refusal(self._node.damaged, self.data_dir, self.raft_config.repair_wait)
        if self._on_unrepairable is not None:
            self._on_unrepairable(line)
            self._on_unrepairable = None

    async def _handle_ready(self, rd: Ready) -> None:
        send_first = rd.must_sync and self._may_send_before_sync(rd)
        await self._writer.persist(rd, send_first)
        if rd.snapshot is not None and rd.snapshot.index > self._state.applied_index:
            self._state.restore(rd.snapshot.data)
        if rd.must_sync and rd.hard_state is not None:
            self._durable_term_vote = (rd.hard_state.term, rd.hard_state.vote)
        if not send_first:
            for msg in rd.messages:
                self._send(msg.to, msg)
        if rd.committed_entries:
            # What nobody here follows is not built (the publish below checks the
            # same topics, with no await between: a subscriber cannot slip in).
            self._state.summaries = self._wants("consensus")
            self._state.tasks.rows = self._wants("tasks")
            self._applied_at = asyncio.get_running_loop().time()
        for entry in rd.committed_entries:
            self._apply(entry.index, entry.term, entry.kind, entry.data)
        for rs in rd.read_states:
            fut = self._reads.pop(rs.ctx, None)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)
        for event in rd.events:
            self._publish_event(event)
        self._node.advance(rd)
        self._release_apply_waiters()
        self._check_role()
        if self._node.should_snapshot():
            snap = self._node.compact(self._state.applied_index, self._state.snapshot())
            await self._writer.persist_snapshot(snap)

    def _may_send_before_sync(self, rd: Ready) -> bool:
        """A leader's Ready that changes neither term nor vote and holds no snapshot:
        its messages (appends, heartbeats, read answers) do not depend on the
        entries this Ready persists (see the module doc)."""
        if self._node.role != Role.LEADER or rd.snapshot is not None:
            return False
        hs = rd.hard_state
        return hs is None or (hs.term, hs.vote) == self._durable_term_vote

    def _apply(self, index: int, term: int, kind: EntryKind, data: bytes) -> None:
        if index <= self._state.applied_index:
            return
        self.leader_terms.observe(index, term)
        pending = self._pending.pop(index, None)
        if kind == EntryKind.NORMAL:
            # Same index and term as our proposal: by Log Matching this entry is
            # the command we encoded, so its decoded form (if kept) can be used.
            if pending is not None and pending.term == term:
                result = self._state.apply(index, data, pending.decoded, pending.parts)
            else:  # nobody here waits for its value: a kv.puts builds no rows
                result = self._state.apply(index, data, answer=pending is not None)
        else:
            self._state.applied_index = index
            summary = "no-op (new leader)" if kind == EntryKind.EMPTY else "membership change"
            event = {"topic": "consensus", "data": {"kind": "entry", "summary": summary}}
            result = ApplyResult(True, None, None, [event])
        if pending is not None and not pending.future.done():
            if pending.term == term:
                self._resolve(pending, result)
            else:
                pending.future.set_exception(
                    NoQuorumError("leadership changed before the write committed; retry")
                )
        self._on_applied(index, result)
        for event in result.events:
            topic = str(event.get("topic", "consensus"))
            if not self._wants(topic):
                continue  # nobody subscribed: skip building the event
            raw = event.get("data")
            data_out: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
            if topic == "consensus":
                data_out.setdefault("kind", "entry")
                data_out.update(index=index, term=term)
            self._publish(topic, data_out)

    def _publish_event(self, event: Any) -> None:
        if event.kind == "election":
            self.elections += 1
        self._publish(
            "consensus",
            {
                "kind": event.kind,
                "term": event.term,
                "role": event.role,
                "leader": event.leader,
                "summary": event.summary,
            },
        )

    def _check_role(self) -> None:
        self.report_role(self.role_name())

    def report_role(self, role: str) -> None:
        """Advertise ``role`` (SWIM metadata) if it changed; a paused leader says "voter"."""
        if role != self._role:
            self._role = role
            self._on_role_change(role)

    # ------------------------------------------------------------ peers

    def on_message(self, from_addr: str, msg: Any) -> None:
        """A Raft message from a peer (the router's route for ``raft.messages``)."""
        self.step(msg)

    def step(self, msg: Any) -> None:
        self._heard[msg.frm] = self._leader_wait.ticks
        if self.disk_full.paused:
            self.disk_full.step(msg)  # learn who leads, drop the rest (diskfull.py)
            return
        self._node.step(msg)
        self.wake()

    # ------------------------------------------------------------ autopilot

    def autopilot(self, alive: set[str], dead: set[str]) -> None:
        """Leader only: one membership change per call towards a healthy voter set."""
        node = self._node
        if self.disk_full.paused or not node.is_leader() or node.pending_conf_index > node.commit_index:
            return
        last = node.log.last_index()
        caught_up = {
            peer for peer, pr in node.prs.items() if last - pr.match <= CAUGHT_UP_LAG
        }
        change = plan_voter_changes(
            node.conf, alive | {self.node_id}, dead, self.config.max_voters, caught_up
        )
        if change is None:
            return
        try:
            node.propose_conf_change(change)
        except LocalError as exc:
            log.debug("autopilot change %s refused: %s", change, exc)
            return
        self.wake()
