"""A deterministic in-memory cluster of RaftNodes for simulation tests.

Time is a step counter; every step each live node ticks once, then due
messages are delivered and every node drains its Readys (persist → send →
apply → advance).  The network drops, duplicates and delays (which reorders)
messages with seeded randomness, and honours partitions.  Storage is a
``MemoryStorage`` with a synced part and an unsynced buffer: a crash between
write and sync loses the buffer, like a power cut before fsync.

Every node runs a small KV state machine (put/get/cas per key), so clients can
produce histories for the linearizability checker, and the invariant checks
(election safety, log matching, leader completeness, state machine safety)
run on every Ready.
"""

from __future__ import annotations

import heapq
import json
import random
from dataclasses import dataclass, field
from typing import Any

from agent.errors import LocalError, NoQuorumError, NotLeaderError
from agent.raft.config import RaftConfig
from agent.raft.core import RaftNode, bootstrap_state
from agent.raft.messages import (
    ConfChange,
    Entry,
    EntryKind,
    HardState,
    RaftMessage,
    RestoredState,
    Role,
    Snapshot,
)

SIM_CONFIG = RaftConfig(
    tick_interval=0.1,
    heartbeat_ticks=1,
    election_ticks=10,
    max_inflight_msgs=8,
    max_size_per_msg=256,
    snapshot_threshold=30,
    snapshot_trailing=5,
)


class MemoryStorage:
    """Durable Raft state with an explicit sync: ``crash()`` forgets unsynced writes."""

    def __init__(self, initial: RestoredState | None = None) -> None:
        self.hard_state = initial.hard_state if initial else HardState()
        self.snapshot: Snapshot | None = initial.snapshot if initial else None
        self.entries: list[Entry] = list(initial.entries) if initial else []
        self._unsynced: list[tuple[str, Any]] = []
        self.syncs = 0
        self.damaged = ""
        self.restored_from_copy = False
        """Put back from a backup and not repaired since (fault bookkeeping only)."""

    def write_snapshot(self, snap: Snapshot) -> None:
        self._unsynced.append(("snapshot", snap))

    def write(self, entries: list[Entry], hard_state: HardState | None) -> None:
        if entries:
            self._unsynced.append(("entries", entries))
        if hard_state is not None:
            self._unsynced.append(("hard_state", hard_state))

    def sync(self) -> None:
        self.syncs += 1
        for kind, value in self._unsynced:
            if kind == "entries":
                first = value[0].index
                self.entries = [e for e in self.entries if e.index < first] + list(value)
            elif kind == "hard_state":
                self.hard_state = value
            else:
                self._install(value)
        self._unsynced = []

    def _install(self, snap: Snapshot) -> None:
        at = [e for e in self.entries if e.index == snap.index]
        matches = bool(at) and at[0].term == snap.term
        self.snapshot = snap
        self.entries = [e for e in self.entries if e.index > snap.index] if matches else []

    def save_local_snapshot(self, snap: Snapshot, keep_from: int) -> None:
        """The application's own snapshot: durable at once (the real storage fsyncs it)."""
        self.sync()
        self.snapshot = snap
        self.entries = [e for e in self.entries if e.index >= keep_from]

    def crash(self) -> None:
        self._unsynced = []

    def lie(self, lost: int) -> int:
        """The disk drops the last ``lost`` synced entries (what a lying disk or a
        zeroed WAL tail leaves); the separate acknowledgement record survives, so
        the next start knows it is damaged.  Returns how many entries were lost."""
        self._unsynced = []
        lost = min(lost, len(self.entries))
        if lost:
            del self.entries[-lost:]
            self.damaged = f"lost {lost} acknowledged entries"
        return lost

    def copy(self) -> MemoryStorage:
        """What a backup taken now would hold (synced state only)."""
        return MemoryStorage(self.restored())

    def reset(self) -> None:
        """A granted repair: everything goes but term and vote."""
        self.hard_state = HardState(self.hard_state.term, self.hard_state.vote, 0)
        self.snapshot = None
        self.entries = []
        self.damaged = ""
        self.restored_from_copy = False

    def restored(self) -> RestoredState:
        offset = self.snapshot.index if self.snapshot else 0
        entries = tuple(e for e in self.entries if e.index > offset)
        hs = self.hard_state
        last = entries[-1].index if entries else offset
        if hs.commit > last:
            hs = HardState(hs.term, hs.vote, last)
        return RestoredState(hs, self.snapshot, entries, self.damaged)


