"""A deterministic in-memory cluster of PbftReplicas for simulation tests.

Time is a step counter; every step each live replica and client ticks once,
then due messages are delivered and every replica drains its Readys (persist
→ send → execute → checkpoint → advance).  The network drops, duplicates and
delays (which reorders) messages with seeded randomness, and honours
partitions.  Storage keeps a synced part and an unsynced buffer: a crash
between write and sync loses the buffer, like a power cut before fsync.

Replicas may be *Byzantine*: they run the real core, but a behaviour from
``sim.pbft_byzantine`` rewrites what they send and adds what it likes, signed
with their own key only (the stand-in signer keeps the forge/verify semantics:
nobody can sign as another).  The invariants concern the *correct* replicas:

* safety: no two correct replicas execute different batches at one seq, and
  none holds a different state digest at one checkpoint;
* the log is bounded: every slot lies in (low, low + L], and a replica never
  executes more than L past its stable checkpoint.

Every replica runs a small KV (put/get/cas per key, deduplicated by request
id) so clients produce histories for the linearizability checker.
"""

from __future__ import annotations

import heapq
import json
import random
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.pbft.client import PbftClient, PbftFollower
from agent.pbft.config import PbftConfig
from agent.pbft.core import PbftReplica
from agent.pbft.messages import (
    CommittedBatch,
    Evidence,
    Executed,
    HardState,
    Outbound,
    PersistRecord,
    Ready,
    Request,
    Restored,
    StableCheckpoint,
    StateReply,
)
from agent.pbft.reconfig import app_snapshot, is_replace
from agent.pbft.signing import (
    Ed25519Signer,
    Ed25519Verifier,
    KeyedHashSigner,
    KeyedHashVerifier,
    Signer,
    Verifier,
    state_digest,
)
from agent.pbft.viewchange import Group
from agent.runtime.pbft_storage import keep_records

SIM_CONFIG = PbftConfig(
    tick_interval=0.1,
    checkpoint_interval=8,
    window_factor=2,
    view_change_ticks=24,
    max_backoff=4,
    resend_ticks=4,
    max_batch=4,
)


class MemoryStorage:
    """Durable replica state with an explicit sync: ``crash()`` forgets unsynced writes."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.stable: StableCheckpoint | None = None
        self.records: list[PersistRecord] = []
        self._unsynced: Ready | None = None

    def write(self, rd: Ready) -> None:
        self._unsynced = rd

    def sync(self) -> None:
        rd, self._unsynced = self._unsynced, None
        if rd is None:
            return
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        self.records.extend(rd.records)
        for stable in (rd.reset_to, rd.stable):
            if stable is not None and (self.stable is None or stable.seq > self.stable.seq):
                self.stable = stable
        if self.stable is not None:
            self.records = keep_records(self.records, self.stable.seq)

    def crash(self) -> None:
        self._unsynced = None

    def restored(self) -> Restored:
        return Restored(self.hard_state, self.stable, tuple(self.records))




class KV:
    """The test state machine: ops are JSON ``[kind, key, *args]``; requests are
    deduplicated by (client, rid) so a request executed twice changes nothing."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.results: dict[str, Any] = {}

    def apply(self, request: Request) -> bytes:
        key_rid = f"{request.client}/{request.rid}"
        if key_rid in self.results:
            return json.dumps(self.results[key_rid]).encode()
        kind, key, *args = json.loads(request.op)
        result: Any = None
        if kind == "put":
            self.data[key] = args[0]
        elif kind == "get":
            result = self.data.get(key)
        elif kind == "cas":
            result = self.data.get(key) == args[0]
            if result:
                self.data[key] = args[1]
        self.results[key_rid] = result
        return json.dumps(result).encode()

    def snapshot(self) -> bytes:
        return json.dumps([self.data, self.results], sort_keys=True).encode()

    def restore(self, data: bytes) -> None:
        self.data, self.results = json.loads(data)


