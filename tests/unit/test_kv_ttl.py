"""KV TTL and search (issue 16): expiry decided in the log, glob/prefix search, snapshots."""

from __future__ import annotations

import asyncio

import pytest

from agent.errors import NoQuorumError, ProtocolError
from agent.runtime.kv_expiry import KvExpiry, expire_commands
from agent.state.commands import (
    MAX_EXPIRE_KEYS,
    KvExpire,
    KvPut,
    KvPutTtl,
    decode_command,
    encode_command,
)
from agent.state.kv import KvStore
from agent.state.machine import ApplyResult, StateMachine


def put_ttl(sm: StateMachine, index: int, key: str, ttl_ms: int, at: float, ns: str = "d") -> ApplyResult:
    return sm.apply(index, encode_command(KvPutTtl(ns, key, b"v-" + key.encode(), ttl_ms), "", at))


def test_put_ttl_expires_at_the_commands_time_plus_ttl() -> None:
    sm = StateMachine()
    result = put_ttl(sm, 1, "a", 1500, at=1000.0)
    assert result.ok and result.value == {"index": 1, "expires_at": 1001.5}
    entry = sm.kv_get("d", "a")
    assert entry is not None and entry.expires_at == 1001.5
    # Readers pass their clock: hidden from the expiry on, before any expire entry.
    assert sm.kv_get("d", "a", now=1001.4) is not None
    assert sm.kv_get("d", "a", now=1001.5) is None
    assert sm.kv_list("d", now=1001.6) == []
    assert sm.kv_list("d") == [["a", b"v-a"]]  # still in the replicated state


def test_expire_removes_only_keys_due_at_the_entrys_time() -> None:
    sm = StateMachine()
    put_ttl(sm, 1, "a", 1000, at=100.0)  # due 101
    put_ttl(sm, 2, "b", 5000, at=100.0)  # due 105
    sm.apply(3, encode_command(KvPut("d", "c", b"plain"), "", 100.0))
    assert sm.kv_due(now=102.0, limit=10) == {"d": ["a"]}
    # An expire naming keys not yet due (or without a TTL) leaves them alone.
    res = sm.apply(4, encode_command(KvExpire("d", ("a", "b", "c")), "", 102.0))
    assert res.ok and res.value == {"index": 4, "expired": ["a"]}
    assert [k for k, _ in sm.kv_list("d")] == ["b", "c"]


def test_a_key_written_again_keeps_its_new_value() -> None:
    sm = StateMachine()
    put_ttl(sm, 1, "a", 1000, at=100.0)
    sm.apply(2, encode_command(KvPut("d", "a", b"forever"), "", 100.5))  # clears the TTL
    assert sm.kv_due(now=500.0, limit=10) == {}
    res = sm.apply(3, encode_command(KvExpire("d", ("a",)), "", 500.0))
    assert res.value["expired"] == []
    entry = sm.kv_get("d", "a", now=500.0)
    assert entry is not None and entry.value == b"forever" and entry.expires_at is None
    # A new TTL replaces the old one.
    put_ttl(sm, 4, "a", 10_000, at=500.0)
    assert sm.kv.next_expiry() == 510.0


def test_delete_forgets_the_expiry() -> None:
    store = KvStore()
    store.put_ttl("n", "k", b"1", 1, expires_at=10.0)
    assert store.delete("n", "k")
    assert store.due(100.0, 10) == {} and store.next_expiry() is None


def test_snapshot_keeps_expiries_and_replicas_agree() -> None:
    a, b = StateMachine(), StateMachine()
    log = [
        encode_command(KvPutTtl("d", "x", b"1", 2000), "r1", 50.0),
        encode_command(KvPut("d", "y", b"2"), "r2", 50.0),
        encode_command(KvPutTtl("e", "z", b"3", 500), "r3", 51.0),
    ]
    for i, data in enumerate(log, 1):
        a.apply(i, data)
    b.restore(a.snapshot())
    assert b.snapshot() == a.snapshot()
    assert b.kv_due(now=52.0, limit=10) == {"d": ["x"], "e": ["z"]}
    expire = encode_command(KvExpire("d", ("x",)), "", 52.0)
    assert a.apply(4, expire).value == b.apply(4, expire).value == {"index": 4, "expired": ["x"]}
    assert a.snapshot() == b.snapshot()


