"""Seeded random schedules over simulated 3- and 5-node Raft clusters.

Each schedule injects partitions, message loss, duplication and reordering,
crashes (some in the middle of persisting a Ready, losing unsynced writes) and
restarts, and in some schedules membership changes, while clients put, cas and
read (ReadIndex, on leaders and followers).  RaftNet checks election safety,
leader completeness and state machine safety on every Ready; at the end the
network heals and we check log matching, that every acknowledged write is
applied everywhere, and that the client history is linearizable.

``MESH_SEED=n`` replays one schedule; ``MESH_SEED_BASE=n`` shifts the seed range.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from agent.raft.messages import ConfChange, ConfChangeKind, Entry, Role
from sim.linearizability import UNKNOWN, Operation, check_kv
from sim.raftnet import MemoryStorage, RaftNet, SimNode

KEYS = ("x", "y")
OP_TIMEOUT = 40
FAULT_STEPS = 220
HEAL_STEPS = 600


@dataclass
class PendingOp:
    client: int
    op_no: int
    kind: str
    key: str
    args: tuple[Any, ...]
    call: int
    node: str
    deadline: int
    term: int = 0
    index: int = 0


class Workload:
    def __init__(self, net: RaftNet, rng: random.Random, clients: int) -> None:
        self.net = net
        self.rng = rng
        self.clock = 0
        self.history: list[Operation] = []
        self.acked: list[tuple[int, int]] = []
        self.pending: dict[int, PendingOp | None] = {c: None for c in range(clients)}
        self.op_no = 0
        self.values: list[str | None] = [None]
        self.issuing = True
        net.on_write_result = self._write_result
        net.on_read_state = self._read_state

    def tick(self) -> None:
        self.clock += 1
        for client, op in self.pending.items():
            if op is not None and self.net.now >= op.deadline:
                self._finish(op, UNKNOWN if op.kind != "get" else None, lost_read=op.kind == "get")
            elif op is None and self.issuing and self.rng.random() < 0.3:
                self._issue(client)

    def _issue(self, client: int) -> None:
        net = self.net
        up = [n for n in sorted(net.nodes) if net.nodes[n].up]
        if not up:
            return
        leader = net.leader()
        node = leader.node_id if leader is not None and self.rng.random() < 0.7 else None
        node = node or self.rng.choice(up)
        self.op_no += 1
        key = self.rng.choice(KEYS)
        roll = self.rng.random()
        self.clock += 1
        if roll < 0.35:
            deadline = net.now + OP_TIMEOUT
            op = PendingOp(client, self.op_no, "get", key, (), self.clock, node, deadline)
            if not net.read_index(node, f"{client}:{self.op_no}".encode()):
                return
            self.pending[client] = op
            return
        value = f"v{self.op_no}"
        self.values.append(value)
        if roll < 0.7:
            kind, args = "put", (value,)
        else:
            kind, args = "cas", (self.rng.choice(self.values[-6:]), value)
        data = json.dumps([client, self.op_no, kind, key, *args]).encode()
        placed = net.propose(node, data)
        if placed is None:
            return  # NotLeaderError: definitely not applied, not part of the history
        op = PendingOp(client, self.op_no, kind, key, args, self.clock, node, net.now + OP_TIMEOUT)
        op.index, op.term = placed
        net.nodes[node].waiting_writes[op.index] = (op.term, data, op)
        self.pending[client] = op

    def _finish(self, op: PendingOp, output: Any, lost_read: bool = False) -> None:
        self.pending[op.client] = None
        if lost_read:
            return  # a read with no answer has no effect: leave it out
        self.clock += 1
        ret = math.inf if output is UNKNOWN else self.clock
        self.history.append(Operation(op.client, op.key, op.kind, op.args, output, op.call, ret))

    def _write_result(self, node: SimNode, entry: Entry, want: Any, result: Any) -> None:
        term, data, op = want
        if self.pending.get(op.client) is not op:
            return  # timed out already: recorded as unknown
        if entry.term == term and entry.data == data:
            self.acked.append((entry.index, entry.term))
            self._finish(op, result)
        else:
            # Our entry was overwritten before commit: it never took effect.
            self.pending[op.client] = None

    def _read_state(self, node: SimNode, ctx: bytes) -> None:
        client_text, _, op_text = ctx.decode().partition(":")
        op = self.pending.get(int(client_text))
        if op is None or op.op_no != int(op_text) or op.node != node.node_id:
            return
        self._finish(op, node.kv.data.get(op.key))

    def abandon_all(self) -> None:
        for op in list(self.pending.values()):
            if op is not None:
                self._finish(op, UNKNOWN if op.kind != "get" else None, lost_read=op.kind == "get")


def run_schedule(seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    size = rng.choice((3, 3, 5))
    ids = [f"n{i}" for i in range(1, size + 1)]
    membership = rng.random() < 0.3
    voters = ids[:3] if membership else ids
    others = ids[3:] if membership else []
    if membership and size == 3:
        others = ["n4"]
    net = RaftNet(seed, voters, others)
    net.drop_rate = rng.choice((0.0, 0.02, 0.1))
    net.dup_rate = rng.choice((0.0, 0.05))
    net.max_delay = rng.choice((0, 1, 3))
    net.crash_in_ready_rate = rng.choice((0.0, 0.0, 0.002, 0.01))
    work = Workload(net, rng, clients=3)
    down_until: dict[str, int] = {}
    conf_changes = 0
    lies = restores = 0
    backups: dict[str, MemoryStorage] = {}
    every = sorted(net.nodes)
    for _ in range(FAULT_STEPS):
        r = rng.random()
        if r < 0.02:
            shuffled = every[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(shuffled) - 1)
            net.partition(shuffled[:cut], shuffled[cut:])
        elif r < 0.06:
            net.heal()
        elif r < 0.07:
            victim = rng.choice(every)
            if net.nodes[victim].up:
                net.crash(victim)
                down_until[victim] = net.now + rng.randint(5, 40)
        elif membership and r < 0.09:
            conf_changes += _random_conf_change(net, rng)
        elif r < 0.094:
            lies += _disk_lies(net, rng, down_until)
        elif r < 0.096:
            backed_up = rng.choice(every)
            backups[backed_up] = net.nodes[backed_up].storage.copy()
        elif r < 0.100 and backups:
            restores += _restore_backup(net, rng, backups, down_until)
        for victim, until in list(down_until.items()):
            if net.now >= until or net.nodes[victim].up:
                if not net.nodes[victim].up:
                    net.restart(victim)
                del down_until[victim]
        # a crash inside a Ready leaves nodes down without a restart time
        for node_id in every:
            if not net.nodes[node_id].up and node_id not in down_until:
                down_until[node_id] = net.now + rng.randint(5, 40)
        work.tick()
        net.step()
    # Heal everything and let the cluster converge.
    net.heal()
    net.drop_rate = net.dup_rate = net.crash_in_ready_rate = 0.0
    for node_id in every:
        if not net.nodes[node_id].up:
            net.restart(node_id)

    work.issuing = False

    def converged() -> bool:
        work.tick()
        leader = net.leader()
        if leader is None or leader.raft.log.term(leader.raft.commit_index) != leader.raft.term:
            return False
        members = (*leader.raft.conf.voters, *leader.raft.conf.learners)
        target = leader.raft.commit_index
        return all(net.nodes[m].raft.applied_index == target for m in members) and not any(
            work.pending.values()
        )

    if not net.wait_for(converged, HEAL_STEPS):
        net.fail("cluster did not converge after healing")
    work.abandon_all()
    net.check_log_matching()
    leader = net.leader()
    assert leader is not None
    for index, term in work.acked:
        entry = net.applied_by_index.get(index)
        if entry is None or entry.term != term:
            net.fail(f"acknowledged write ({index}, {term}) is not applied")
    for member in (*leader.raft.conf.voters, *leader.raft.conf.learners):
        if net.nodes[member].raft.applied_index < max((i for i, _ in work.acked), default=0):
            net.fail(f"{member} has not applied every acknowledged write")
        if net.nodes[member].kv.data != leader.kv.data:
            net.fail(f"{member} state differs from the leader's")
    bad = check_kv(work.history)
    if bad:
        net.fail(f"history not linearizable for keys {bad}: {work.history}")
    return {
        "ops": len(work.history),
        "acked": len(work.acked),
        "elections": net.elections,
        "conf": conf_changes,
        "lies": lies,
        "restores": restores,
        "repairs": net.repairs,
    }


def _unhealthy(node: SimNode) -> bool:
    """Damaged, or restored from a copy and not yet repaired: at most a minority."""
    return bool(node.storage.damaged or node.raft.damaged or node.storage.restored_from_copy)


def _restore_backup(
    net: RaftNet, rng: random.Random, backups: dict[str, MemoryStorage], down_until: dict[str, int]
) -> int:
    """A voter's data dir is put back from an older copy (its backup): only the
    start check can tell, and only while the leader that saw it is still leading."""
    leader = net.leader()
    if leader is None:
        return 0
    voters = leader.raft.conf.voters
    damaged = [n for n in net.nodes.values() if _unhealthy(n)]
    candidates = [v for v in voters if v in backups and v != leader.node_id and net.nodes[v].up]
    settling = leader.raft.pending_conf_index > leader.raft.commit_index  # voters may shrink
    if settling or len(voters) < 3 or len(damaged) + 1 > (len(voters) - 1) // 2 or not candidates:
        return 0
    victim = rng.choice(candidates)
    net.restore_copy(victim, backups.pop(victim))
    down_until[victim] = net.now + rng.randint(1, 5)
    return 1


def _disk_lies(net: RaftNet, rng: random.Random, down_until: dict[str, int]) -> int:
    """The "disk lies" fault: a voter's disk drops its last few synced entries
    (its acknowledgement record survives, so it restarts knowing it is damaged).
    At most a minority of the voters is damaged at once, so the others can
    commit its demotion and repair it."""
    leader = net.leader()
    if leader is None:
        return 0
    voters = leader.raft.conf.voters
    damaged = [n for n in net.nodes.values() if _unhealthy(n)]
    settling = leader.raft.pending_conf_index > leader.raft.commit_index  # voters may shrink
    if settling or len(voters) < 3 or len(damaged) + 1 > (len(voters) - 1) // 2:
        return 0
    victim = rng.choice(voters)
    if not net.nodes[victim].up:
        return 0
    lost = net.lie(victim, rng.randint(1, 6))
    down_until[victim] = net.now + rng.randint(5, 40)
    return int(lost > 0)


def _random_conf_change(net: RaftNet, rng: random.Random) -> int:
    leader = net.leader()
    if leader is None:
        return 0
    conf = leader.raft.conf
    outsiders = [n for n in sorted(net.nodes) if not conf.is_member(n)]
    options: list[ConfChange] = []
    options += [ConfChange(ConfChangeKind.ADD_LEARNER, n) for n in outsiders]
    options += [ConfChange(ConfChangeKind.PROMOTE, n) for n in conf.learners]
    repairing = any(_unhealthy(n) for n in net.nodes.values())
    if len(conf.voters) > 2 and not repairing:
        # (while a node is damaged, the others must stay a healthy majority)
        options += [ConfChange(ConfChangeKind.REMOVE, n) for n in conf.voters]
    options += [ConfChange(ConfChangeKind.REMOVE, n) for n in conf.learners]
    if not options:
        return 0
    return int(net.propose_conf_change(rng.choice(options)))


def _seeds(count: int, offset: int) -> list[int]:
    if os.environ.get("MESH_SEED"):
        return [int(os.environ["MESH_SEED"])]
    base = int(os.environ.get("MESH_SEED_BASE", "0"))
    return [base + offset + i for i in range(count)]


def _run_many(seeds: list[int], want_size: int | None) -> dict[str, int]:
    totals: dict[str, int] = {"schedules": 0}
    started = time.perf_counter()
    for seed in seeds:
        try:
            stats = run_schedule(seed)
        except Exception as exc:
            raise AssertionError(f"schedule failed; replay with MESH_SEED={seed}: {exc}") from exc
        totals["schedules"] += 1
        for k, v in stats.items():
            totals[k] = totals.get(k, 0) + v
    totals["ms"] = int((time.perf_counter() - started) * 1000)
    print(totals)
    return totals


def test_random_schedules_first_half() -> None:
    totals = _run_many(_seeds(250, 0), None)
    if not os.environ.get("MESH_SEED"):
        assert totals["acked"] > totals["schedules"] * 5, "schedules made too little progress"


def test_random_schedules_second_half() -> None:
    totals = _run_many(_seeds(250, 250), None)
    if not os.environ.get("MESH_SEED"):
        assert totals["elections"] >= totals["schedules"], "no elections happened"


def test_a_schedule_is_deterministic() -> None:
    assert run_schedule(7) == run_schedule(7)


def test_crashed_leader_is_replaced() -> None:
    net = RaftNet(3, ["a", "b", "c"])
    assert net.wait_for(lambda: net.leader() is not None, 100)
    old = net.leader()
    assert old is not None
    net.crash(old.node_id)
    assert net.wait_for(lambda: (lead := net.leader()) is not None and lead.node_id != old.node_id, 100)
    new = net.leader()
    assert new is not None and new.raft.role == Role.LEADER and new.raft.term > old.raft.term
