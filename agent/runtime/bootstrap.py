"""When a node with an empty Raft log may found a new cluster (pure, time passed in).

Rules, checked every autopilot round until the node has a Raft configuration:

1. Never while any other member advertises a Raft role: a cluster exists, and
   its leader's autopilot will add us as a learner.
2. A node started with seeds (``--join``) never founds a cluster alone: it
   waits until it has reached at least one other member.  Deploys start hosts
   in any order; a host that came up before its seed would otherwise found a
   one-voter cluster of its own, and two clusters never merge by themselves.
   (A node without seeds, such as the seed host itself, may found one alone.)
3. The set of alive members must have stayed the same for ``grace`` seconds:
   nodes joining one by one each see a different set for a moment, and only
   once the set is stable do they all agree on rule 4.
4. Of the alive members, only the one with the smallest node id founds it.
5. It founds it with as many of them as voters as it can while keeping the
   count odd (``founding_voters``): three hosts started together form a
   three-voter cluster at once, instead of growing 1 -> 2 -> 3 voters and
   sitting at two, where either failure stops the cluster.  The others learn
   that configuration from the founder's log (its first entries), like any later
   membership change; until then they have no configuration and never campaign,
   but they vote, so the founder's election needs a majority of the founders.
"""

from __future__ import annotations


class BootstrapGate:
    """Tracks the alive set a node has seen and says when it may bootstrap."""

    def __init__(self, node_id: str, grace: float, has_seeds: bool, now: float) -> None:
        self.node_id = node_id
        self.grace = grace
        self.has_seeds = has_seeds
        self._alive: frozenset[str] = frozenset({node_id})
        self._stable_since = now

    def ready(self, now: float, alive: set[str], clustered: bool) -> bool:
        """True when this node should found a one-voter cluster now."""
        seen = frozenset(alive | {self.node_id})
        if seen != self._alive:
            self._alive = seen
            self._stable_since = now
        if clustered:
            return False
        if self.has_seeds and len(seen) < 2:
            return False
        if now - self._stable_since < self.grace:
            return False
        return self.node_id == min(seen)


def founding_voters(node_id: str, alive: set[str], max_voters: int) -> list[str]:
    """The voters a new cluster is founded with: the alive members in node-id
    order (the founder, the smallest, first), at most ``max_voters`` of them and
    an odd number (an even count tolerates no more failures than one fewer)."""
    members = sorted(alive | {node_id})[: max(1, max_voters)]
    if len(members) % 2 == 0:
        members = members[:-1]
    return members