@dataclass
class SimReplica:
    node_id: str
    storage: MemoryStorage
    core: PbftReplica
    kv: KV
    up: bool = True
    byzantine: Any = None
    """A behaviour from sim.pbft_byzantine, or None for a correct replica."""
    executed: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass
class SimFollower:
    """A host outside the replica set following committed batches (f+1 EXECUTEDs)."""

    follower: PbftFollower
    kv: KV

    def step(self, msg: Executed | StateReply) -> None:
        self.follower.step(msg)
        reset, batches = self.follower.take()
        if reset is not None:
            self.kv.restore(app_snapshot(reset.snapshot))
        for batch in batches:
            for request in batch.requests:
                if not is_replace(request.op):
                    self.kv.apply(request)


class InvariantViolation(AssertionError):
    pass


def make_keys(ids: list[str], rng: random.Random, real: bool) -> tuple[dict[str, Signer], Verifier]:
    """A signer per node and one verifier that knows them all."""
    if real:
        signers: dict[str, Signer] = {}
        public: dict[str, bytes] = {}
        for node in ids:
            key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
            signers[node] = Ed25519Signer(node, key)
            public[node] = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return signers, Ed25519Verifier(public)
    secrets = {node: rng.randbytes(16) for node in ids}
    return {n: KeyedHashSigner(n, s) for n, s in secrets.items()}, KeyedHashVerifier(secrets)


