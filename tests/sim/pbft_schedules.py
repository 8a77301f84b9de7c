"""Seeded random schedules over simulated PBFT groups (n = 4 or 7).

A schedule has a fault phase -- message loss, duplication, reordering,
partitions, and either crashes of up to f replicas (some in the middle of
persisting a Ready) or f Byzantine replicas (``sim.pbft_byzantine``), a
silent or slow primary among them -- while clients put, cas and read through
the protocol.  Then the network heals, crashed replicas restart, and every
client operation must complete (liveness), one more write per client must
commit, and the history must be linearizable.  ``PbftNet`` checks safety and
the log bound on every Ready.

``MESH_SEED=n`` replays one schedule; ``MESH_SEED_BASE=n`` shifts the seed range.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from typing import Any

from sim.linearizability import UNKNOWN, Operation, check_kv
from sim.pbft_byzantine import BEHAVIOURS, Silent, Slow
from sim.pbftnet import PbftNet

KEYS = ("x", "y")
FAULT_STEPS = 160
ISSUE_AFTER_HEAL = 40
HEAL_STEPS = 900


@dataclass
class PendingOp:
    client: str
    rid: int
    kind: str
    key: str
    args: tuple[Any, ...]
    call: int


class Workload:
    """Each client has at most one operation outstanding; results come through
    the client's f+1 matching replies."""

    def __init__(self, net: PbftNet, rng: random.Random) -> None:
        self.net = net
        self.rng = rng
        self.clock = 0
        self.history: list[Operation] = []
        self.pending: dict[str, PendingOp | None] = {c: None for c in net.client_ids}
        self.values: list[str | None] = [None]
        self.issuing = True
        self.completed = 0
        net.on_result = self._result

    def tick(self, rate: float = 0.3) -> None:
        for client, op in self.pending.items():
            if op is None and self.issuing and self.rng.random() < rate:
                self.issue(client)

    def issue(self, client: str, kind: str | None = None) -> None:
        key = self.rng.choice(KEYS)
        roll = self.rng.random()
        self.clock += 1
        value = f"v{self.clock}"
        if kind == "put" or (kind is None and 0.35 <= roll < 0.7):
            kind, args = "put", (value,)
            self.values.append(value)
        elif kind is None and roll >= 0.7:
            kind, args = "cas", (self.rng.choice(self.values[-6:]), value)
            self.values.append(value)
        else:
            kind, args = "get", ()
        rid = self.net.submit(client, [kind, key, *args])
        self.pending[client] = PendingOp(client, rid, kind, key, args, self.clock)

    def _result(self, client: str, rid: int, result: bytes) -> None:
        op = self.pending.get(client)
        if op is None or op.rid != rid:
            return
        self.pending[client] = None
        self.clock += 1
        self.completed += 1
        client_no = self.net.client_ids.index(client)
        self.history.append(
            Operation(client_no, op.key, op.kind, op.args, json.loads(result), op.call, self.clock)
        )

    def idle(self) -> bool:
        return not any(self.pending.values())

    def abandon_all(self) -> None:
        for client, op in self.pending.items():
            if op is None:
                continue
            self.pending[client] = None
            if op.kind != "get":
                client_no = self.net.client_ids.index(client)
                self.history.append(
                    Operation(client_no, op.key, op.kind, op.args, UNKNOWN, op.call, math.inf)
                )


def plan_faults(net: PbftNet, rng: random.Random, mode: str, byzantine: int) -> list[str]:
    """Make ``byzantine`` replicas Byzantine; returns the ids that may crash."""
    ids = list(net.replica_ids)
    if mode == "crash":
        return ids
    chosen = rng.sample(ids, byzantine)
    special = rng.random()
    for i, node in enumerate(chosen):
        if i == 0 and special < 0.2:
            node = chosen[0] = "r0"  # the first primary
            behaviour: Any = Silent(rng) if special < 0.1 else Slow(rng)
        else:
            behaviour = rng.choice(BEHAVIOURS)(rng)
        net.make_byzantine(node, behaviour)
    return [n for n in ids if n not in chosen]


