"""Single-server membership changes and the autopilot that keeps the voter set healthy.

Changes are one server at a time (Raft thesis §4.1): any two consecutive
configurations then share a majority, so no joint consensus is needed.  This
core applies a change when its entry is *committed* (as etcd-io/raft does), not
when it is appended.  The leader refuses a new change while an earlier one is
uncommitted (``pending_conf_index``), and a new leader treats every entry of
its log as possibly pending.  Together with "a node whose log holds change k+1
has committed change k" (the leader only proposes k+1 after committing k, and
that commit index travels with k+1), nodes that matter for an election are at
most one change apart.

``apply_conf_change`` is total: a change that makes no sense against the current
configuration (promote a non-learner, add an existing member) is a no-op, so
every node applying the same committed log computes the same configuration.
"""

from __future__ import annotations

from agent.errors import LocalError
from agent.raft.messages import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    RestoredState,
)


def apply_conf_change(conf: ConfState, change: ConfChange) -> ConfState:
    voters, learners = set(conf.voters), set(conf.learners)
    node = change.node_id
    if change.kind == ConfChangeKind.ADD_LEARNER:
        if node not in voters:
            learners.add(node)
    elif change.kind == ConfChangeKind.PROMOTE:
        if node in learners:
            learners.discard(node)
            voters.add(node)
    elif change.kind == ConfChangeKind.DEMOTE:
        if node in voters and len(voters) > 1:
            voters.discard(node)
            learners.add(node)
    else:
        voters.discard(node)
        learners.discard(node)
    return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))


def check_conf_change(conf: ConfState, change: ConfChange, max_voters: int) -> None:
    """Raise ``LocalError`` if the leader should not propose ``change`` against ``conf``."""
    node = change.node_id
    if not node:
        raise LocalError("membership change: empty node id")
    if change.kind == ConfChangeKind.ADD_LEARNER:
        if conf.is_member(node):
            raise LocalError(f"membership change: {node} is already a member")
    elif change.kind == ConfChangeKind.PROMOTE:
        if node not in conf.learners:
            raise LocalError(f"membership change: {node} is not a learner")
        if len(conf.voters) >= max_voters:
            raise LocalError(f"membership change: already {len(conf.voters)} voters (max)")
    elif change.kind == ConfChangeKind.DEMOTE:
        if node not in conf.voters:
            raise LocalError(f"membership change: {node} is not a voter")
        if conf.voters == (node,):
            raise LocalError("membership change: cannot demote the last voter")
    else:
        if not conf.is_member(node):
            raise LocalError(f"membership change: {node} is not a member")
        if conf.voters == (node,):
            raise LocalError("membership change: cannot remove the last voter")


def plan_voter_changes(
    conf: ConfState,
    alive_ids: set[str],
    dead_ids: set[str],
    max_voters: int,
    caught_up: set[str],
) -> ConfChange | None:
    """The next single membership change that improves the cluster, or None.

    ``alive_ids``/``dead_ids`` come from SWIM (dead = confirmed dead, not merely
    suspected); ``caught_up`` are learners whose log is close to the leader's.
    In priority order:

    1. more voters than ``max_voters``: remove a dead one (alive ones are kept;
       the operator shrinks ``max_voters`` by removing nodes);
    2. a dead voter, the voter set full, and a caught-up learner ready: remove the
       dead voter to make room (the learner is promoted by the next call);
    3. fewer voters than ``max_voters``: promote a caught-up, alive learner --
       but from one voter only when two learners are ready, so the second
       promotion follows at once: two voters tolerate no failure, one voter plus a
       learner at least survives the learner's (a cluster founded with one voter,
       because only two hosts were up, waits at one until a third is ready);
    4. a dead voter with at least 3 voters left after removing it: remove it (a
       smaller set of live voters tolerates more failures than one carrying the dead);
    5. an alive node that is not a member (new, or back from the dead): add it as
       a learner, it catches up before any promotion;
    6. a dead learner: remove it (it is re-added as a learner if it returns).
    Ties break on the smallest node id so every leader plans the same way.
    """
    voters = set(conf.voters)
    dead_voters = sorted(voters & dead_ids)
    ready_learners = sorted(
        n for n in conf.learners if n in caught_up and n in alive_ids and n not in dead_ids
    )
    if len(voters) > max_voters and dead_voters:
        return ConfChange(ConfChangeKind.REMOVE, dead_voters[0])
    if dead_voters and len(voters) >= max_voters and ready_learners:
        return ConfChange(ConfChangeKind.REMOVE, dead_voters[0])
    if len(voters) < max_voters and ready_learners and (len(voters) != 1 or len(ready_learners) >= 2):
        return ConfChange(ConfChangeKind.PROMOTE, ready_learners[0])
    if dead_voters and len(voters) - 1 >= 3:
        return ConfChange(ConfChangeKind.REMOVE, dead_voters[0])
    newcomers = sorted(n for n in alive_ids - dead_ids if not conf.is_member(n))
    if newcomers:
        return ConfChange(ConfChangeKind.ADD_LEARNER, newcomers[0])
    dead_learners = sorted(set(conf.learners) & dead_ids)
    if dead_learners:
        return ConfChange(ConfChangeKind.REMOVE, dead_learners[0])
    return None


class ConfHistory:
    """Configurations by the index of the entry that made them, for snapshots taken
    at an applied index that may lag the committed configuration."""

    def __init__(self, index: int, conf: ConfState) -> None:
        self._changes: list[tuple[int, ConfState]] = [(index, conf)]

    def record(self, index: int, conf: ConfState) -> None:
        self._changes.append((index, conf))

    def at(self, index: int) -> ConfState:
        conf = self._changes[0][1]
        for at, state in self._changes:
            if at > index:
                break
            conf = state
        return conf

    def forget_before(self, index: int) -> None:
        """Drop what no snapshot at or after ``index`` can need."""
        while len(self._changes) > 1 and self._changes[1][0] <= index:
            del self._changes[0]


def bootstrap_state(voters: list[str]) -> RestoredState:
    """The initial durable state of every founding member of a new cluster.

    The founding configuration is written as committed term-1 log entries (add
    as learner, then promote, per voter) rather than a snapshot, so a node that
    joins later learns it from the log like any other membership change.  The
    runtime persists ``entries`` and ``hard_state`` before building the node."""
    entries: list[Entry] = []
    for node_id in sorted(voters):
        for kind in (ConfChangeKind.ADD_LEARNER, ConfChangeKind.PROMOTE):
            change = ConfChange(kind, node_id).encode()
            entries.append(Entry(1, len(entries) + 1, EntryKind.CONF_CHANGE, change))
    return RestoredState(HardState(term=1, vote="", commit=len(entries)), None, tuple(entries))
