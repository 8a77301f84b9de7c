"""The PBFT core on small, hand-built scenarios (the seeded schedules are in tests/sim)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from sim.pbft_byzantine import Equivocate
from sim.pbftnet import SIM_CONFIG, PbftNet, make_keys

from agent import wire
from agent.errors import ConfigError
from agent.pbft.config import PbftConfig, fault_bound
from agent.pbft.core import PbftReplica
from agent.pbft.messages import (
    WIRE_TYPES,
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Request,
    ViewChange,
)
from agent.pbft.signing import batch_digest, payload, sign


def _put(net: PbftNet, client: str, key: str, value: str) -> int:
    return net.submit(client, ["put", key, value])


def _results(net: PbftNet) -> list[tuple[str, int, object]]:
    got: list[tuple[str, int, object]] = []
    net.on_result = lambda c, rid, result: got.append((c, rid, json.loads(result)))
    return got


def test_a_request_commits_and_executes_in_order_everywhere() -> None:
    net = PbftNet(1)
    got = _results(net)
    _put(net, "c0", "x", "1")
    assert net.wait_for(lambda: len(got) == 1, 50)
    net.submit("c0", ["get", "x"])
    assert net.wait_for(lambda: len(got) == 2, 50)
    assert got[1][2] == "1"
    net.run(10)
    assert {r.core.executed for r in net.replicas.values()} == {2}
    assert all(r.kv.data == {"x": "1"} for r in net.replicas.values())


def test_checkpoints_become_stable_and_collect_the_log() -> None:
    net = PbftNet(2)
    got = _results(net)
    k = SIM_CONFIG.checkpoint_interval
    for i in range(3 * k):
        _put(net, f"c{i % 3}", "x", str(i))
        assert net.wait_for(lambda i=i: len(got) == i + 1, 80)
    net.run(20)
    for r in net.replicas.values():
        assert r.core.low >= 2 * k
        assert all(seq > r.core.low for seq in r.core.log.slots)
        assert len(r.core.stable_checkpoint.proof) >= 3


def test_a_crashed_primary_is_replaced_and_writes_resume() -> None:
    net = PbftNet(3)
    got = _results(net)
    _put(net, "c0", "x", "a")
    assert net.wait_for(lambda: len(got) == 1, 50)
    net.crash("r0")
    _put(net, "c1", "x", "b")
    assert net.wait_for(lambda: len(got) == 2, 400)
    live = [r for r in net.replicas.values() if r.up]
    assert all(r.core.view >= 1 and r.core.active for r in live)
    assert all(r.core.primary != "r0" for r in live)
    assert all(r.kv.data["x"] == "b" for r in live)


def test_a_replica_behind_a_stable_checkpoint_catches_up_by_state_transfer() -> None:
    net = PbftNet(4)
    got = _results(net)
    net.crash("r3")
    k = SIM_CONFIG.checkpoint_interval
    for i in range(2 * k + 2):
        _put(net, f"c{i % 3}", "k", str(i))
        assert net.wait_for(lambda i=i: len(got) == i + 1, 80)
    net.restart("r3")
    assert net.wait_for(lambda: net.replicas["r3"].core.low >= 2 * k, 300)
    assert net.state_transfers >= 1
    assert net.wait_for(lambda: net.replicas["r3"].kv.data == net.replicas["r0"].kv.data, 300)


def test_an_equivocating_primary_is_caught_and_replaced() -> None:
    net = PbftNet(5)
    got = _results(net)
    net.make_byzantine("r0", Equivocate(net.rng))
    _put(net, "c0", "x", "1")
    _put(net, "c1", "y", "2")
    assert net.wait_for(lambda: len(got) == 2, 600)
    culprits = {ev.culprit for _, ev in net.evidence}
    assert "r0" in culprits
    ev = next(ev for _, ev in net.evidence if ev.culprit == "r0" and ev.kind == "pre-prepare")
    assert ev.first.digest != ev.second.digest
    assert net.verifier.verify("r0", payload(ev.first), ev.first.sig)
    assert net.verifier.verify("r0", payload(ev.second), ev.second.sig)
    assert all(r.core.view >= 1 for r in net.correct())


def _group() -> tuple[dict, object, tuple[str, ...]]:
    import random

    ids = ["r0", "r1", "r2", "r3", "c0"]
    signers, verifier = make_keys(ids, random.Random(9), real=False)
    return signers, verifier, ("r0", "r1", "r2", "r3")


def test_forged_and_out_of_window_messages_are_dropped() -> None:
    signers, verifier, replicas = _group()
    r1 = PbftReplica(SIM_CONFIG, signers["r1"], verifier, replicas)
    req = sign(signers["c0"], Request("c0", 1, b'["put","x","1"]'))
    pp = sign(signers["r0"], PrePrepare("r0", 0, 1, batch_digest((req,)), (req,)))
    forged = dataclasses.replace(pp, sig=signers["r2"].sign(payload(pp)))
    r1.step(forged)
    assert r1.checker.rejected == 1 and not r1.log.slots
    far = sign(signers["r0"], PrePrepare("r0", 0, r1.high + 1, batch_digest((req,)), (req,)))
    r1.step(far)
    assert not r1.log.slots and r1.dropped >= 1
    wrong_batch = sign(signers["r0"], PrePrepare("r0", 0, 1, batch_digest(()), (req,)))
    r1.step(wrong_batch)
    assert not r1.log.slots
    r1.step(pp)
    assert r1.log.slots[1].pp == pp
    rd = r1.ready()
    assert rd is not None and any(isinstance(o.msg, Prepare) for o in rd.messages)


def test_a_second_preprepare_for_one_seq_is_evidence() -> None:
    signers, verifier, replicas = _group()
    r1 = PbftReplica(SIM_CONFIG, signers["r1"], verifier, replicas)
    req = sign(signers["c0"], Request("c0", 1, b"a"))
    one = sign(signers["r0"], PrePrepare("r0", 0, 1, batch_digest((req,)), (req,)))
    two = sign(signers["r0"], PrePrepare("r0", 0, 1, batch_digest(()), ()))
    r1.step(one)
    r1.step(two)
    assert [e.kind for e in r1.evidence] == ["pre-prepare"]
    rd = r1.ready()
    assert rd is not None and rd.evidence == r1.evidence
    sent = {type(o.msg).__name__ for o in rd.messages}
    assert {"PrePrepare", "ViewChange"} <= sent  # both shown to the others; view changes
    assert (r1.view, r1.active) == (1, False)


def test_a_restarted_replica_never_signs_a_conflicting_prepare() -> None:
    signers, verifier, replicas = _group()
    net_storage = []
    r1 = PbftReplica(SIM_CONFIG, signers["r1"], verifier, replicas)
    req = sign(signers["c0"], Request("c0", 1, b"a"))
    one = sign(signers["r0"], PrePrepare("r0", 0, 1, batch_digest((req,)), (req,)))
    r1.step(one)
    rd = r1.ready()
    assert rd is not None
    net_storage.extend(rd.records)
    from agent.pbft.messages import Restored

    again = PbftReplica(SIM_CONFIG, signers["r1"], verifier, replicas, Restored(records=tuple(net_storage)))
    two = sign(signers["r0"], PrePrepare("r0", 0, 1, batch_digest(()), ()))
    again.step(two)
    rd = again.ready()
    sent = [o.msg for o in rd.messages] if rd else []
    assert not any(isinstance(m, Prepare) and m.digest == two.digest for m in sent)


def test_every_message_round_trips_the_wire_codec() -> None:
    signers, _, _ = _group()
    req = sign(signers["c0"], Request("c0", 1, b"op"))
    pp = sign(signers["r0"], PrePrepare("r0", 1, 2, batch_digest((req,)), (req,)))
    prep = sign(signers["r1"], Prepare("r1", 1, 2, pp.digest))
    cp = sign(signers["r2"], Checkpoint("r2", 8, b"d" * 32))
    vc = sign(signers["r1"], ViewChange("r1", 2, 8, b"d" * 32, (cp,), (PreparedCert(pp, (prep,)),)))
    nv = sign(signers["r2"], NewView("r2", 2, (vc,), (pp,)))
    commit = sign(signers["r3"], Commit("r3", 1, 2, pp.digest))
    for msg in (req, pp, prep, cp, vc, nv, commit):
        assert wire.decode(wire.encode(msg)) == msg
    assert set(WIRE_TYPES) <= set(range(90, 110))
    assert all(n in wire.registry_loaded() for n in WIRE_TYPES)


def test_config_documents_and_validates() -> None:
    assert PbftConfig.lan().validate().window == 2 * PbftConfig.lan().checkpoint_interval
    assert PbftConfig.local().validate().tick_interval < PbftConfig.lan().tick_interval
    with pytest.raises(ConfigError, match="view_change_ticks"):
        PbftConfig(view_change_ticks=2, resend_ticks=5).validate()
    with pytest.raises(ConfigError, match="window_factor"):
        PbftConfig(window_factor=1).validate()
    assert [fault_bound(n) for n in (4, 5, 6, 7, 10)] == [1, 1, 1, 2, 3]


def test_a_primary_that_steps_down_hands_over_to_the_next_view() -> None:
    net = PbftNet(6)
    got = _results(net)
    net.replicas["r0"].core.request_view_change()
    assert net.wait_for(lambda: all(r.core.view == 1 and r.core.active for r in net.replicas.values()), 200)
    assert {r.core.primary for r in net.replicas.values()} == {"r1"}
    _put(net, "c0", "x", "after")
    assert net.wait_for(lambda: len(got) == 1, 100)


def test_a_follower_applies_batches_that_f_plus_1_replicas_signed() -> None:
    import random

    from agent.pbft.client import PbftFollower
    from agent.pbft.messages import Outbound

    net = PbftNet(7)
    signers, _ = make_keys(["o1"], random.Random(1), real=False)
    follower = PbftFollower(signers["o1"], net.verifier, net.replica_ids, SIM_CONFIG.window)
    for r in net.replicas.values():
        r.core.observers = ("o1",)
    delivered = net._deliver

    def deliver(frm: str, out: Outbound) -> None:
        if out.to == "o1":
            follower.step(out.msg)  # type: ignore[arg-type]
        else:
            delivered(frm, out)

    net._deliver = deliver  # type: ignore[method-assign]
    got = _results(net)
    for i in range(5):
        _put(net, "c0", "x", str(i))
        assert net.wait_for(lambda i=i: len(got) == i + 1, 80)
    net.run(5)
    reset, batches = follower.take()
    assert reset is None and [b.seq for b in batches] == list(range(1, 6))
    assert follower.applied == net.replicas["r0"].core.executed
