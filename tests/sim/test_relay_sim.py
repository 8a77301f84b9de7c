"""Partial partitions in simulation (issue 20): with the real link-state and relay
choice (``tests/sim/relaynet.py``), a cluster of 5 or 7 voters under random client
load through every node goes through a single link cut (leader-follower and
follower-follower), a bridge, a simplex link and a flapping link, for simulated
minutes.  Checked: the history is linearizable, SWIM declares no live node dead,
at most one leader change per cut (none while the leader keeps a majority
directly), and every node -- each reaches a majority through some path --
commits writes within 3 s through all of it.  A failing seed prints itself and
replays with ``MESH_SEED=<seed>``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.errors import NoQuorumError
from agent.raft.messages import Entry, Role
from sim.linearizability import UNKNOWN, Operation, check_kv
from sim.raftnet import SimNode
from sim.relaynet import LinkNet
from sim.swimnet import replay_hint, sim_seed

KEYS = ("a", "b", "c")
SERVE_STEPS = 30
"""3 s: a write or read answered later than this was not served."""
OP_TIMEOUT = 50
"""Steps after which a client gives up on an operation (its outcome: unknown)."""
CUT_S, HEAL_S = 30.0, 8.0
"""Simulated seconds each shape lasts, and the healed pause after it."""
WARMUP_STEPS = 60
READ_RESEND = 10
"""Steps after which an unanswered read is asked again (its ReadIndex may be lost)."""


@dataclass
class Op:
    client: int
    op_no: int
    kind: str
    key: str
    args: tuple[Any, ...]
    data: bytes
    call: int
    issued_at: int
    node: str
    sent: bool = False
    sent_at: int = 0
    phase: str = ""


@dataclass
class Tally:
    issued: int = 0
    served: int = 0


@dataclass
class Clients:
    """One client per node, writing (put, cas) and reading through that node."""

    net: LinkNet
    rng: random.Random
    history: list[Operation] = field(default_factory=list)
    pending: dict[str, Op | None] = field(default_factory=dict)
    tallies: dict[tuple[str, str], Tally] = field(default_factory=dict)
    phase: str = "warmup"
    clock: int = 0
    op_no: int = 0
    values: list[str | None] = field(default_factory=lambda: [None])

    def __post_init__(self) -> None:
        net = self.net
        self.pending = dict.fromkeys(net.nodes)
        net.on_write_result = self._write_result
        net.on_read_state = self._read_state
        net.on_forward = self._on_forward
        net.on_forward_result = self._on_forward_result

    def tick(self) -> None:
        net = self.net
        for node_id, op in self.pending.items():
            if op is not None and net.now - op.issued_at >= OP_TIMEOUT:
                self._finish(op, UNKNOWN)
            elif op is not None and (not op.sent or (
                    op.kind == "get" and net.now - op.sent_at >= READ_RESEND)):
                self._send(op)  # a read is safe to ask again; a write only if never proposed
            elif op is None and self.rng.random() < 0.25:
                self._issue(node_id)

    def _issue(self, node_id: str) -> None:
        self.op_no += 1
        self.clock += 1
        key = self.rng.choice(KEYS)
        roll = self.rng.random()
        client = int(node_id[1:])
        value = f"v{self.op_no}"
        args: tuple[Any, ...]
        if roll < 0.3:
            kind, args = "get", ()
        elif roll < 0.7:
            kind, args = "put", (value,)
        else:
            kind, args = "cas", (self.rng.choice(self.values[-6:]), value)
        if kind != "get":
            self.values.append(value)
        data = json.dumps([client, self.op_no, kind, key, *args]).encode()
        op = Op(client, self.op_no, kind, key, args, data, self.clock, self.net.now, node_id,
                phase=self.phase)
        self.pending[node_id] = op
        self.tallies.setdefault((self.phase, node_id), Tally()).issued += 1
        self._send(op)

    def _send(self, op: Op) -> None:
        net = self.net
        node = net.nodes[op.node]
        op.sent_at = net.now
        if op.kind == "get":
            try:
                node.raft.read_index(f"{op.node}:{op.op_no}".encode())
                op.sent = True
            except NoQuorumError:
                pass
            return
        if node.raft.role == Role.LEADER:
            index, term = node.raft.propose(op.data)
            node.waiting_writes[index] = (term, op.data, ("local", op.node, op.op_no))
            op.sent = True
        elif node.raft.leader_id:
            net.send_reliable("fwd", op.node, node.raft.leader_id, (op.op_no, op.data))
            op.sent = True

    # -- at the leader

    def _on_forward(self, leader: str, origin: str, payload: Any) -> None:
        op_no, data = payload
        node = self.net.nodes[leader]
        if node.raft.role != Role.LEADER:
            self.net.send_reliable("fwd_result", leader, origin, (op_no, "not_leader", None))
            return
        index, term = node.raft.propose(data)
        node.waiting_writes[index] = (term, data, ("fwd", origin, op_no))

    def _write_result(self, node: SimNode, entry: Entry, want: Any, result: Any) -> None:
        term, data, (how, origin, op_no) = want
        applied = entry.term == term and entry.data == data
        if how == "fwd":
            self.net.send_reliable("fwd_result", node.node_id, origin,
                                   (op_no, "" if applied else "lost", result))
        else:
            self._answer(origin, op_no, "" if applied else "lost", result)

    # -- back at the origin

    def _on_forward_result(self, origin: str, payload: Any) -> None:
        op_no, error, result = payload
        self._answer(origin, op_no, error, result)

    def _answer(self, origin: str, op_no: int, error: str, result: Any) -> None:
        op = self.pending.get(origin)
        if op is None or op.op_no != op_no:
            return  # timed out already: recorded as unknown
        if error == "not_leader":
            op.sent = False  # nothing was proposed: try the leader we know next
        elif error:
            self.pending[origin] = None  # overwritten before commit: never took effect
        else:
            self._finish(op, result)

    def _read_state(self, node: SimNode, ctx: bytes) -> None:
        origin, _, op_text = ctx.decode().partition(":")
        op = self.pending.get(origin)
        if op is not None and op.op_no == int(op_text) and origin == node.node_id:
            self._finish(op, node.kv.data.get(op.key))

    def _finish(self, op: Op, output: Any) -> None:
        self.pending[op.node] = None
        if output is UNKNOWN and op.kind == "get":
            return  # a read with no answer had no effect
        self.clock += 1
        ret = math.inf if output is UNKNOWN else self.clock
        self.history.append(Operation(op.client, op.key, op.kind, op.args, output, op.call, ret))
        if output is not UNKNOWN and self.net.now - op.issued_at <= SERVE_STEPS:
            self.tallies.setdefault((op.phase, op.node), Tally()).served += 1


Shape = Callable[[LinkNet, str, list[str]], None]


def leader_follower(net: LinkNet, leader: str, others: list[str]) -> None:
    net.cut_link(leader, others[0])


def follower_follower(net: LinkNet, leader: str, others: list[str]) -> None:
    net.cut_link(others[0], others[1])


def bridge(net: LinkNet, leader: str, others: list[str]) -> None:
    ids = sorted(net.nodes, key=lambda n: int(n[1:]))
    half = len(ids) // 2
    left, right = ids[:half], ids[half + 1:]  # the middle node reaches both sides
    for a in left:
        for b in right:
            net.cut_link(a, b)


def simplex(net: LinkNet, leader: str, others: list[str]) -> None:
    net.drop_direction(leader, others[0])


SHAPES: dict[str, Shape] = {
    "leader-follower": leader_follower,
    "follower-follower": follower_follower,
    "bridge": bridge,
    "simplex": simplex,
    "flapping": leader_follower,  # toggled every FLAP_S while the phase lasts
}
FLAP_S = 1.5
"""Simulated seconds between two flips of the flapping link."""


def run_shapes(seed: int, n: int, cut_s: float = CUT_S) -> dict[str, Any]:
    net = LinkNet(seed, n)
    rng = random.Random(seed ^ 0x5EED)
    clients = Clients(net, rng)
    dead: list[tuple[int, str, str]] = []

    def advance(steps: int) -> None:
        for _ in range(steps):
            net.step()
            clients.tick()
            if net.now % 10 == 0:
                dead.extend((net.now, a, b) for a, b in net.dead_seen())

    advance(WARMUP_STEPS)
    assert net.leader() is not None, f"seed={seed}: no leader after warm-up"
    changes: dict[str, int] = {}
    for name, shape in SHAPES.items():
        leader_node = net.leader()
        assert leader_node is not None, f"seed={seed}: no leader before {name}"
        leader = leader_node.node_id
        others = sorted((x for x in net.nodes if x != leader), key=lambda x: rng.random())
        before = len(net.leader_changes)
        clients.phase = name
        shape(net, leader, others)
        cut_steps = round(cut_s / 0.1)
        if name == "flapping":
            flip = round(FLAP_S / 0.1)
            for i in range(0, cut_steps, flip):
                advance(min(flip, cut_steps - i))
                if (i // flip) % 2 == 0:
                    net.heal()
                else:
                    shape(net, leader, others)
        else:
            advance(cut_steps)
        clients.phase = f"{name}/healed"
        net.heal()
        advance(round(HEAL_S / 0.1))
        changes[name] = len(net.leader_changes) - before
    for op in list(clients.pending.values()):
        if op is not None:
            clients._finish(op, UNKNOWN)
    return {"net": net, "clients": clients, "dead": dead, "changes": changes}


def check(seed: int, n: int) -> dict[str, Any]:
    out = run_shapes(seed, n)
    net: LinkNet = out["net"]
    clients: Clients = out["clients"]
    assert out["dead"] == [], f"seed={seed}: live nodes declared dead: {out['dead'][:5]}"
    # Every shape here leaves the leader a majority on direct paths: no change at all
    # (the issue's bound is at most one per cut).
    assert all(c == 0 for c in out["changes"].values()), f"seed={seed}: leader changes {out['changes']}"
    assert check_kv(clients.history) == [], f"seed={seed}: history not linearizable"
    for name in SHAPES:
        for node in net.nodes:
            tally = clients.tallies.get((name, node), Tally())
            assert tally.issued >= 5, f"seed={seed} {name} {node}: only {tally.issued} issued"
            assert tally.served >= 0.9 * tally.issued, (
                f"seed={seed} {name} {node}: served {tally.served} of {tally.issued} within 3 s")
    assert net.relayed > 0
    ratios = [t.served / t.issued for (phase, _n), t in clients.tallies.items() if phase in SHAPES]
    out["min_served"] = min(ratios)
    return out


@pytest.mark.parametrize("n,default_seed", [(5, 20), (5, 21), (7, 70), (7, 75), (7, 76)])
def test_partial_partitions_keep_every_node_served(n: int, default_seed: int) -> None:
    seed = sim_seed(default_seed)
    with replay_hint(seed):
        out = check(seed, n)
    # Printed for the report (pytest -s): how the cuts went.
    print(f"n={n} seed={seed} leader changes per shape {out['changes']} "
          f"relayed={out['net'].relayed} nacks={out['net'].relay_nacks} resent={out['net'].resent} "
          f"lowest share served within 3 s by a node in a cut {out['min_served']:.2f}")


def test_a_seed_replays_exactly() -> None:
    a = run_shapes(33, 5, cut_s=6.0)
    b = run_shapes(33, 5, cut_s=6.0)
    assert a["clients"].history == b["clients"].history
    assert a["net"].leader_changes == b["net"].leader_changes