class PbftNet:
    def __init__(
        self,
        seed: int,
        n: int = 4,
        clients: int = 3,
        config: PbftConfig = SIM_CONFIG,
        real_signatures: bool = False,
        spares: int = 0,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config
        self.replica_ids = tuple(f"r{i}" for i in range(n))
        self.client_ids = [f"c{i}" for i in range(clients)]
        self.spare_ids = [f"r{i}" for i in range(n, n + spares)]
        """Hosts with keys but no replica yet (``admit`` makes one a replica)."""
        self.signers, self.verifier = make_keys(
            [*self.replica_ids, *self.client_ids, *self.spare_ids], self.rng, real_signatures
        )
        self.followers: dict[str, SimFollower] = {}
        self.now = 0
        self.replicas: dict[str, SimReplica] = {}
        self.clients: dict[str, PbftClient] = {
            c: PbftClient(self.signers[c], self.verifier, self.replica_ids, retry_ticks=12)
            for c in self.client_ids
        }
        self._queue: list[tuple[int, int, Outbound, str]] = []
        self._seq = 0
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.max_delay = 1
        self.crash_in_ready_rate = 0.0
        self.cut: set[frozenset[str]] = set()
        self.slow: dict[str, int] = {}
        """Extra delay (steps) on everything a node sends."""
        self.executed_at: dict[int, tuple[bytes, str]] = {}
        self.state_at: dict[int, tuple[bytes, str]] = {}
        self.evidence: list[tuple[str, Evidence]] = []
        self.on_result: Any = None  # callable(client_id, rid, result bytes)
        self.check_invariants = True
        self.state_transfers = 0
        for node_id in self.replica_ids:
            self._start(node_id, MemoryStorage())

    # ------------------------------------------------------------ lifecycle

    def _start(
        self,
        node_id: str,
        storage: MemoryStorage,
        byzantine: Any = None,
        replicas: tuple[str, ...] | None = None,
        previous: tuple[tuple[str, ...], int] | None = None,
    ) -> None:
        restored = storage.restored()
        core = PbftReplica(
            self.config, self.signers[node_id], self.verifier, replicas or self.replica_ids, restored,
            previous=previous,
        )
        kv = KV()
        if restored.stable is not None:
            kv.restore(app_snapshot(restored.stable.snapshot))
        old = self.replicas.get(node_id)
        self.replicas[node_id] = SimReplica(
            node_id, storage, core, kv, byzantine=byzantine or (old.byzantine if old else None)
        )

    def admit(self, node_id: str, replicas: tuple[str, ...], previous: tuple[tuple[str, ...], int]) -> None:
        """``node_id`` joins as a replica of ``replicas`` (after a replacement), with
        nothing but the group: it catches up by state transfer."""
        self._start(node_id, MemoryStorage(), replicas=replicas, previous=previous)
        for client in self.clients.values():
            client.group = Group(replicas)

    def follow(self, node_id: str, kv: KV, core: PbftReplica) -> None:
        """The replaced replica ``node_id`` follows from where its core stopped."""
        prev = core.membership.previous
        follower = PbftFollower(
            self.signers[node_id], self.verifier, core.group.replicas, self.config.window,
            stall_ticks=12, interval=self.config.checkpoint_interval, applied=core.executed,
            previous=(prev[0].replicas, prev[1]) if prev else None, handoff=core.stable_checkpoint,
        )
        self.followers[node_id] = SimFollower(follower, kv)

    def make_byzantine(self, node_id: str, behaviour: Any) -> None:
        self.replicas[node_id].byzantine = behaviour

    def correct(self) -> list[SimReplica]:
        return [r for r in self.replicas.values() if r.byzantine is None]

    def crash(self, node_id: str) -> None:
        node = self.replicas[node_id]
        node.storage.crash()
        node.up = False

    def restart(self, node_id: str) -> None:
        node = self.replicas[node_id]
        assert not node.up
        self._start(node_id, node.storage)

    # ------------------------------------------------------------ network

    def partition(self, *groups: list[str]) -> None:
        self.cut = set()
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                self.cut |= {frozenset((x, y)) for x in a for y in b}

    def heal(self) -> None:
        self.cut = set()
        self.drop_rate = self.dup_rate = 0.0
        self.max_delay = 1
        self.slow = {}
        self.crash_in_ready_rate = 0.0

    def send(self, frm: str, out: Outbound, extra_delay: int = 0) -> None:
        if self.rng.random() < self.drop_rate:
            return
        copies = 2 if self.rng.random() < self.dup_rate else 1
        for _ in range(copies):
            self._seq += 1
            at = self.now + 1 + self.rng.randint(0, self.max_delay) + self.slow.get(frm, 0) + extra_delay
            heapq.heappush(self._queue, (at, self._seq, out, frm))

    # ------------------------------------------------------------ driving

    def step(self) -> None:
        self.now += 1
        for node in self.replicas.values():
            if node.up:
                node.core.tick()
        for cid, client in self.clients.items():
            client.tick()
            self._client_out(cid)
        for fid, sim_follower in self.followers.items():
            sim_follower.follower.tick()
            for out in sim_follower.follower.take_messages():
                self.send(fid, out)
        while self._queue and self._queue[0][0] <= self.now:
            _, _, out, frm = heapq.heappop(self._queue)
            self._deliver(frm, out)
        for node in self.replicas.values():
            if node.up:
                self._drain(node)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def wait_for(self, predicate: Any, max_steps: int) -> bool:
        for _ in range(max_steps):
            if predicate():
                return True
            self.step()
        return bool(predicate())

    def _client_out(self, cid: str) -> None:
        for out in self.clients[cid].take_messages():
            self.send(cid, out)

    def _deliver(self, frm: str, out: Outbound) -> None:
        if frozenset((frm, out.to)) in self.cut:
            return
        client = self.clients.get(out.to)
        if client is not None:
            client.step(out.msg)  # type: ignore[arg-type]
            for rid, result in client.take_results():
                if self.on_result is not None:
                    self.on_result(out.to, rid, result)
            return
        sim_follower = self.followers.get(out.to)
        if sim_follower is not None:
            if isinstance(out.msg, Executed | StateReply):
                sim_follower.step(out.msg)
            return
        node = self.replicas.get(out.to)
        if node is None or not node.up:
            return
        if node.byzantine is not None:
            for extra in node.byzantine.on_receive(self, node, out.msg):
                self.send(node.node_id, extra)
        node.core.step(out.msg)
        self._drain(node)

    def _drain(self, node: SimReplica) -> None:
        core = node.core
        while node.up and (rd := core.ready()) is not None:
            node.storage.write(rd)
            if self.crash_in_ready_rate and self.rng.random() < self.crash_in_ready_rate:
                self.crash(node.node_id)
                return
            node.storage.sync()
            self._send_all(node, rd.messages)
            if rd.reset_to is not None:
                self.state_transfers += 1
                app = app_snapshot(rd.reset_to.snapshot)
                node.kv.restore(app)
                self._check_state(node, rd.reset_to.seq, state_digest(app))
            for batch in rd.committed:
                self._execute(node, batch)
            if rd.checkpoint_due:
                snapshot = node.kv.snapshot()
                self._check_state(node, rd.checkpoint_due, state_digest(snapshot))
                core.checkpoint(rd.checkpoint_due, snapshot)
            for ev in rd.evidence:
                self.evidence.append((node.node_id, ev))
            core.advance(rd)
            self._check_bounds(node)

    def _send_all(self, node: SimReplica, messages: list[Outbound]) -> None:
        if node.byzantine is not None:
            messages = node.byzantine.mangle(self, node, messages)
        delay = node.byzantine.delay(self) if node.byzantine is not None else 0
        for out in messages:
            self.send(node.node_id, out, delay)

    def _execute(self, node: SimReplica, batch: CommittedBatch) -> None:
        if node.byzantine is None and self.check_invariants:
            known = self.executed_at.setdefault(batch.seq, (batch.digest, node.node_id))
            if known[0] != batch.digest:
                self.fail(
                    f"{node.node_id} executed {batch.digest.hex()[:8]} at seq {batch.seq}, "
                    f"{known[1]} executed {known[0].hex()[:8]}"
                )
        fence = node.core.membership.fence
        if fence is not None and batch.seq > fence and self.check_invariants:
            self.fail(f"{node.node_id} executed {batch.seq} above a pending replacement's fence {fence}")
        node.executed.append((batch.seq, batch.digest))
        for request in batch.requests:
            if is_replace(request.op):
                node.core.reply(request, json.dumps(node.core.replace_outcome(request)).encode())
            else:
                node.core.reply(request, node.kv.apply(request))

    # ------------------------------------------------------------ invariants

    def fail(self, what: str) -> None:
        raise InvariantViolation(f"MESH_SEED={self.seed} step={self.now}: {what}")

    def _check_state(self, node: SimReplica, seq: int, digest: bytes) -> None:
        if node.byzantine is not None or not self.check_invariants:
            return
        known = self.state_at.setdefault(seq, (digest, node.node_id))
        if known[0] != digest:
            self.fail(
                f"{node.node_id} has state {digest.hex()[:8]} at {seq}, {known[1]} {known[0].hex()[:8]}"
            )

    def _check_bounds(self, node: SimReplica) -> None:
        """Checkpoints bound the log: every slot inside (low, low + L]."""
        if node.byzantine is not None or not self.check_invariants:
            return
        core = node.core
        slots = core.log.slots
        if slots and (min(slots) <= core.low or max(slots) > core.high):
            self.fail(
                f"{node.node_id} holds slots {min(slots)}..{max(slots)} outside ({core.low}, {core.high}]"
            )
        if core.executed > core.high:
            self.fail(f"{node.node_id} executed {core.executed} beyond its high watermark {core.high}")

    # ------------------------------------------------------------ helpers

    def submit(self, client: str, op: list[Any]) -> int:
        request = self.clients[client].submit(json.dumps(op).encode())
        self._client_out(client)
        return request.rid

    def views(self) -> dict[str, int]:
        return {r.node_id: r.core.view for r in self.replicas.values()}
