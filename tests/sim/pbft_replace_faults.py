"""Replica replacement under faults, simulated: crashes around the switch, and a
host that missed replacements (``test_pbft_replace_faults.py``; sweeps:
``python tests/sim/pbft_replace_sweep.py``).

``FaultedReplace`` plays the runtime's part as ``pbft_roles.py`` does: the
group file (``<data_dir>/pbft/group``) is written when a host retires into a
follower or joins as a replica, and a restart builds the role from it (else
from the genesis group) over the durable state ``MemoryStorage`` kept -- the
same files ``pbft_storage.py`` keeps (hard state, stable checkpoint, the log of
what was signed).  A replica's stable snapshot naming a group without it is
reset (``_become_replica``).  A follower restarts empty (applied 0) and
catches up by state transfer, as the runtime's does.

A crash can also tear a Ready: written, not synced (``crash_in_ready``).

Checks, besides ``PbftNet``'s safety invariants on every Ready (one batch per
seq, one state per checkpoint, nothing executed past a pending fence):

* every acknowledged write is in the state of every host at the end;
* every correct replica converges to one group (the expected one), nothing pending;
* liveness after the fault heals: a write and a read commit, then again with
  one more member of the final group crashed (so every other member, the
  restarted one included, must take part).
"""

from __future__ import annotations

import json
import random
from typing import Any

from agent.pbft.client import PbftFollower
from agent.pbft.messages import CommittedBatch, Outbound, Ready, Request
from agent.pbft.reconfig import encode_replace, split_snapshot
from agent.pbft.viewchange import Group
from sim.pbftnet import KV, MemoryStorage, PbftNet, SimFollower, SimReplica

STEPS = 3000
PHASES = ("submitted", "decided", "switching", "after")
"""When the victim crashes: just after the replace request is sent; when the first
replica executed it (between commit and boundary); when the first replica switched
(around the boundary, others still before it); a little after every one switched."""


class TornNet(PbftNet):
    """``crash_in_ready``: that node crashes after writing its next Ready, before the sync.
    ``seq_of``: the seq each request was executed at, and the request."""

    crash_in_ready: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seq_of: dict[tuple[str, int], tuple[int, Request]] = {}

    def _execute(self, node: SimReplica, batch: CommittedBatch) -> None:
        for request in batch.requests:
            self.seq_of.setdefault((request.client, request.rid), (batch.seq, request))
        super()._execute(node, batch)

    def _drain(self, node: SimReplica) -> None:
        if self.crash_in_ready == node.node_id and node.up:
            rd: Ready | None = node.core.ready()
            if rd is not None:
                node.storage.write(rd)
                self.crash_in_ready = None
                self.crash(node.node_id)
                return
        super()._drain(node)