class KV:
    """The test state machine: commands are JSON ``[client, op_id, kind, key, *args]``."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0

    def apply(self, entry: Entry) -> Any:
        self.applied = entry.index
        if entry.kind != EntryKind.NORMAL:
            return None
        _client, _op, kind, key, *args = json.loads(entry.data)
        if kind == "put":
            self.data[key] = args[0]
            return None
        if kind == "cas":
            if self.data.get(key) == args[0]:
                self.data[key] = args[1]
                return True
            return False
        raise AssertionError(kind)

    def snapshot(self) -> bytes:
        return json.dumps([self.applied, self.data]).encode()

    def restore(self, data: bytes) -> None:
        self.applied, self.data = json.loads(data)


@dataclass
class SimNode:
    node_id: str
    storage: MemoryStorage
    raft: RaftNode
    kv: KV
    up: bool = True
    # (index, term) → callback(result) for proposals made here
    waiting_writes: dict[int, tuple[int, Any]] = field(default_factory=dict)
    waiting_reads: list[tuple[int, bytes]] = field(default_factory=list)


class InvariantViolation(AssertionError):
    pass


class RaftNet:
    def __init__(
        self,
        seed: int,
        voters: list[str],
        others: list[str] = (),  # type: ignore[assignment]
        config: RaftConfig = SIM_CONFIG,
        compact: bool = True,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config
        self.compact_enabled = compact
        self.now = 0
        self.nodes: dict[str, SimNode] = {}
        self._queue: list[tuple[int, int, RaftMessage]] = []
        self._seq = 0
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.max_delay = 1
        self.crash_in_ready_rate = 0.0
        self.cut: set[frozenset[str]] = set()
        self.leaders_by_term: dict[int, str] = {}
        self.applied_by_index: dict[int, Entry] = {}
        self.max_committed = 0
        self.elections = 0
        self.repairs = 0
        self.on_write_result: Any = None  # callable(node, index, term, result)
        self.on_read_state: Any = None  # callable(node, ctx, value_getter)
        for node_id in voters:
            self._start(node_id, MemoryStorage(bootstrap_state(voters)))
        for node_id in others:
            self._start(node_id, MemoryStorage())

    # ------------------------------------------------------------ lifecycle

    def _start(self, node_id: str, storage: MemoryStorage) -> None:
        restored = storage.restored()
        node_rng = random.Random(self.rng.getrandbits(64))
        raft = RaftNode(self.config, node_id, restored, node_rng)
        kv = KV()
        if restored.snapshot is not None:
            kv.restore(restored.snapshot.data)
        self.nodes[node_id] = SimNode(node_id, storage, raft, kv)

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.storage.crash()
        node.up = False

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert not node.up
        self._start(node_id, node.storage)

    def restore_copy(self, node_id: str, copy: MemoryStorage) -> None:
        """Crash ``node_id`` and put back an older copy of its data dir."""
        node = self.nodes[node_id]
        node.up = False
        node.storage = copy
        copy.restored_from_copy = True

    def lie(self, node_id: str, lost: int) -> int:
        """Crash ``node_id`` and have its disk lose its last ``lost`` synced entries."""
        node = self.nodes[node_id]
        node.up = False
        return node.storage.lie(lost)

    # ------------------------------------------------------------ network

    def partition(self, *groups: list[str]) -> None:
        """Cut every link between different groups (nodes in no group keep all links)."""
        self.cut = set()
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                self.cut |= {frozenset((x, y)) for x in a for y in b}

    def heal(self) -> None:
        self.cut = set()

    def connected(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut

    def _send(self, msg: RaftMessage) -> None:
        if self.rng.random() < self.drop_rate:
            return
        copies = 2 if self.rng.random() < self.dup_rate else 1
        for _ in range(copies):
            self._seq += 1
            # Never due in the current step: a step always terminates, even if
            # a bug made two nodes answer each other forever.
            at = self.now + 1 + self.rng.randint(0, self.max_delay)
            heapq.heappush(self._queue, (at, self._seq, msg))

    # ------------------------------------------------------------ driving

    def step(self) -> None:
        self.now += 1
        for node in self.nodes.values():
            if node.up:
                node.raft.tick()
        while self._queue and self._queue[0][0] <= self.now:
            _, _, msg = heapq.heappop(self._queue)
            target = self.nodes.get(msg.to)
            if target is not None and target.up and self.connected(msg.frm, msg.to):
                target.raft.step(msg)
                self._drain(target)
        for node in self.nodes.values():
            if node.up:
                self._drain(node)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def _drain(self, node: SimNode) -> None:
        raft = node.raft
        while node.up and (rd := raft.ready()) is not None:
            if rd.reset_storage:
                node.storage.reset()
                node.kv = KV()
                self.repairs += 1
            if rd.snapshot is not None:
                node.storage.write_snapshot(rd.snapshot)
            node.storage.write(rd.entries, rd.hard_state)
            if self.crash_in_ready_rate and self.rng.random() < self.crash_in_ready_rate:
                self.crash(node.node_id)
                return
            node.storage.sync()
            for msg in rd.messages:
                self._send(msg)
            if rd.snapshot is not None:
                node.kv.restore(rd.snapshot.data)
                self._check_snapshot(rd.snapshot)
            for entry in rd.committed_entries:
                self._check_apply(node, entry)
                result = node.kv.apply(entry)
                want = node.waiting_writes.pop(entry.index, None)
                if want is not None and self.on_write_result is not None:
                    self.on_write_result(node, entry, want, result)
            for rs in rd.read_states:
                node.waiting_reads.append((rs.index, rs.ctx))
            raft.advance(rd)
            self._check_leader(node)
            if self.compact_enabled and raft.should_snapshot():
                snap = raft.compact(raft.applied_index, node.kv.snapshot())
                node.storage.save_local_snapshot(snap, raft.first_index())
        if node.waiting_reads and self.on_read_state is not None:
            ready = [r for r in node.waiting_reads if r[0] <= node.kv.applied]
            node.waiting_reads = [r for r in node.waiting_reads if r[0] > node.kv.applied]
            for _, ctx in ready:
                self.on_read_state(node, ctx)

    # ------------------------------------------------------------ invariants

    def fail(self, what: str) -> None:
        raise InvariantViolation(f"seed={self.seed} step={self.now}: {what}")

    def _check_apply(self, node: SimNode, entry: Entry) -> None:
        """State machine safety: every node applies the same entry at an index."""
        known = self.applied_by_index.setdefault(entry.index, entry)
        if known != entry:
            self.fail(f"{node.node_id} applied {entry} but another node applied {known}")
        self.max_committed = max(self.max_committed, entry.index)

    def _check_snapshot(self, snap: Snapshot) -> None:
        known = self.applied_by_index.get(snap.index)
        if known is not None and known.term != snap.term:
            self.fail(f"snapshot at {snap.index} term {snap.term} conflicts with {known}")

    def _check_leader(self, node: SimNode) -> None:
        raft = node.raft
        if raft.role != Role.LEADER:
            return
        holder = self.leaders_by_term.setdefault(raft.term, node.node_id)
        if holder != node.node_id:
            self.fail(f"two leaders in term {raft.term}: {holder} and {node.node_id}")
        if getattr(raft, "_sim_checked_term", None) == raft.term:
            return
        raft._sim_checked_term = raft.term  # type: ignore[attr-defined]
        self.elections += 1
        # Leader completeness: the new leader holds every entry applied anywhere.
        log = raft.log
        if log.last_index() < self.max_committed:
            self.fail(f"leader {node.node_id} (term {raft.term}) lacks committed entries")
        for index in range(log.first_index(), self.max_committed + 1):
            known = self.applied_by_index.get(index)
            if known is not None and log.term(index) != known.term:
                self.fail(f"leader {node.node_id} term {raft.term} lacks committed {known}")

    def check_log_matching(self) -> None:
        """If two logs hold an entry with the same index and term, they agree up to it."""
        ids = sorted(self.nodes)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                la, lb = self.nodes[a].raft.log, self.nodes[b].raft.log
                lo = max(la.first_index(), lb.first_index())
                hi = min(la.last_index(), lb.last_index())
                top = next((x for x in range(hi, lo - 1, -1) if la.term(x) == lb.term(x)), None)
                if top is None:
                    continue
                for x in range(lo, top + 1):
                    ea = la.entries[x - la.offset - 1]
                    eb = lb.entries[x - lb.offset - 1]
                    if ea != eb:
                        self.fail(f"log matching: {a} and {b} differ at {x} below {top}")

    # ------------------------------------------------------------ helpers

    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        for node in self.nodes.values():
            is_leader = node.up and node.raft.role == Role.LEADER
            if is_leader and (best is None or node.raft.term > best.raft.term):
                best = node
        return best

    def propose(self, node_id: str, data: bytes) -> tuple[int, int] | None:
        node = self.nodes[node_id]
        try:
            return node.raft.propose(data)
        except NotLeaderError:
            return None

    def propose_conf_change(self, change: ConfChange) -> bool:
        leader = self.leader()
        if leader is None:
            return False
        try:
            leader.raft.propose_conf_change(change)
        except (NotLeaderError, LocalError):
            return False
        return True

    def read_index(self, node_id: str, ctx: bytes) -> bool:
        try:
            self.nodes[node_id].raft.read_index(ctx)
        except NoQuorumError:
            return False
        return True

    def wait_for(self, predicate: Any, max_steps: int) -> bool:
        for _ in range(max_steps):
            if predicate():
                return True
            self.step()
        return bool(predicate())
