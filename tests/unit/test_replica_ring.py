"""Issue 17: replica targets on the hash ring -- preference lists of keys and task ids
as members come and go, and the replication factor honoured for 1, 3 and 5."""

from __future__ import annotations

import pytest

from agent.sched import HashRing, replica_key

NODES = [f"node{i:02d}" for i in range(8)]
KEYS = [f"key-{i}" for i in range(200)] + [f"t{i}" for i in range(1, 201)]


_RINGS: dict[frozenset[str], HashRing] = {}


def ring_of(nodes: list[str]) -> HashRing:
    key = frozenset(nodes)
    if key not in _RINGS:
        _RINGS[key] = HashRing(nodes, 64)
    return _RINGS[key]


def live_list(nodes: list[str], alive: set[str], key: str, n: int) -> list[str]:
    return ring_of(nodes).preference_list(key, n, alive.__contains__)


@pytest.mark.parametrize("factor", [1, 3, 5])
def test_factor_is_honoured_while_enough_hosts_live(factor: int) -> None:
    for alive_count in range(1, len(NODES) + 1):
        alive = set(NODES[:alive_count])
        for key in KEYS[::7]:
            got = live_list(NODES, alive, key, factor)
            assert len(got) == min(factor, alive_count)
            assert len(set(got)) == len(got)
            assert set(got) <= alive


@pytest.mark.parametrize("factor", [1, 3, 5])
def test_skipping_dead_hosts_is_the_ring_of_the_live_members(factor: int) -> None:
    """Walking the full ring past dead hosts gives the list of a ring built from the
    live members only: the liveness filter is exactly "the ring of the live members"."""
    alive = set(NODES) - {"node01", "node04", "node06"}
    for key in KEYS:
        assert live_list(NODES, alive, key, factor) == ring_of(sorted(alive)) \
            .preference_list(key, factor)


def test_a_dead_replica_is_replaced_by_the_next_host_and_the_rest_stay() -> None:
    """When one host of a key's list dies, the list keeps the survivors in order and
    takes the next host after them; when it comes back, the list is the old one."""
    for key in KEYS:
        before = live_list(NODES, set(NODES), key, 3)
        dead = before[1]
        after = live_list(NODES, set(NODES) - {dead}, key, 3)
        assert after[:2] == [before[0], before[2]]
        assert after[2] not in before
        assert live_list(NODES, set(NODES), key, 3) == before


def test_a_joining_host_moves_only_the_keys_whose_arc_it_takes() -> None:
    small = NODES[:6]
    moved = 0
    for key in KEYS:
        before = ring_of(small).preference_list(key, 3)
        after = ring_of([*small, "node99"]).preference_list(key, 3)
        if after != before:
            moved += 1
            # the newcomer slots in; the others keep their relative order
            assert "node99" in after
            assert [n for n in after if n != "node99"] == before[: len(after) - 1]
    assert 0 < moved < len(KEYS) * 0.75


@pytest.mark.parametrize(
    ("task", "key", "strategy", "expected"),
    [
        ("t1", "users", "hash", "users"),   # a keyed hash task: its key
        ("t2", None, "hash", "t2"),          # no key: its id
        ("t3", "users", "auction", "t3"),    # a key without hash placement: its id
        ("t4", "", "hash", "t4"),
    ],
)
def test_ring_key_of_a_task(task: str, key: str | None, strategy: str, expected: str) -> None:
    assert replica_key(task, key, strategy) == expected


def test_a_keyed_task_replicates_where_it_runs() -> None:
    """place_by_hash runs a keyed task on the key's first live host: the first replica."""
    from agent.sched import ClusterSnapshot, NodeView, SchedConfig, Strategy, TaskView, place_by_hash

    nodes = tuple(NodeView(id=n, name=n, alive=n != "node02") for n in NODES)
    snap = ClusterSnapshot(nodes, (), 0.0)
    cfg = SchedConfig()
    for key in KEYS[:50]:
        task = TaskView(id="t9", key=key, strategy=Strategy.HASH)
        host = place_by_hash(task, snap, cfg)
        alive = {n.id for n in nodes if n.alive}
        assert host == live_list(NODES, alive, replica_key("t9", key, "hash"), cfg.replication)[0]
