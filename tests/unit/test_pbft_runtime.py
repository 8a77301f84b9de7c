"""The PBFT runtime's pieces without processes: durable storage and cluster formation."""

from __future__ import annotations

import os
from pathlib import Path

from agent.identity_key import load_or_create_key, pbft_node_id
from agent.pbft.messages import (
    Checkpoint,
    Commit,
    Genesis,
    HardState,
    Prepare,
    PreparedCert,
    PrePrepare,
    StableCheckpoint,
    ViewChange,
)
from agent.pbft.signing import batch_digest, sign
from agent.runtime.pbft_cluster import PbftCluster
from agent.runtime.pbft_driver import decode_result, encode_result
from agent.runtime.pbft_storage import PbftStorage
from agent.state.machine import ApplyResult


def test_storage_keeps_records_hard_state_and_stable_checkpoints(tmp_path: Path) -> None:
    store = PbftStorage(str(tmp_path / "pbft"))
    assert store.load().records == ()
    pp = PrePrepare("a", 0, 3, batch_digest(()), (), b"s")
    prep = Prepare("b", 0, 3, pp.digest, b"t")
    cert = PreparedCert(pp, (prep,))
    late = Commit("a", 0, 12, b"d" * 32, b"u")
    vc = ViewChange("a", 1, 0, b"", (), (cert,), b"v")
    store.append([pp, cert, late, vc], HardState(1, False))
    store.close()
    again = PbftStorage(str(tmp_path / "pbft"))
    restored = again.load()
    assert restored.records == (pp, cert, late, vc) and restored.hard_state == HardState(1, False)
    proof = tuple(Checkpoint(n, 8, b"x" * 32, b"sig") for n in "abc")
    again.save_stable(StableCheckpoint(8, b"x" * 32, b"snapshot", proof))
    again.close()
    third = PbftStorage(str(tmp_path / "pbft")).load()
    assert third.stable == StableCheckpoint(8, b"x" * 32, b"snapshot", proof)
    assert third.records == (late, vc)  # at or below the stable checkpoint: gone


def test_a_torn_last_record_is_dropped(tmp_path: Path) -> None:
    store = PbftStorage(str(tmp_path))
    store.load()
    store.append([Commit("a", 0, 1, b"d" * 32, b"u")], None)
    store.close()
    with open(tmp_path / "log", "ab") as fh:
        fh.write(b"\x00\x00\x01\x00partial")
    assert len(PbftStorage(str(tmp_path)).load().records) == 1
    assert os.stat(tmp_path / "log").st_mode & 0o077 == 0


def _clusters(tmp_path: Path, count: int) -> list[PbftCluster]:
    out = []
    for i in range(count):
        key = load_or_create_key(str(tmp_path / f"n{i}"))
        out.append(PbftCluster(pbft_node_id(str(tmp_path / f"n{i}"), key), key, 4, None))
    return out


def test_keys_are_believed_only_for_the_id_they_derive(tmp_path: Path) -> None:
    a, b, c = _clusters(tmp_path, 3)
    sent: list[tuple[str, object]] = []
    b.gossip([a.node_id], lambda to, msg: sent.append((to, msg)))
    ((_, announce),) = sent
    assert a.on_announce(announce)  # type: ignore[arg-type]
    assert a.keys[b.node_id] == b.keys[b.node_id]
    claimed = type(announce)(c.node_id, announce.public, announce.sig)  # type: ignore[attr-defined]
    assert not a.on_announce(claimed) and c.node_id not in a.keys


def test_the_founder_waits_for_four_hosts_then_every_host_adopts_its_genesis(tmp_path: Path) -> None:
    nodes = _clusters(tmp_path, 5)
    founder = min(nodes, key=lambda n: n.node_id)
    for other in nodes:
        other.gossip(
            [n.node_id for n in nodes],
            lambda to, msg: next(n for n in nodes if n.node_id == to).on_announce(msg),
        )  # type: ignore[arg-type]
    assert founder.found({nodes[0].node_id}) is None or len(founder.keys) >= 4
    genesis = founder.found({n.node_id for n in nodes})
    assert genesis is not None and len(genesis.replicas) == 4 and founder.node_id in genesis.replicas
    assert genesis.replicas == tuple(sorted(n.node_id for n in nodes))[:4]
    for other in nodes:
        if other is not founder:
            assert other.on_genesis(genesis)
            assert other.genesis == genesis
    forged = Genesis(founder.node_id, genesis.replicas, genesis.keys, b"\x00" * 64)
    fresh = _clusters(tmp_path / "fresh", 1)[0]
    assert not fresh.on_genesis(forged)


def test_replies_encode_the_apply_result_deterministically() -> None:
    result = ApplyResult(True, {"index": 3, "ok": True}, None, [{"topic": "x"}])
    data = encode_result(result)
    assert data == encode_result(ApplyResult(True, {"index": 3, "ok": True}, None))
    back = decode_result(data)
    assert (back.ok, back.value, back.error) == (True, {"index": 3, "ok": True}, None)


def test_signed_messages_survive_the_log(tmp_path: Path) -> None:
    key = load_or_create_key(str(tmp_path))
    cluster = PbftCluster(pbft_node_id(str(tmp_path), key), key, 4, None)
    commit = sign(cluster.signer, Commit(cluster.node_id, 0, 1, b"d" * 32))
    store = PbftStorage(str(tmp_path / "pbft"))
    store.load()
    store.append([commit], None)
    store.close()
    (back,) = PbftStorage(str(tmp_path / "pbft")).load().records
    assert back == commit
