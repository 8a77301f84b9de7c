"""Consistent hashing with virtual nodes for keyed tasks and output replicas.

Theory of operation: every host owns ``vnodes`` points on a 64-bit ring, the
point of virtual node ``i`` of host ``h`` being ``blake2b(f"{h}#{i}")``.  A key
hashes to a point; walking clockwise from it, the first distinct hosts form the
key's *preference list*: the primary and its successors.  Adding or removing a
host only moves the keys whose arc it gains or loses (about 1/n of them), so
keyed tasks stay put and output replicas need little copying when the mesh
changes.  The ring is built from the member list alone; liveness is applied
when walking (dead hosts are skipped), so a short outage does not reshuffle
keys.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable


def ring_hash(data: str) -> int:
    """A stable 64-bit position on the ring (blake2b, independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class HashRing:
    """An immutable ring over a set of node ids."""

    __slots__ = ("_nodes", "_owners", "_points", "vnodes")

    def __init__(self, nodes: Iterable[str], vnodes: int = 64) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.vnodes = vnodes
        self._nodes = frozenset(nodes)
        entries = sorted(
            (ring_hash(f"{node}#{i}"), node) for node in self._nodes for i in range(vnodes)
        )
        self._points = [point for point, _ in entries]
        self._owners = [node for _, node in entries]

    @property
    def nodes(self) -> frozenset[str]:
        return self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def preference_list(
        self, key: str, n: int = 3, accept: Callable[[str], bool] | None = None
    ) -> list[str]:
        """Up to ``n`` distinct nodes clockwise from ``key``, skipping those ``accept`` rejects."""
        if not self._points or n <= 0:
            return []
        start = bisect.bisect_right(self._points, ring_hash(key))
        found: list[str] = []
        seen: set[str] = set()
        total = len(self._points)
        for step in range(total):
            owner = self._owners[(start + step) % total]
            if owner in seen:
                continue
            seen.add(owner)
            if accept is None or accept(owner):
                found.append(owner)
                if len(found) == n:
                    break
            if len(seen) == len(self._nodes):
                break
        return found

    def primary(self, key: str, accept: Callable[[str], bool] | None = None) -> str | None:
        """The first acceptable node for ``key``, or None if there is none."""
        found = self.preference_list(key, 1, accept)
        return found[0] if found else None


def replica_key(task_id: str, key: str | None, strategy: str) -> str:
    """The ring key a task's output and artifacts replicate on: its ``--key`` for a
    ``hash`` task (so they sit where the task runs), its id otherwise."""
    return key if strategy == "hash" and key else task_id
