"""Replacing a PBFT replica through the protocol (``agent/pbft/reconfig.py``), simulated.

One schedule: a few writes, then a client's replace request (OLD -> NEW, OLD
sometimes the primary) ordered like any request; every correct replica decides
it at the same seq and switches at the same checkpoint (nothing above it runs
under the old group); NEW, admitted with nothing but the group, catches up by
state transfer; with f of the remaining old replicas crashed, a later write
still commits (NEW's votes are needed for 2f+1); the replaced replica stops
voting and follows the new group's batches.  ``PbftNet`` asserts safety (one
batch per seq, one state per checkpoint) on every Ready throughout.

Seeded: ``MESH_SEED=n`` replays one schedule; a failure names its seed.  24 schedules
with the stand-in signer (n = 4), 3 with Ed25519, 4 with n = 7.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from agent.pbft.reconfig import encode_replace
from sim.pbftnet import PbftNet

SCHEDULES = 24
STEPS = 3000


class Scenario:
    def __init__(self, seed: int, lossy: bool, real: bool = False, n: int = 4) -> None:
        self.seed = seed
        self.net = net = PbftNet(seed, n=n, clients=2, spares=1, real_signatures=real)
        self.rng = random.Random(seed * 7919)
        self.results: dict[tuple[str, int], Any] = {}
        net.on_result = lambda client, rid, result: self.results.setdefault(
            (client, rid), json.loads(result)
        )
        if lossy:
            net.drop_rate = self.rng.choice([0.05, 0.1, 0.2])
            net.dup_rate = 0.05
            net.max_delay = self.rng.choice([1, 3, 6])
        self.old = self.rng.choice(net.replica_ids)
        self.new = net.spare_ids[0]
        self.switched: set[str] = set()

    def fail(self, what: str) -> None:
        raise AssertionError(f"MESH_SEED={self.seed} step={self.net.now}: {what}")

    def call(self, client: str, op: Any, raw: bytes | None = None, steps: int = STEPS) -> Any:
        net = self.net
        if raw is not None:
            rid = net.clients[client].submit(raw).rid
            net._client_out(client)
        else:
            rid = net.submit(client, op)
        if not self.wait(lambda: (client, rid) in self.results, steps):
            self.fail(f"{client}'s {op or 'replace'} did not complete; views {net.views()}")
        return self.results[(client, rid)]

    def wait(self, predicate: Any, steps: int) -> bool:
        for _ in range(steps):
            if predicate():
                return True
            self.net.step()
            self.watch()
        return bool(predicate())

    def watch(self) -> None:
        """Play the runtime: admit NEW once a replica switched, make OLD a follower."""
        net = self.net
        for node in list(net.replicas.values()):
            core = node.core
            if node.node_id in self.switched or core.membership.previous is None:
                continue
            self.switched.add(node.node_id)
            prev = core.membership.previous
            if self.new not in net.replicas:
                net.admit(self.new, core.group.replicas, (prev[0].replicas, prev[1]))
                self.switched.add(self.new)
            if core.retired:
                net.follow(node.node_id, node.kv, core)

    def run(self) -> dict[str, int]:
        net = self.net
        for i in range(self.rng.randint(2, 20)):
            self.call(self.rng.choice(["c0", "c1"]), ["put", "x", f"v{i}"])
        outcome = self.call("c1", None, raw=encode_replace(self.old, self.new))
        ok, _why, at = outcome
        if not ok or at % net.config.checkpoint_interval:
            self.fail(f"replace refused or off a checkpoint: {outcome}")
        correct = [n for n in net.replica_ids if n != self.old]
        if not self.wait(lambda: all(r in self.switched for r in net.replica_ids), STEPS):
            self.fail(f"not every replica switched: {sorted(self.switched)}")
        for rid in net.replica_ids:
            prev = net.replicas[rid].core.membership.previous
            if prev is None or prev[1] != at:
                self.fail(f"{rid} switched at {prev and prev[1]}, the boundary is {at}")
        new_group = net.replicas[correct[0]].core.group.replicas
        if self.new not in new_group or self.old in new_group or len(new_group) != len(net.replica_ids):
            self.fail(f"new group {new_group}")
        newcomer = net.replicas[self.new].core
        if not self.wait(lambda: newcomer.executed >= at and newcomer.active, STEPS):
            self.fail(f"{self.new} did not catch up (executed {newcomer.executed}, boundary {at})")
        if newcomer.stable_checkpoint.seq < at:  # it started empty: only a state transfer gets it there
            self.fail(f"{self.new} executed {newcomer.executed} without the state at {at}")
        # f of the remaining old replicas crash: 2f+1 now needs NEW's votes.
        downs = self.rng.sample(correct, net.replicas[correct[0]].core.f)
        for down in downs:
            net.crash(down)
        got = self.call("c0", ["put", "x", "after"])
        if got is not None:
            self.fail(f"the write after the replacement returned {got}")
        if self.call("c1", ["get", "x"]) != "after":
            self.fail("the read after the replacement did not see the write")
        old_core = net.replicas[self.old].core
        if not old_core.retired or old_core.status()["retired"] is not True:
            self.fail(f"{self.old} still votes")
        follower = net.followers[self.old]
        target = max(net.replicas[r].core.executed for r in correct if r not in downs)
        if not self.wait(lambda: follower.follower.applied >= target, STEPS):
            self.fail(f"{self.old} did not follow: applied {follower.follower.applied} of {target}")
        if follower.kv.data.get("x") != "after":
            self.fail(f"{self.old} follows a different state: {follower.kv.data}")
        return {"boundary": at, "transfers": net.state_transfers, "steps": net.now,
                "view_changes": max(r.core.view for r in net.replicas.values())}


def _seeds(count: int, base: int) -> list[int]:
    forced = os.environ.get("MESH_SEED")
    return [int(forced)] if forced else list(range(base, base + count))


def test_a_replacement_is_agreed_and_switches_at_the_checkpoint() -> None:
    stats = Scenario(1, lossy=False).run()
    assert stats["transfers"] >= 1, stats


def test_replacements_under_message_loss_keep_safety_and_liveness() -> None:
    runs = [Scenario(seed, lossy=True).run() for seed in _seeds(SCHEDULES, 40_000)]
    print(f"{len(runs)} replacements under loss: boundaries {sorted({r['boundary'] for r in runs})}, "
          f"views up to {max(r['view_changes'] for r in runs)}, steps up to {max(r['steps'] for r in runs)}")


def test_replacements_with_ed25519() -> None:
    for seed in _seeds(3, 45_000):
        Scenario(seed, lossy=True, real=True).run()


def test_replacements_with_seven_replicas() -> None:
    for seed in _seeds(4, 47_000):
        Scenario(seed, lossy=True, n=7).run()  # f = 2 of the remaining old ones crash after


def test_a_replace_is_refused_for_a_non_replica_or_a_replica() -> None:
    scenario = Scenario(2, lossy=False)
    net = scenario.net
    refused = scenario.call("c0", None, raw=encode_replace("nobody", "r4"))
    assert refused == [False, "nobody is not a replica", 0]
    assert scenario.call("c0", None, raw=encode_replace("r0", "r1")) == [False, "r1 is already a replica", 0]
    assert all(r.core.group.replicas == net.replica_ids for r in net.replicas.values())