class FaultedReplace:
    def __init__(self, seed: int, n: int = 4, lossy: bool = True, spares: int = 1) -> None:
        self.seed = seed
        self.net = net = TornNet(seed, n=n, clients=2, spares=spares)
        self.rng = random.Random(seed * 104_729)
        self.results: dict[tuple[str, int], Any] = {}
        net.on_result = lambda client, rid, result: self.results.setdefault((client, rid), json.loads(result))
        if lossy:
            net.drop_rate = self.rng.choice([0.0, 0.05, 0.1])
            net.dup_rate = 0.05
            net.max_delay = self.rng.choice([1, 3])
        self.group_file: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], int] | None]] = {}
        """The runtime's ``<data_dir>/pbft/group`` per host."""
        self.down: set[str] = set()
        self.acked: dict[str, str] = {}
        """key -> value of every write a client saw acknowledged."""
        self._writes = 0

    # ------------------------------------------------------------ the runtime's part

    def fail(self, what: str) -> None:
        raise AssertionError(f"MESH_SEED={self.seed} step={self.net.now}: {what}")

    def watch(self) -> None:
        """Admit a replica that entered the group, retire one that left (``_check_roles``)."""
        net = self.net
        hosts = {*net.replica_ids, *net.spare_ids}
        for node in list(net.replicas.values()):
            core = node.core
            # autopilot: every live host outside the group is an observer (EXECUTEDs to it)
            core.observers = tuple(sorted(hosts - set(core.group.replicas)))
            if node.up and core.retired and node.node_id not in net.followers:
                prev = core.membership.previous
                previous = (prev[0].replicas, prev[1]) if prev else None
                self.group_file[node.node_id] = (core.group.replicas, previous)
                net.follow(node.node_id, node.kv, core)
                node.up = False  # the host runs a follower now, not this core
                self._admit_newcomers(core.group.replicas, previous)
            elif node.up and core.membership.previous is not None:
                prev = core.membership.previous
                self._admit_newcomers(core.group.replicas, (prev[0].replicas, prev[1]))
        for fid, sim_follower in list(net.followers.items()):
            group = sim_follower.follower.group.replicas
            if fid in group and fid not in self.down:
                prev = sim_follower.follower.membership.previous
                previous = (prev[0].replicas, prev[1]) if prev else None
                self.group_file[fid] = (group, previous)
                del net.followers[fid]
                self._start_replica(fid, group, previous)

    def _admit_newcomers(self, group: tuple[str, ...], previous: tuple[tuple[str, ...], int] | None) -> None:
        net = self.net
        for node_id in group:
            if node_id in net.replicas or node_id in self.down or node_id in net.followers:
                continue
            self.group_file[node_id] = (group, previous)
            net.admit(node_id, group, previous)  # type: ignore[arg-type]

    def _start_replica(
        self, node_id: str, group: tuple[str, ...], previous: tuple[tuple[str, ...], int] | None
    ) -> None:
        net = self.net
        node = net.replicas.get(node_id)
        storage = node.storage if node is not None else MemoryStorage()
        if storage.stable is not None:
            info, _ = split_snapshot(storage.stable.snapshot)
            if info is not None and node_id not in info.replicas:
                storage = MemoryStorage()  # a state from an earlier membership
        net._start(node_id, storage, replicas=group, previous=previous)
        for client in net.clients.values():
            client.group = Group(group)

    def crash(self, node_id: str) -> None:
        net = self.net
        self.down.add(node_id)
        if node_id in net.followers:
            del net.followers[node_id]
        elif node_id in net.replicas and net.replicas[node_id].up:
            net.crash(node_id)

    def restart(self, node_id: str) -> None:
        """Build the role from the group file (else genesis) over the durable state."""
        net = self.net
        self.down.discard(node_id)
        group, previous = self.group_file.get(node_id, (net.replica_ids, None))
        if node_id in group:
            self._start_replica(node_id, group, previous)
            return
        if node_id not in net.replicas:
            return  # NEW before it was admitted: ``watch`` admits it
        follower = PbftFollower(
            net.signers[node_id], net.verifier, group, net.config.window, stall_ticks=12,
            interval=net.config.checkpoint_interval, applied=0, previous=previous,
            handoff=net.replicas[node_id].storage.stable,  # as pbft_roles._build
        )
        net.followers[node_id] = SimFollower(follower, KV())

    # ------------------------------------------------------------ driving

    def wait(self, predicate: Any, steps: int = STEPS) -> bool:
        for _ in range(steps):
            if predicate():
                return True
            self.net.step()
            self.watch()
        return bool(predicate())

    def send(self, client: str, op: list[Any] | None, raw: bytes | None = None) -> int:
        net = self.net
        if raw is not None:
            rid = net.clients[client].submit(raw).rid
            net._client_out(client)
            return rid
        return net.submit(client, op)

    def call(self, client: str, op: list[Any] | None, raw: bytes | None = None) -> Any:
        rid = self.send(client, op, raw)
        if not self.wait(lambda: (client, rid) in self.results):
            views = self.net.views()
            self.fail(f"{client}'s {op or 'replace'} did not complete; views {views}, down {self.down}")
        return self.results[(client, rid)]

    def put(self, client: str) -> None:
        self._writes += 1
        key, value = f"k{self._writes}", f"v{self._writes}"
        if self.call(client, ["put", key, value]) is not None:
            self.fail(f"put {key} returned something")
        self.acked[key] = value

    def replace(self, old: str, new: str) -> int:
        ok, why, at = self.call("c1", None, raw=encode_replace(old, new))
        if not ok:
            self.fail(f"replace {old} -> {new} refused: {why}")
        return int(at)

    def live_replicas(self) -> list[SimReplica]:
        return [r for r in self.net.replicas.values() if r.up and r.node_id not in self.down]

    def converge(self, group: tuple[str, ...]) -> int:
        """Every live replica holds ``group`` with nothing pending; a quorum of them is
        in one active view at one executed seq, and the state of each of those, and of
        every follower, holds every acknowledged write.  Returns how many live replicas
        sit one view ahead, alone (limit 3 of the replacement notes: they rejoin at the
        next view change; the quorum does not need them)."""
        net = self.net
        quorum = Group(group).quorum

        def together() -> list[SimReplica]:
            reps = self.live_replicas()
            top = max(((r.core.view, r.core.executed) for r in reps if r.core.active), default=(0, 0))
            return [r for r in reps if r.core.active and (r.core.view, r.core.executed) == top]

        def settled() -> bool:
            reps = self.live_replicas()
            if {r.node_id for r in reps} != set(group) - self.down:
                return False
            if any(r.core.group.replicas != group or r.core.membership.pending for r in reps):
                return False
            core = together()
            if len(core) < (len(reps) if strict else min(quorum, len(reps))):
                return False
            target = core[0].core.executed
            return all(f.follower.applied >= target for f in net.followers.values())

        strict = True
        if not self.wait(settled, 600):
            strict = False
        if not self.wait(settled):
            got = {
                r.node_id: (r.core.group.replicas, r.core.executed, r.core.view)
                for r in net.replicas.values()
                if r.up
            }
            self.fail(f"no convergence on {group}: {got}, followers "
                      f"{ {k: f.follower.applied for k, f in net.followers.items()} }")
        core = together()
        states: list[tuple[str, KV]] = [(r.node_id, r.kv) for r in core]
        states += [(k, f.kv) for k, f in net.followers.items()]
        for name, kv in states:
            lost = {k: v for k, v in self.acked.items() if kv.data.get(k) != v}
            if lost:
                self.fail(f"{name} lost acknowledged writes {sorted(lost)[:5]}")
        return len(self.live_replicas()) - len(core)

    def live_after(self, group: tuple[str, ...], spare_from: set[str]) -> None:
        """A write and a read commit; then with one more member of ``group`` down
        (never one of ``spare_from``) a write commits again."""
        self.put("c0")
        key = f"k{self._writes}"
        if self.call("c1", ["get", key]) != self.acked[key]:
            self.fail("the read after healing missed the write")
        others = [r for r in group if r not in spare_from and r not in self.down]
        victim = self.rng.choice(others)
        self.crash(victim)
        self.put("c1")
        self.restart(victim)


