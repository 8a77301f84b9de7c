"""Driving a simulated Raft cluster (``sim.raftnet.RaftNet``) in unit tests:
waiting for a leader and proposing a run of puts."""

from __future__ import annotations

from sim.raftnet import RaftNet, SimNode


def elected(net: RaftNet, steps: int = 300) -> SimNode:
    """The leader, once the simulation has one within ``steps`` steps."""
    assert net.wait_for(lambda: net.leader() is not None, steps), "no leader elected"
    leader = net.leader()
    assert leader is not None
    return leader


def put(net: RaftNet, node: str, n: int, *, first: int = 0, key: str | None = "k") -> None:
    """Propose ``n`` puts through ``node``: values ``v{first}``..; all to ``key``,
    or each to its own ``k{i}`` when ``key`` is None."""
    for i in range(first, first + n):
        target = key if key is not None else f"k{i}"
        assert net.propose(node, f'[0, {i}, "put", "{target}", "v{i}"]'.encode()) is not None
