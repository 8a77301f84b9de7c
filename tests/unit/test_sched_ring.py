"""Consistent-hash ring: determinism, distinct preference lists, balance, stability."""

from __future__ import annotations

import pytest

from agent.sched import HashRing, ring_hash

KEYS = [f"key-{i}" for i in range(5000)]


def owners(ring: HashRing) -> dict[str, str]:
    return {k: ring.preference_list(k, 1)[0] for k in KEYS}


def test_ring_hash_is_stable_across_processes() -> None:
    # blake2b, not hash(): this value must never change (it is part of placement).
    assert ring_hash("n1#0") == int.from_bytes(
        __import__("hashlib").blake2b(b"n1#0", digest_size=8).digest(), "big"
    )


def test_preference_list_distinct_and_deterministic() -> None:
    ring = HashRing([f"n{i}" for i in range(6)], vnodes=64)
    again = HashRing([f"n{i}" for i in reversed(range(6))], vnodes=64)
    for key in KEYS[:200]:
        prefs = ring.preference_list(key, 3)
        assert len(prefs) == 3 and len(set(prefs)) == 3
        assert prefs == again.preference_list(key, 3)


@pytest.mark.parametrize(("members", "n", "expected"), [(0, 3, 0), (1, 3, 1), (2, 3, 2), (5, 3, 3)])
def test_preference_list_length(members: int, n: int, expected: int) -> None:
    ring = HashRing([f"n{i}" for i in range(members)])
    assert len(ring.preference_list("k", n)) == expected


def test_accept_filter_skips_without_reshuffling_others() -> None:
    ring = HashRing([f"n{i}" for i in range(5)])
    for key in KEYS[:300]:
        full = ring.preference_list(key, 5)
        dead = full[0]
        assert ring.preference_list(key, 3, lambda n, d=dead: n != d) == full[1:4]


def test_keys_spread_evenly_with_virtual_nodes() -> None:
    ring = HashRing([f"n{i}" for i in range(8)], vnodes=64)
    counts: dict[str, int] = {}
    for owner in owners(ring).values():
        counts[owner] = counts.get(owner, 0) + 1
    mean = len(KEYS) / 8
    assert len(counts) == 8
    assert max(counts.values()) < 1.6 * mean and min(counts.values()) > 0.5 * mean


@pytest.mark.parametrize("n", [3, 5, 10])
def test_adding_a_node_moves_about_one_nth_of_keys(n: int) -> None:
    before = owners(HashRing([f"n{i}" for i in range(n)]))
    after = owners(HashRing([f"n{i}" for i in range(n + 1)]))
    moved = [k for k in KEYS if before[k] != after[k]]
    # every moved key moved to the new node, and about 1/(n+1) of them moved
    assert all(after[k] == f"n{n}" for k in moved)
    share = len(moved) / len(KEYS)
    assert 0.5 / (n + 1) < share < 1.6 / (n + 1), share


def test_removing_a_node_only_moves_its_keys() -> None:
    before = owners(HashRing([f"n{i}" for i in range(6)]))
    after = owners(HashRing([f"n{i}" for i in range(6) if i != 2]))
    for k in KEYS:
        if before[k] != "n2":
            assert after[k] == before[k]


def test_vnodes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HashRing(["a"], vnodes=0)
