"""What the agent does with damaged Raft storage, and the operator's way out.

A node whose storage lost acknowledged entries (``raft/storage.py`` reports
the damage, ``raft/repair.py`` handles it inside the protocol) either:

* is repaired by the cluster: it starts, stays a non-voting "repairing" node,
  and the leader demotes it, has it drop its log and feeds it a snapshot and
  the log; the autopilot promotes it again once caught up;
* or cannot be: it is the cluster's only voter, or no leader backed by a
  healthy majority repairs it within ``raft.repair_wait`` seconds.  Then it
  stops with exit code 2 and one line naming the damaged file and offset and
  the command below.

``mesh-agent recover --force-new-cluster --data-dir D`` (after etcd's
``--force-new-cluster``) is for when a majority of disks lost data: it
rebuilds the state machine from whatever this node still holds (the newest
readable snapshot plus the valid log up to its commit index), moves the old
WAL and snapshots aside (``raft/damaged-<time>/``), and writes a snapshot of
a new cluster whose only voter is this node, at a higher term.  Entries after
that index (not known to be committed) are discarded, and writes the old
cluster acknowledged but this node never received are lost: the command says
how many entries it kept and discarded.  Other nodes should then be started
with empty data dirs; they join as learners.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent.config import load_or_create_node_id
from agent.datadir import lock_data_dir
from agent.errors import LocalError
from agent.raft.messages import ConfState, EntryKind, HardState, Snapshot
from agent.raft.storage import Storage
from agent.state.machine import StateMachine


def force_command(data_dir: str) -> str:
    return f"mesh-agent recover --force-new-cluster --data-dir {data_dir}"


def only_voter_refusal(damage: str, data_dir: str) -> str:
    """One line: the damage, why nobody can repair it, and the way out."""
    return (
        f"{damage}; this node is the cluster's only voter, so nothing can repair it:"
        f" `{force_command(data_dir)}` starts a new one-voter cluster from what is left"
    )


def unrepaired_refusal(damage: str, data_dir: str, waited: float) -> str:
    return (
        f"{damage}; no leader backed by a healthy majority repaired this node within"
        f" {waited:.0f} s: start the other voters and run it again, or"
        f" `{force_command(data_dir)}` (loses what only the others had)"
    )


@dataclass(frozen=True, slots=True)
class ForcedCluster:
    node_id: str
    index: int
    """The state of the new cluster is the old one's as of this index."""
    term: int
    discarded: int
    """Valid log entries after the commit index that were dropped (maybe uncommitted)."""
    damage: str
    aside: str | None

    def summary(self) -> str:
        lines = [
            f"new one-voter cluster: node {self.node_id}, term {self.term}, state as of index {self.index}",
        ]
        if self.damage:
            lines.append(f"storage was damaged: {self.damage}")
        if self.discarded:
            lines.append(
                f"discarded {self.discarded} log entries after the commit index (not known committed)"
            )
        lines.append(
            f"writes acknowledged by the old cluster after index {self.index} may be lost;"
            " start the other nodes with empty data dirs so they join as learners"
        )
        if self.aside:
            lines.append(f"the old WAL and snapshots are kept in {self.aside}")
        return "\n".join(lines)


def force_new_cluster(data_dir: str) -> ForcedCluster:
    """See the module doc.  Takes the data dir's lock (no agent may run on it)."""
    with lock_data_dir(data_dir, create=False):
        if not os.path.exists(os.path.join(data_dir, "node_id")):
            raise LocalError(f"{data_dir} holds no node_id: not a mesh-agent data dir")
        node_id = load_or_create_node_id(data_dir)
        store = Storage.open(os.path.join(data_dir, "raft"))
        restored = store.load()
        state = StateMachine()
        snap = restored.snapshot
        index, term = (snap.index, snap.term) if snap else (0, 0)
        if snap is not None:
            state.restore(snap.data)
        commit = restored.hard_state.commit
        kept = [e for e in restored.entries if e.index <= commit]
        for entry in kept:
            if entry.kind == EntryKind.NORMAL:
                state.apply(entry.index, entry.data, None)
            else:
                state.applied_index = entry.index
            index, term = entry.index, entry.term
        discarded = len(restored.entries) - len(kept)
        new_term = max(restored.hard_state.term, term) + 1
        aside = store.reset()
        store.save_snapshot(Snapshot(index, term, ConfState(voters=(node_id,)), state.snapshot()))
        store.append([], HardState(new_term, node_id, index))
        store.sync()
        store.close()
        return ForcedCluster(
            node_id, index, new_term, discarded, restored.damaged, str(aside) if aside else None
        )