def fault_phase(net: PbftNet, rng: random.Random, work: Workload, crashable: list[str], max_down: int) -> int:
    crashes = 0
    down_until: dict[str, int] = {}
    for _ in range(FAULT_STEPS):
        r = rng.random()
        if r < 0.02:
            shuffled = list(net.replica_ids)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(shuffled) - 1)
            net.partition(shuffled[:cut], shuffled[cut:])
        elif r < 0.05:
            net.cut = set()
        elif r < 0.07 and max_down and crashable:
            down = [n for n in net.replica_ids if not net.replicas[n].up]
            victim = rng.choice(crashable)
            if net.replicas[victim].up and len(down) < max_down:
                net.crash(victim)
                crashes += 1
                down_until[victim] = net.now + rng.randint(5, 60)
        for victim, until in list(down_until.items()):
            if net.now >= until:
                if not net.replicas[victim].up:
                    net.restart(victim)
                del down_until[victim]
        for node_id in net.replica_ids:  # crashed inside a Ready: restart later
            if not net.replicas[node_id].up and node_id not in down_until:
                down_until[node_id] = net.now + rng.randint(5, 60)
        work.tick()
        net.step()
    return crashes


def heal_phase(net: PbftNet, work: Workload) -> None:
    net.heal()
    for node_id in net.replica_ids:
        if not net.replicas[node_id].up:
            net.restart(node_id)
    for _ in range(ISSUE_AFTER_HEAL):
        work.tick()
        net.step()
    work.issuing = False
    if not net.wait_for(work.idle, HEAL_STEPS):
        net.fail(f"operations did not complete after healing (views {net.views()})")
    for client in net.client_ids:  # liveness: fresh writes commit
        work.issue(client, "put")
    if not net.wait_for(work.idle, HEAL_STEPS):
        net.fail(f"fresh writes did not commit after healing (views {net.views()})")


def run_schedule(seed: int, real_signatures: bool = False, over: bool = False) -> dict[str, int]:
    """One schedule; ``over``: f+1 Byzantine replicas (recorded, not asserted)."""
    rng = random.Random(seed)
    n = rng.choice((4, 4, 4, 7))
    f = (n - 1) // 3
    net = PbftNet(seed, n=n, clients=3, real_signatures=real_signatures)
    net.drop_rate = rng.choice((0.0, 0.02, 0.1))
    net.dup_rate = rng.choice((0.0, 0.05))
    net.max_delay = rng.choice((0, 1, 3))
    mode = "byzantine" if over or rng.random() < 0.5 else "crash"
    count = f + 1 if over else (f if mode == "byzantine" else 0)
    crashable = plan_faults(net, rng, mode, count)
    max_down = max(0, f - count)
    if mode == "crash":
        net.crash_in_ready_rate = rng.choice((0.0, 0.002, 0.01))
    work = Workload(net, rng)
    crashes = fault_phase(net, rng, work, crashable, max_down)
    heal_phase(net, work)
    work.abandon_all()
    bad = check_kv(work.history)
    if bad:
        net.fail(f"history not linearizable for keys {bad}")
    correct = net.correct()
    return {
        "ops": len(work.history),
        "byzantine_runs": int(mode == "byzantine"),
        "crashes": crashes,
        "view_changes": max(r.core.view_changes for r in correct),
        "executed": max(r.core.executed for r in correct),
        "evidence": len(net.evidence),
        "rejected_sigs": sum(r.core.checker.rejected for r in correct),
        "state_transfers": net.state_transfers,
    }


def seeds(count: int, offset: int) -> list[int]:
    if os.environ.get("MESH_SEED"):
        return [int(os.environ["MESH_SEED"])]
    base = int(os.environ.get("MESH_SEED_BASE", "0"))
    return [base + offset + i for i in range(count)]