class CrashAroundSwitch(FaultedReplace):
    """Limit 1: one host (OLD, NEW, the primary, or another replica) crashes around the
    switch and restarts from its durable state; sometimes with a torn Ready."""

    def run(self) -> dict[str, Any]:
        net = self.net
        old = self.rng.choice(net.replica_ids)
        new = net.spare_ids[0]
        phase = self.rng.choice(PHASES)
        role = self.rng.choice(["old", "new", "primary", "other"])
        if phase in ("submitted", "decided") and role == "new":
            role = "old"  # NEW does not run before the switch
        for _ in range(self.rng.randint(1, 12)):
            self.put(self.rng.choice(["c0", "c1"]))
        rid = self.send("c1", None, raw=encode_replace(old, new))
        writes = [self.send("c0", ["put", f"w{i}", f"x{i}"]) for i in range(self.rng.randint(0, 6))]
        trigger = {
            "submitted": lambda: True,
            "decided": lambda: any(r.core.membership.pending for r in net.replicas.values() if r.up),
            "switching": lambda: any(r.core.membership.previous for r in net.replicas.values()),
            "after": lambda: new in net.replicas
            and all(r.core.membership.previous for r in self.live_replicas()),
        }[phase]
        if not self.wait(trigger):
            self.fail(f"phase {phase} never came")
        if phase == "after":
            net.run(self.rng.randint(0, 40))
        victim = self._victim(role, old, new)
        torn = self.rng.random() < 0.5 and victim in net.replicas and net.replicas[victim].up
        if torn:
            net.crash_in_ready = victim
            self.wait(lambda: not net.replicas[victim].up, 200)
            net.crash_in_ready = None
        self.crash(victim)
        down_for = self.rng.choice([0, 20, 80, 250])
        self.wait(lambda: False, down_for)
        self.restart(victim)
        net.heal()
        if not self.wait(lambda: (("c1", rid) in self.results)):
            self.fail(f"the replace did not complete (victim {victim} {role}, phase {phase})")
        ok, why, _at = self.results[("c1", rid)]
        if not ok:
            self.fail(f"replace refused: {why}")
        for i, w in enumerate(writes):
            if not self.wait(lambda w=w: ("c0", w) in self.results):
                self.fail(f"write w{i} never completed")
            self.acked[f"w{i}"] = f"x{i}"
        group = tuple(new if r == old else r for r in net.replica_ids)
        alone = self.converge(group)
        self.live_after(group, spare_from=set())
        alone += self.converge(group)
        return {"victim": role, "phase": phase, "torn": torn, "steps": net.now, "alone": alone,
                "transfers": net.state_transfers, "view": max(r.core.view for r in self.live_replicas())}

    def _victim(self, role: str, old: str, new: str) -> str:
        if role == "old":
            return old
        if role == "new":
            return new
        live = [r for r in self.live_replicas() if r.node_id not in (old, new)]
        if role == "primary":
            primaries = [r.core.primary for r in live if r.core.active]
            if primaries:
                return max(set(primaries), key=primaries.count)
        return self.rng.choice([r.node_id for r in live])


