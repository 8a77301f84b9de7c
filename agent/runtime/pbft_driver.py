"""The PBFT engine in the runtime: ``PbftDriver`` drives a ``PbftReplica`` (or, on a
host outside the replica set, a ``PbftFollower``) over the peer router.

It offers the control handlers, the task runtime, the status views and the
metrics the same narrow interface ``ConsensusDriver`` offers for Raft
(``ports.py``), so KV, proposals and task placement run unchanged on the same
``StateMachine``:

* a write (``propose``/``submit``) is a signed PBFT request from this node's
  client; its result is accepted on f+1 matching signed replies;
* ``read_barrier`` (linearizable reads) orders a null request through the
  protocol and returns once this node has executed it; ``--stale`` reads
  read the local state;
* ``is_leader``/``leader_id`` are the primary of the current view;
  ``transfer_leadership`` asks for a view change;
* the state machine's index is the count of requests executed, the same on
  every replica; ``checkpoint_due`` hands the state machine's snapshot back.

The loop: ``tick`` every ``pbft.tick_interval``, ``step`` per message, then
``_drain``: persist (records, hard state, stable checkpoint: ``pbft_storage``)
→ execute → checkpoint → advance for every Ready there is, then one fdatasync
for all of them, then send their messages (group commit; docs/internals.md §2).
Formation (keys, genesis) is ``pbft_cluster.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import msgpack

from agent.errors import LocalError, NoQuorumError
from agent.identity_key import NodeKey
from agent.metrics.trackers import LeaderTerms
from agent.pbft.client import PbftClient, PbftFollower
from agent.pbft.core import PbftReplica
from agent.pbft.messages import (
    CommittedBatch,
    Evidence,
    Executed,
    Genesis,
    KeyAnnounce,
    Outbound,
    Ready,
    Reply,
    Request,
    StateReply,
)
from agent.pbft.reconfig import app_snapshot, is_replace
from agent.runtime.pbft_cluster import ANNOUNCE_EVERY, PbftCluster
from agent.runtime.pbft_roles import PbftRoles
from agent.runtime.pbft_storage import PbftStorage
from agent.runtime.ports import StateQueries
from agent.state.commands import Command
from agent.state.machine import ApplyResult, StateMachine

log = logging.getLogger("agent.pbft")

BARRIER = b""
"""The null command a linearizable read orders (the state machine applies it as a no-op)."""


def encode_result(result: ApplyResult) -> bytes:
    """What a replica signs in its REPLY: deterministic, the same on every replica."""
    return bytes(msgpack.packb([result.ok, result.value, result.error], use_bin_type=True))


def decode_result(data: bytes) -> ApplyResult:
    ok, value, error = msgpack.unpackb(data, raw=False)
    return ApplyResult(bool(ok), value, error)


class PbftDriver(PbftRoles):
    def __init__(
        self,
        *,
        config: Any,
        node_id: str,
        key: NodeKey,
        data_dir: str,
        send: Callable[[str, object], None],
    ) -> None:
        self.config = config
        self.pbft_config = config.pbft
        self.node_id = node_id
        self._send = send
        self._commit_timeout = config.runtime.commit_timeout
        self._storage = PbftStorage(os.path.join(data_dir, "pbft"))
        self._cluster = PbftCluster(node_id, key, config.replicas, self._storage.load_genesis())
        self._state = StateMachine()
        self._replica: PbftReplica | None = None
        self._client: PbftClient | None = None
        self._follower: PbftFollower | None = None
        self._alive: Callable[[], list[str]] = list
        self._publish: Callable[[str, dict[str, Any]], None] = lambda topic, data: None
        self._wants: Callable[[str], bool] = lambda topic: True
        self._on_applied: Callable[[int, ApplyResult], None] = lambda index, result: None
        self._on_role_change: Callable[[str], None] = lambda role: None
        self._pending: dict[int, tuple[asyncio.Future[Any], Callable[[ApplyResult], Any] | None, float]] = {}
        self._barriers: dict[int, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._role = ""
        self.commit_latencies: list[float] = []
        self.leader_terms = LeaderTerms()
        self.evidence: list[dict[str, Any]] = []
        if self._cluster.genesis is not None:
            self._build(self._cluster.genesis)

    def connect(
        self,
        *,
        publish: Callable[[str, dict[str, Any]], None],
        wants: Callable[[str], bool],
        on_applied: Callable[[int, ApplyResult], None],
        on_role_change: Callable[[str], None],
    ) -> None:
        self._publish, self._wants = publish, wants
        self._on_applied, self._on_role_change = on_applied, on_role_change

    def use_members(self, alive: Callable[[], list[str]]) -> None:
        """Who is alive (SWIM): where keys and the genesis are announced."""
        self._alive = alive

    # ------------------------------------------------------------ what others may ask

    @property
    def queries(self) -> StateQueries:
        return self._state

    @property
    def bootstrapped(self) -> bool:
        return self._cluster.genesis is not None

    @property
    def elections(self) -> int:
        return self._replica.view_changes if self._replica else 0

    def is_leader(self) -> bool:
        return self._replica is not None and self._replica.is_primary()

    @property
    def leader_id(self) -> str:
        if self._replica is not None:
            return self._replica.primary if self._replica.active else ""
        group = self.group()
        if not group or self._client is None:
            return ""
        return group[self._client.view % len(group)]

    def voters(self) -> tuple[str, ...]:
        """The replicas, starting with the next view's primary (so ``leader.transfer``
        without ``to`` names the host that will lead)."""
        group = self.group()
        if not group:
            return ()
        at = (self._view() + 1) % len(group)
        return group[at:] + group[:at]

    def transfer_leadership(self, to: str) -> None:
        """``transfer-leader``: the primary steps down (VIEW-CHANGE for the next view,
        which the backups join).  The next primary is fixed by view mod n, so ``to``
        must be that host."""
        replica = self._replica
        if replica is None:
            raise LocalError("this host is not a PBFT replica")
        following = replica.group.primary(replica.view + 1)
        if to and to != following:
            raise LocalError(f"PBFT's next primary is fixed (view mod n): {following}; omit --to")
        replica.request_view_change()
        self.wake()

    async def leader_gone(self, leader: str) -> None:
        """The primary's port refuses connections (leader_loss.py): ask for the next
        view now instead of waiting out the view-change timer.  Safe whoever asks
        (a view change never loses a committed request); the view changes once f+1
        replicas ask.  A probe refused on one link only takes this replica ahead
        alone, where the others find it at their next view change."""
        replica = self._replica
        if replica is not None and replica.active and replica.primary == leader != self.node_id:
            replica.request_view_change()
            self.wake()

    def has_quorum(self) -> bool:
        return self.bootstrapped and (self._replica is None or self._replica.active)

    def alarms(self) -> list[dict[str, Any]]:
        return []

    def wal_stats(self) -> dict[str, Any]:
        return self._storage.stats()

    def log_view(self, after: int, limit: int) -> tuple[dict[str, dict[str, object]], list[Any]]:
        return {}, []

    @property
    def raft_config(self) -> Any:
        return self.config.raft

    # ------------------------------------------------------------ lifecycle

    def bootstrap(self, voters: list[str]) -> None:
        """The bootstrap gate chose this node to found the cluster: GENESIS with the
        first ``replicas`` alive members that have known keys (or wait)."""
        genesis = self._cluster.found(set(voters) | set(self._alive()))
        if genesis is None:
            return
        self._storage.save_genesis(genesis)
        log.info("formed a PBFT cluster of %d replicas", len(genesis.replicas))
        self._build(genesis)
        self._cluster.gossip(self._alive(), self._send)

    def autopilot(self, alive: set[str], dead: set[str]) -> None:
        """The replica set changes only by an explicit command, never by autopilot;
        here the followers (alive non-replicas) are kept current."""
        if self._replica is not None:
            self._replica.observers = tuple(sorted(alive - set(self._replica.group.replicas)))

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._tick_loop(), name="pbft-tick"),
            asyncio.create_task(self._announce_loop(), name="pbft-announce"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for fut, _, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(NoQuorumError("agent is shutting down"))
        self._storage.close()

    def wake(self) -> None:
        self._drain()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.pbft_config.tick_interval)
            for part in (self._replica, self._client, self._follower):
                if part is not None:
                    part.tick()
            self._drain()
            self._expire()

    async def _announce_loop(self) -> None:
        while True:
            self._cluster.gossip(self._alive(), self._send)
            await asyncio.sleep(ANNOUNCE_EVERY)

    # ------------------------------------------------------------ messages

    def on_message(self, from_addr: str, msg: Any) -> None:
        self.step(msg)

    def step(self, msg: Any) -> None:
        if isinstance(msg, KeyAnnounce):
            self._cluster.on_announce(msg)
        elif isinstance(msg, Genesis):
            if self._cluster.on_genesis(msg):
                self._storage.save_genesis(msg)
                log.info("joined a PBFT cluster of %d replicas", len(msg.replicas))
                self._build(msg)
        elif isinstance(msg, Reply):
            if self._client is not None:
                self._client.step(msg)
        elif isinstance(msg, Executed | StateReply) and self._follower is not None:
            self._follower.step(msg)
        elif self._replica is not None:
            self._replica.step(msg)
        self._drain()

    def _dispatch(self, out: Outbound) -> None:
        if out.to == self.node_id:
            self.step(out.msg)
        else:
            self._send(out.to, out.msg)

    # ------------------------------------------------------------ the loop

    def _drain(self) -> None:
        replica = self._replica
        held: list[Outbound] = []
        # Group commit: every Ready of this turn is written, then one fdatasync,
        # then their messages leave (nothing is sent before what it depends on is
        # durable; executing before the sync is fine: the state is rebuilt from
        # the stable checkpoint after a crash).
        while replica is not None and (rd := replica.ready()) is not None:
            self._persist(rd)
            held.extend(rd.messages)
            if rd.reset_to is not None:
                self._state.restore(app_snapshot(rd.reset_to.snapshot))
            for batch in rd.committed:
                self._execute(batch)
            if rd.checkpoint_due:
                replica.checkpoint(rd.checkpoint_due, self._state.snapshot())
            for ev in rd.evidence:
                self._on_evidence(ev)
            for event in rd.events:
                self._publish("consensus", {"kind": event.kind, "term": event.view, "summary": event.summary})
            replica.advance(rd)
        if held:
            self._storage.sync()
            for out in held:
                self._dispatch(out)
        if self._follower is not None:
            reset, batches = self._follower.take()
            if reset is not None:
                self._state.restore(app_snapshot(reset.snapshot))
            for batch in batches:
                self._execute(batch)
            for out in self._follower.take_messages():
                self._dispatch(out)
        if self._client is not None:
            for out in self._client.take_messages():
                self._dispatch(out)
            for rid, result in self._client.take_results():
                self._resolve(rid, decode_result(result))
        self._check_roles()
        self._report_role()

    def _persist(self, rd: Ready) -> None:
        self._storage.write(rd.records, rd.hard_state)
        for stable in (rd.reset_to, rd.stable):
            if stable is not None:
                self._storage.save_stable(stable)

    def _execute(self, batch: CommittedBatch) -> None:
        self.leader_terms.observe(self._state.applied_index + 1, batch.view)
        for request in batch.requests:
            if is_replace(request.op):  # the replica group's business (pbft_roles.py)
                self._apply(Request(request.client, request.rid, BARRIER))
                result = self._replace_result(request)
                if self._replica is None:
                    self.learn_replace_key(request)
            else:
                result = self._apply(request)
            if self._replica is not None:
                self._replica.reply(request, encode_result(result))
            if request.client == self.node_id:
                barrier = self._barriers.pop(request.rid, None)
                if barrier is not None and not barrier.done():
                    barrier.set_result(None)

    def _apply(self, request: Request) -> ApplyResult:
        index = self._state.applied_index + 1
        result = self._state.apply(index, request.op)
        self._on_applied(index, result)
        for event in result.events:
            topic = str(event.get("topic", "consensus"))
            if self._wants(topic):
                raw = event.get("data")
                data: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
                if topic == "consensus":
                    data.setdefault("kind", "entry")
                    data.update(index=index, term=self._view())
                self._publish(topic, data)
        return result

    def _on_evidence(self, ev: Evidence) -> None:
        row = {
            "kind": ev.kind,
            "culprit": ev.culprit,
            "view": ev.view,
            "seq": ev.seq,
            "digests": [ev.first.digest.hex(), ev.second.digest.hex()],
            "summary": ev.describe(),
        }
        self.evidence.append(row)
        del self.evidence[:-100]
        log.error("PBFT evidence: %s", ev.describe())
        self._publish("consensus", {"kind": "evidence", "term": ev.view, **row})

    def _view(self) -> int:
        if self._replica is not None:
            return self._replica.view
        return self._client.view if self._client is not None else 0

    def _report_role(self) -> None:
        if self._replica is not None:
            role = "primary" if self._replica.is_primary() else "replica"
        elif self._follower is not None:
            role = "follower"
        else:
            role = "none"
        if role != self._role:
            self._role = role
            self._on_role_change(role)

    # ------------------------------------------------------------ writes and reads

    def submit(
        self,
        command: bytes,
        forward: Callable[[str, object], None] | None = None,
        finish: Callable[[ApplyResult], Any] | None = None,
        decoded: Command | None = None,
    ) -> asyncio.Future[Any]:
        """Send ``command`` as a signed request; the future resolves to
        ``finish(result)`` once f+1 replicas replied the same result."""
        if self._client is None:
            raise NoQuorumError("the PBFT cluster is not formed yet")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        request = self._client.submit(command)
        self._pending[request.rid] = (fut, finish, loop.time())
        self._drain()
        return fut

    async def propose(self, command: bytes, forward: Any = None) -> ApplyResult:
        result: ApplyResult = await self.submit(command)
        return result

    async def propose_local(self, command: bytes) -> ApplyResult:
        return await self.propose(command)

    async def read_barrier(self) -> None:
        """Order a null request and wait until this node executed it."""
        if self._client is None:
            raise NoQuorumError("the PBFT cluster is not formed yet")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request = self._client.submit(BARRIER)
        self._barriers[request.rid] = fut
        self._drain()
        try:
            await asyncio.wait_for(fut, self._commit_timeout)
        except TimeoutError:
            self._barriers.pop(request.rid, None)
            self._client.abandon(request.rid)
            raise NoQuorumError("the read barrier did not execute in time") from None

    def _resolve(self, rid: int, result: ApplyResult) -> None:
        entry = self._pending.pop(rid, None)
        if entry is None:
            return
        fut, finish, started = entry
        if fut.done():
            return
        self.commit_latencies.append(asyncio.get_running_loop().time() - started)
        del self.commit_latencies[:-10_000]
        try:
            fut.set_result(finish(result) if finish is not None else result)
        except Exception as exc:
            fut.set_exception(exc)

    def _expire(self) -> None:
        now = asyncio.get_running_loop().time()
        for rid, (fut, _, started) in list(self._pending.items()):
            if now - started > self._commit_timeout:
                del self._pending[rid]
                if self._client is not None:
                    self._client.abandon(rid)
                if not fut.done():
                    fut.set_exception(NoQuorumError("no f+1 matching replies in time"))

    # ------------------------------------------------------------ status

    def _follower_status(self, replicas: tuple[str, ...]) -> dict[str, Any]:
        """A host outside the replica set: what it follows (no log, no watermarks)."""
        n = len(replicas)
        if self._follower is None:  # not formed yet
            return {
                "engine": "pbft",
                "view": 0,
                "active": False,
                "primary": None,
                "n": n,
                "f": 0,
                "low": None,
                "high": None,
                "executed": 0,
                "forming": True,
            }
        return {
            "engine": "pbft",
            "view": self._view(),
            "active": True,
            "primary": self.leader_id,
            "n": n,
            "f": (n - 1) // 3,
            "low": None,
            "high": None,
            "follower": True,
            "executed": self._follower.applied,
            "view_changes": 0,
            "rejected_signatures": self._follower.checker.rejected,
            "replicas": list(replicas),
            "replace_pending": self._follower.membership.pending_status(),
        }

    def status(self) -> dict[str, Any]:
        replica = self._replica
        group = self.group()
        core = replica.status() if replica is not None else self._follower_status(group)
        replicas = list(group)
        return {
            "engine": "pbft",
            "role": self._role or "none",
            "term": self._view(),
            "leader_id": self.leader_id or None,
            "commit_index": self._state.applied_index,
            "applied_index": self._state.applied_index,
            "voters": replicas,
            "learners": [],
            "quorum": self.has_quorum(),
            "storage_damage": None,
            "paused": False,
            "alarms": [],
            "byzantine_f": (len(replicas) - 1) // 3 if replicas else 0,
            "pbft": {
                **core,
                "checkpoint_lag": core["executed"] - core["low"] if core.get("low") is not None else None,
                "window": replica.window_phases() if replica is not None else [],
                "evidence": list(self.evidence),
                "fingerprints": {n: self._cluster.fingerprint(n) for n in replicas},
            },
        }
