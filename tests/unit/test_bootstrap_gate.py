"""BootstrapGate: who founds a cluster, and when (agent/runtime/bootstrap.py's rules)."""

from __future__ import annotations

import pytest

from agent.runtime.bootstrap import BootstrapGate, founding_voters

GRACE = 1.5


def test_a_lone_node_without_seeds_founds_after_the_grace() -> None:
    gate = BootstrapGate("b", GRACE, has_seeds=False, now=0.0)
    assert not gate.ready(1.0, set(), clustered=False)
    assert gate.ready(1.5, set(), clustered=False)


def test_a_node_with_seeds_never_founds_alone() -> None:
    """The deploy race: h2 starts before its seed h0 and must not found its own cluster."""
    gate = BootstrapGate("a", GRACE, has_seeds=True, now=0.0)
    assert not gate.ready(60.0, set(), clustered=False)
    assert not gate.ready(60.5, {"a"}, clustered=False)


def test_the_alive_set_must_be_stable_for_the_grace() -> None:
    gate = BootstrapGate("a", GRACE, has_seeds=True, now=0.0)
    assert not gate.ready(10.0, {"c"}, clustered=False)  # just met c
    assert not gate.ready(11.0, {"c"}, clustered=False)
    assert not gate.ready(11.2, {"c", "b"}, clustered=False)  # b joined: start again
    assert not gate.ready(12.5, {"c", "b"}, clustered=False)
    assert gate.ready(12.7, {"c", "b"}, clustered=False)


def test_only_the_smallest_id_founds_and_never_when_a_cluster_exists() -> None:
    small = BootstrapGate("a", GRACE, has_seeds=True, now=0.0)
    large = BootstrapGate("z", GRACE, has_seeds=False, now=0.0)
    assert not small.ready(0.0, {"z"}, clustered=False)
    assert not large.ready(0.0, {"a"}, clustered=False)
    assert small.ready(2.0, {"z"}, clustered=False)
    assert not large.ready(2.0, {"a"}, clustered=False)
    assert not small.ready(5.0, {"z"}, clustered=True)  # z advertises a Raft role


@pytest.mark.parametrize(
    ("alive", "max_voters", "want"),
    [
        ("a", 5, "a"),
        ("ab", 5, "a"),  # two would tolerate no failure: found with one, the other learns
        ("abc", 5, "abc"),
        ("abcd", 5, "abc"),
        ("abcdef", 5, "abcde"),
        ("abcdefg", 7, "abcdefg"),
        ("abc", 1, "a"),
    ],
)
def test_founding_voters_is_odd_and_smallest_first(alive: str, max_voters: int, want: str) -> None:
    assert founding_voters("a", set(alive), max_voters) == list(want)