class MissedTwoReplacements(FaultedReplace):
    """Limit 2: a host cut off through two successive replacements, then healed.  It
    knows only the group two switches ago; the state it is sent is proven by the
    group of now, which shares fewer than 2f+1 replicas with what it knows.

    ``replaced``: the lagging replica is the first replacement's OLD (it learns it was
    replaced only when it is back, and must then follow); else it is a replica of
    both new groups.  Checked: the host reaches the current group and state (every
    acknowledged write), and, a replica, takes part again: with one other member
    down a write commits (2f+1 needs it)."""

    def __init__(self, seed: int, replaced: bool = False) -> None:
        super().__init__(seed, n=4, lossy=True, spares=2)
        self.replaced = replaced

    def run(self) -> dict[str, Any]:
        net = self.net
        ids = list(net.replica_ids)
        self.rng.shuffle(ids)
        first_old, second_old, lagging = ids[0], ids[1], ids[2]
        if self.replaced:
            lagging = first_old
        others = [x for x in (*net.replica_ids, *net.spare_ids, *net.client_ids) if x != lagging]
        for _ in range(self.rng.randint(1, 6)):
            self.put(self.rng.choice(["c0", "c1"]))
        net.partition([lagging], others)
        self.replace(first_old, net.spare_ids[0])
        for _ in range(self.rng.randint(1, 10)):
            self.put(self.rng.choice(["c0", "c1"]))
        self.replace(second_old, net.spare_ids[1])
        for _ in range(self.rng.randint(2, 12)):
            self.put(self.rng.choice(["c0", "c1"]))
        group = tuple(
            net.spare_ids[0] if r == first_old else net.spare_ids[1] if r == second_old else r
            for r in net.replica_ids
        )
        net.heal()
        alone = self.converge(group)
        if self.replaced:
            if lagging not in net.followers:
                self.fail(f"{lagging} does not follow")
            self.put("c0")
            alone += self.converge(group)
        else:
            self.live_after(group, spare_from={lagging})
            alone += self.converge(group)
        return {"steps": net.now, "alone": alone, "transfers": net.state_transfers}


class ExecutedAgain(FaultedReplace):
    """Limit 3: a replica that restarted from its stable checkpoint (or, ``joined``, a
    replacement's NEW that reached it by state transfer) receives a request executed
    before that checkpoint again (a client retransmitting).  It must neither start a
    view change alone nor have the request ordered again: the checkpoint carries the
    digests of the requests executed in the K seqs up to it."""

    def __init__(self, seed: int, joined: bool = False) -> None:
        super().__init__(seed, n=4, lossy=False, spares=1)
        self.joined = joined

    def run(self) -> dict[str, Any]:
        net = self.net
        for _ in range(self.rng.randint(4, 12)):
            self.put(self.rng.choice(["c0", "c1"]))
        if self.joined:
            old = self.rng.choice([r for r in net.replica_ids if r != self._primary()])
            self.replace(old, net.spare_ids[0])
            group = tuple(net.spare_ids[0] if r == old else r for r in net.replica_ids)
            victim = net.spare_ids[0]
            def joined() -> bool:
                node = net.replicas.get(victim)
                return node is not None and node.core.active and node.core.low > 0

            if not self.wait(joined):
                self.fail(f"{victim} did not join")
        else:
            group = net.replica_ids
            victim = self.rng.choice([r for r in group if r != self._primary()])
            while net.replicas[victim].core.low == 0 and net.now < STEPS:
                self.put("c1")
            self.crash(victim)
            self.restart(victim)
        self.converge(group)
        # The last write executed at or before the victim's state (so within its last K seqs).
        low = net.replicas[victim].core.low
        _, first = max(
            ((seq, r) for seq, r in net.seq_of.values() if seq <= low and r.client in net.clients),
            key=lambda row: row[0],
        )
        views = net.views()
        applied: list[str] = []
        kv = net.replicas[victim].kv
        plain = kv.apply

        def counted(request: Any) -> bytes:
            if request.client == first.client and request.rid == first.rid:
                applied.append(victim)
            return plain(request)

        kv.apply = counted  # type: ignore[method-assign]
        for to in group:
            net.send(first.client, Outbound(to, first))
        net.run(4 * net.config.view_change_ticks)
        self.converge(group)
        if net.views() != views or not net.replicas[victim].core.active:
            self.fail(f"the request executed before sent again changed the view: {views} -> {net.views()}")
        if applied:
            self.fail("the request executed before was executed again")
        self.live_after(group, spare_from=set())
        return {"steps": net.now, "view": max(net.views().values())}

    def _primary(self) -> str:
        core = next(iter(self.net.replicas.values())).core
        return core.primary