def test_due_is_soonest_first_and_bounded() -> None:
    store = KvStore()
    for i in range(5):
        store.put_ttl("n", f"k{i}", b"", i, expires_at=10.0 - i)
    assert store.due(100.0, 2) == {"n": ["k4", "k3"]}


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("app/", ["app/db", "app/web/1", "app/web/2"]),  # no glob character: a prefix
        ("app/web/*", ["app/web/1", "app/web/2"]),
        ("*db*", ["app/db", "cache/db"]),
        ("app/web/?", ["app/web/1", "app/web/2"]),
        ("app/web/[2-9]", ["app/web/2"]),
        ("*/1", ["app/web/1"]),  # * crosses '/'
        ("APP/*", []),  # case-sensitive
        ("", ["app/db", "app/web/1", "app/web/2", "cache/db"]),
    ],
)
def test_search_by_glob_or_prefix(pattern: str, expected: list[str]) -> None:
    store = KvStore()
    for i, key in enumerate(["app/db", "app/web/1", "app/web/2", "cache/db"], 1):
        store.put("n", key, key.encode(), i)
    assert [k for k, _ in store.search("n", pattern)] == expected


def test_search_hides_expired_keys() -> None:
    store = KvStore()
    store.put("n", "a1", b"", 1)
    store.put_ttl("n", "a2", b"", 2, expires_at=5.0)
    assert [k for k, _ in store.search("n", "a*", now=4.0)] == ["a1", "a2"]
    assert [k for k, _ in store.search("n", "a*", now=5.0)] == ["a1"]


def test_ttl_bounds_and_round_trip() -> None:
    data = encode_command(KvPutTtl("d", "k", b"v", 250), "rid", 1.0)
    cmd = decode_command(data)
    assert cmd.body == KvPutTtl("d", "k", b"v", 250)
    for bad in (KvPutTtl("d", "k", b"v", 0), KvPutTtl("d", "", b"v", 5),
                KvExpire("d", ()), KvExpire("d", ("k",) * (MAX_EXPIRE_KEYS + 1))):
        with pytest.raises(ProtocolError):
            encode_command(bad, "", 1.0)


def test_expire_commands_batch_per_namespace() -> None:
    due = {"b": ["x"], "a": [f"k{i}" for i in range(MAX_EXPIRE_KEYS + 3)]}
    bodies = [decode_command(c).body for c in expire_commands(due, 9.0)]
    assert [(b.ns, len(b.keys)) for b in bodies if isinstance(b, KvExpire)] == [
        ("a", MAX_EXPIRE_KEYS), ("a", 3), ("b", 1)]


class _Raft:
    """Below the sweep: a leader flag and a state machine that commits at once."""

    def __init__(self, sm: StateMachine, leader: bool) -> None:
        self.sm, self.leader, self.index, self.fail = sm, leader, sm.applied_index, False

    def is_leader(self) -> bool:
        return self.leader

    async def propose(self, command: bytes) -> ApplyResult:
        if self.fail:
            raise NoQuorumError("no quorum")
        self.index += 1
        return self.sm.apply(self.index, command)


def test_only_the_leader_sweeps_and_a_failed_commit_is_retried() -> None:
    sm = StateMachine()
    put_ttl(sm, 1, "a", 100, at=10.0)
    raft = _Raft(sm, leader=False)
    sweep = KvExpiry(raft, sm)
    assert asyncio.run(sweep.sweep_once(20.0)) == 0 and sm.kv_get("d", "a") is not None
    raft.leader, raft.fail = True, True
    assert asyncio.run(sweep.sweep_once(20.0)) == 0 and sm.kv_get("d", "a") is not None
    raft.fail = False
    assert asyncio.run(sweep.sweep_once(20.0)) == 1 and sm.kv_get("d", "a") is None
    assert sweep.expired == 1
