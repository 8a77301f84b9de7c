"""The sans-IO Raft state machine (after etcd-io/raft's RawNode).

Theory of operation
-------------------
``RaftNode`` is a synchronous object.  The runtime feeds it ``tick()`` every
``config.tick_interval`` seconds and ``step(msg)`` for every peer message, calls
``propose``/``read_index``/... for local requests, and then drains ``ready()``:

    persist snapshot + entries + hard state (fsync if ``must_sync``)
    → send ``messages`` → apply ``committed_entries`` → ``advance(ready)``

Nothing leaves the node before the state it depends on is durable (a vote
before the vote is on disk, an append ack before the entries are), because all
messages ride in the same Ready as the state they depend on.  The leader counts
itself towards a commit quorum only for entries it has persisted (``advance``).

Elections use pre-vote (a round at term+1 that changes nothing unless it would
win) and check-quorum (a leader that has not heard from a quorum for an election
timeout steps down; followers that heard from a leader within one ignore vote
requests: the leader lease).  Replication is pipelined per follower (see
``progress.py``) with conflict hints for fast back-off.  Entries commit only by
counting replicas of an entry of the current term; a new leader appends an empty
entry to get there.  Membership changes are single-server and take effect when
committed (see ``confchange.py``).  ReadIndex confirms leadership with one
heartbeat round (``readonly.py``); followers forward the request to the leader.
Snapshots are taken by the application (``compact``) and sent whole to
followers that fell behind the compaction point.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from agent.errors import LocalError, NoQuorumError, NotLeaderError
from agent.raft import election, follower, repair, replication
from agent.raft.confchange import (
    ConfHistory,
    apply_conf_change,
    bootstrap_state,
    check_conf_change,
)
from agent.raft.config import RaftConfig
from agent.raft.log import ENTRY_OVERHEAD, RaftLog
from agent.raft.messages import (
    AppendEntries,
    AppendResp,
    ConfChange,
    ConfState,
    ConsensusEvent,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    RaftMessage,
    ReadIndexReq,
    ReadState,
    Ready,
    RepairGrant,
    RepairRequest,
    RequestVote,
    RequestVoteResp,
    RestoredState,
    Role,
    Snapshot,
    StartCheck,
    StartCheckResp,
    TimeoutNow,
)
from agent.raft.progress import Inflights, Progress
from agent.raft.readonly import ReadOnly

__all__ = ["RaftNode", "bootstrap_state"]

SNAPSHOT_STRETCH = 4
"""How far past ``snapshot_threshold`` a large state may defer a snapshot
(see ``RaftNode.should_snapshot``): bounds the log kept in memory."""


def _leader_only(handler: Callable[[RaftNode, Any], None]) -> Callable[[RaftNode, Any], None]:
    def on_leader(node: RaftNode, msg: Any) -> None:
        if node.role == Role.LEADER:
            handler(node, msg)

    return on_leader


class RaftNode:
    def __init__(self, config: RaftConfig, node_id: str, restored: RestoredState, rng: random.Random) -> None:
        assert node_id and "/" not in node_id, "node ids are non-empty and hold no '/'"
        self.config = config
        self.id = node_id
        self._rng = rng
        hs = restored.hard_state
        self.term = hs.term
        self.vote = hs.vote
        self.log = RaftLog(restored.snapshot, restored.entries, hs.commit)
        self.conf = restored.snapshot.conf if restored.snapshot else ConfState(voters=())
        self._conf_history = ConfHistory(self.log.offset, self.conf)
        self._conf_applied_to = self.log.offset
        self.role = Role.FOLLOWER
        self.leader_id = ""
        self.prs: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.lead_transferee = ""
        self.pending_conf_index = 0
        self._ticks = 0
        self._quorum_seen: tuple[int, int, ConfState] | None = None
        # (snapshot index, entries due after it): see should_snapshot.
        self._snapshot_due: tuple[int, int] = (-1, 0)
        self.election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        self._read_only = ReadOnly()
        self._reads_awaiting_commit: list[tuple[bytes, str]] = []
        self._msgs: list[RaftMessage] = []
        self._read_states: list[ReadState] = []
        self._events: list[ConsensusEvent] = []
        self._append_pending = False
        self._unadvanced: Ready | None = None
        self.damaged = restored.damaged
        """Why this node's storage cannot be trusted (empty: it can); see repair.py."""
        self._reset_pending = False
        self.fresh_start = bool(restored.entries or restored.snapshot) and not self.damaged
        """Just started with a log: no votes until the leader answered our StartCheck or
        one election timeout passed (repair.py: data dirs restored from a copy)."""
        self._start_checked = False
        self._apply_committed_conf()
        self._prev_hs = HardState(self.term, self.vote, self.log.committed)
        self._become_follower(self.term, "")
        self._events.clear()

    # ============================================================ public API

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    def tick(self) -> None:
        self._ticks += 1
        if self.fresh_start and self._ticks >= self.config.election_ticks:
            self.fresh_start = False  # no leader around to ask: behave as plain Raft
        if self.role == Role.LEADER:
            replication.tick_leader(self)
            return
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self._randomized_timeout:
            self.election_elapsed = 0
            election.hup(self, transfer=False)

    def leader_lost(self) -> None:
        """The runtime's evidence that the leader's process is gone: its stream
        closed and a new connection was refused, the kernel's word that nothing
        listens on its port any more (a silent network gives no such word).

        This follower forgets the leader, which ends the leader's lease here:
        from now on it grants votes, and the runtime may ``campaign`` at once
        instead of after a whole election timeout.  One node's word deposes no
        one: a pre-vote wins only if a majority of the voters also lost the
        leader, each by its own evidence or its own timeout; a follower whose one
        link to a live leader was reset is turned down by the others, still in
        the lease, and takes the leader back at its next heartbeat."""
        if self.role != Role.FOLLOWER or self.leader_id in ("", self.id):
            return
        self._set_leader("")
        self._emit("leader", "leader lost: its connection was refused")

    def campaign(self) -> None:
        """Start an election now (a pre-vote first) if this follower knows no
        leader; the runtime calls it a short random delay after ``leader_lost``,
        so followers that saw the same death rarely split the vote."""
        if self.role == Role.FOLLOWER and not self.leader_id:
            self.election_elapsed = 0
            election.hup(self, transfer=False)

    def step(self, msg: RaftMessage) -> None:
        if msg.to != self.id:
            return
        if msg.term > self.term:
            if not self._adopt_newer_term(msg):
                return
        elif msg.term < self.term:
            self._answer_stale_term(msg)
            return
        handler = _ANY_ROLE.get(type(msg))
        if handler is not None:
            handler(self, msg)
        elif self.role == Role.LEADER:
            replication.step_leader(self, msg)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            follower.step_candidate(self, msg)
        else:
            follower.step_follower(self, msg)

    def _adopt_newer_term(self, msg: RaftMessage) -> bool:
        """A message of a later term: become a follower in it (its sender leads if it
        is leader traffic).  False: ignore the message -- a vote request while we
        are in a leader's lease, or just started (repair.py), unless a transfer."""
        if isinstance(msg, RequestVote):
            in_lease = self.fresh_start or (
                self.config.check_quorum
                and self.leader_id != ""
                and self.election_elapsed < self.config.election_ticks
            )
            if in_lease and not msg.transfer:
                return False
        pre_vote_traffic = (isinstance(msg, RequestVote) and msg.pre_vote) or (
            isinstance(msg, RequestVoteResp) and msg.pre_vote and msg.granted
        )
        if not pre_vote_traffic:
            self._become_follower(msg.term, msg.frm if isinstance(msg, follower.FROM_LEADER) else "")
        return True

    def _answer_stale_term(self, msg: RaftMessage) -> None:
        """A message of an earlier term is dropped; some senders are told our term."""
        if isinstance(msg, AppendEntries | Heartbeat) and (
            self.config.check_quorum or self.config.pre_vote
        ):
            # A stale leader cut off by a partition: tell it the term so it steps down.
            self._send(AppendResp(self.id, msg.frm, self.term, index=0))
        elif isinstance(msg, RequestVote) and msg.pre_vote:
            self._send(RequestVoteResp(self.id, msg.frm, self.term, False, pre_vote=True))

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; returns (index, term).  Raises NotLeaderError off the leader."""
        self._require_leader()
        index = self._append(EntryKind.NORMAL, data)
        return index, self.term

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        """Propose one membership change; LocalError if one is already in flight or invalid."""
        self._require_leader()
        if self.pending_conf_index > self.log.committed:
            raise LocalError("membership change: an earlier change is not committed yet")
        check_conf_change(self.conf, change, self.config.max_voters)
        index = self._append(EntryKind.CONF_CHANGE, change.encode())
        self.pending_conf_index = index
        return index, self.term

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read index; the answer is a ReadState in a later Ready.

        On a follower the request goes to the leader; if the request or its answer
        is lost, no ReadState arrives and the runtime's timeout applies."""
        if self.role == Role.LEADER:
            replication.read_index(self, ctx, self.id)
        elif self.leader_id:
            self._send(ReadIndexReq(self.id, self.leader_id, self.term, ctx))
        else:
            raise NoQuorumError("no leader known")

    def transfer_leadership(self, to: str) -> None:
        self._require_leader()
        if to == self.id or to == self.lead_transferee:
            return
        if to not in self.conf.voters:
            raise LocalError(f"leadership transfer: {to} is not a voter")
        self.lead_transferee = to
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        self._emit("leader", f"transferring leadership to {to}")
        if self.prs[to].match == self.log.last_index():
            self._send(TimeoutNow(self.id, to, self.term))
        else:
            replication.send_append(self, to)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """The application's state ``data`` as of applied ``index``: remember it as the
        newest snapshot and forget log entries up to ``index - snapshot_trailing``.
        The runtime persists the returned snapshot (``Storage.save_snapshot``) and
        then compacts the WAL to ``first_index()``."""
        assert index <= self.log.applied, f"snapshot at {index} beyond applied {self.log.applied}"
        current = self.log.snapshot
        if current is not None and index <= current.index:
            return current
        term = self.log.term(index)
        assert term is not None, f"snapshot at compacted index {index}"
        snapshot = Snapshot(index, term, self._conf_history.at(index), data)
        self.log.compact(max(self.log.offset, index - self.config.snapshot_trailing), snapshot)
        self._conf_history.forget_before(self.log.offset)
        return snapshot

    def should_snapshot(self) -> bool:
        """At least ``snapshot_threshold`` entries applied since the last snapshot,
        and (up to ``SNAPSHOT_STRETCH`` times that) as many log bytes as the last
        snapshot holds.  A snapshot rewrites the whole state, so with a large state
        and small entries a fixed count would spend more on snapshots than on the
        log itself; matching bytes bounds that to the log's own volume, and a
        restart still reads at most about twice the snapshot."""
        snap = self.log.snapshot
        base = snap.index if snap else 0
        since = self.log.applied - base
        threshold = self.config.snapshot_threshold
        if since < threshold or snap is None:
            return since >= threshold
        due_base, due = self._snapshot_due
        if due_base != base:
            # Once per snapshot: the first threshold entries give the average size.
            sample = self.log.slice(base + 1, base + threshold + 1)
            size = sum(len(e.data) for e in sample) + ENTRY_OVERHEAD * len(sample)
            want = len(snap.data) * len(sample) // max(1, size)
            due = min(max(threshold, want), threshold * SNAPSHOT_STRETCH)
            self._snapshot_due = (base, due)
        return since >= due

    def first_index(self) -> int:
        return self.log.first_index()

    def has_quorum_contact(self) -> bool:
        """Leader: a quorum answered within the last election timeout.  Others: a
        leader was heard from within it.  False means writes should fail fast."""
        if self.role == Role.LEADER:
            # Asked once per proposal: within one tick, term and membership a
            # True answer stays True (last_heard only grows), so keep it.
            seen = self._quorum_seen
            if seen is not None and seen[0] == self._ticks and seen[1] == self.term and seen[2] is self.conf:
                return True
            active = replication.quorum_active(self)
            if active:
                self._quorum_seen = (self._ticks, self.term, self.conf)
            return active
        return self.leader_id != "" and self.election_elapsed < self.config.election_ticks

    def progress_view(self) -> dict[str, dict[str, object]]:
        return {
            peer: {
                "match": pr.match,
                "next": pr.next,
                "state": pr.state.name.lower(),
                "learner": pr.is_learner,
                "active": self._ticks - pr.last_heard <= self.config.election_ticks,
            }
            for peer, pr in sorted(self.prs.items())
        }

    def ready(self) -> Ready | None:
        if self._unadvanced is not None or not self._has_ready():
            return None
        if self._append_pending:
            self._append_pending = False
            if self.role == Role.LEADER:
                replication.bcast_news(self)
        hs = HardState(self.term, self.vote, self.log.committed)
        hs_changed = hs != self._prev_hs
        entries = self.log.unstable_entries()
        snapshot = self.log.pending_snapshot
        committed = self.log.next_committed(self.config.max_committed_per_ready)
        if not (
            hs_changed or entries or snapshot or committed or self._msgs or self._read_states or self._events
        ):
            return None
        reset = self._reset_pending
        self._reset_pending = False
        must_sync = (
            bool(entries)
            or snapshot is not None
            or reset
            or (hs.term != self._prev_hs.term or hs.vote != self._prev_hs.vote)
        )
        rd = Ready(
            hard_state=hs if hs_changed else None,
            entries=entries,
            snapshot=snapshot,
            messages=self._msgs,
            committed_entries=committed,
            read_states=self._read_states,
            events=self._events,
            must_sync=must_sync,
            reset_storage=reset,
        )
        self._msgs, self._read_states, self._events = [], [], []
        self._unadvanced = rd
        return rd

    def _has_ready(self) -> bool:
        log, prev = self.log, self._prev_hs
        return bool(
            self._msgs
            or self._reset_pending
            or self._read_states
            or self._events
            or self._append_pending
            or log.pending_snapshot is not None
            or log.stable < log.last_index()
            or log.applied < log.committed
            or self.term != prev.term
            or self.vote != prev.vote
            or log.committed != prev.commit
        )

    def advance(self, rd: Ready) -> None:
        assert rd is self._unadvanced, "advance() takes the Ready returned by ready()"
        self._unadvanced = None
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            if self.log.pending_snapshot is rd.snapshot:
                self.log.pending_snapshot = None
            self.log.applied = max(self.log.applied, rd.snapshot.index)
        if rd.entries:
            self.log.stable_to(rd.entries[-1].index, rd.entries[-1].term)
        if rd.committed_entries:
            self.log.applied = max(self.log.applied, rd.committed_entries[-1].index)
        is_leader = self.role == Role.LEADER
        if is_leader and self.prs[self.id].maybe_update(self.log.stable) and replication.maybe_commit(self):
            self._append_pending = True  # the next Ready tells the followers

    # ============================================================ roles

    def _promotable(self) -> bool:
        return self.id in self.conf.voters and not self.damaged

    def wipe_for_repair(self, leader: str) -> None:
        """Drop the log, snapshot and configuration (the runtime drops its storage
        and state machine on the next Ready's ``reset_storage``); keep term and
        vote.  We come back as a nobody that the leader feeds like a new learner."""
        self.log = RaftLog(None, (), 0)
        self.conf = ConfState(voters=())
        self._conf_history = ConfHistory(0, self.conf)
        self._conf_applied_to = 0
        self.damaged = ""
        self._reset_pending = True
        self._prev_hs = HardState()  # the next Ready persists term and vote afresh
        self._set_role(Role.LEARNER)
        self._set_leader(leader)
        self._emit("repair", "storage dropped; catching up from the leader")

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = ""
            self._emit("term", f"term {term}")
        self.leader_id = ""
        self.election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self.config.election_ticks + self._rng.randrange(
            self.config.election_ticks
        )
        self.lead_transferee = ""
        self.votes = {}
        self.prs = {}
        self._read_only.reset()
        self._reads_awaiting_commit = []

    def _set_role(self, role: Role) -> None:
        if role != self.role:
            self.role = role
            self._emit("role", f"became {role.name.lower()}")

    def _set_leader(self, leader: str) -> None:
        if leader != self.leader_id:
            self.leader_id = leader
            if leader:
                self._emit("leader", f"leader is {leader}")

    def _become_follower(self, term: int, leader: str) -> None:
        had_leader = self.leader_id
        self._reset(term)
        self._set_role(Role.FOLLOWER if self._promotable() else Role.LEARNER)
        self._set_leader(leader)
        if had_leader and not leader:
            self._emit("leader", "no leader")

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.leader_id = self.id
        self._set_role(Role.LEADER)
        self._emit("leader", f"leader is {self.id}")
        last = self.log.last_index()
        for peer in (*self.conf.voters, *self.conf.learners):
            self.prs[peer] = self._new_progress(peer, last + 1)
        self.prs[self.id].match = self.log.stable
        # Any entry of our log may hold an uncommitted membership change.
        self.pending_conf_index = last
        self._append(EntryKind.EMPTY, b"")

    def _new_progress(self, peer: str, next_index: int) -> Progress:
        pr = Progress(next=next_index, inflights=Inflights(self.config.max_inflight_msgs))
        pr.last_heard = self._ticks  # a fresh leader gives everyone one timeout of grace
        pr.is_learner = peer not in self.conf.voters
        return pr

    # ============================================================ leader

    def _require_leader(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader_id or None)
        if self.lead_transferee:
            raise NotLeaderError(None)

    def _append(self, kind: EntryKind, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.log.append_new(Entry(self.term, index, kind, data))
        # Sending is deferred to ready(): proposals between two Readys share one batch.
        self._append_pending = True
        return index

    # ============================================================ reads

    # ============================================================ membership

    def _apply_committed_conf(self) -> None:
        """Apply every membership change committed since the last call."""
        start = self._conf_applied_to + 1
        end = self.log.committed
        self._conf_applied_to = max(self._conf_applied_to, end)
        quorum_changed = False
        for index in range(start, end + 1):
            entry = self.log.entries[index - self.log.offset - 1]
            if entry.kind == EntryKind.CONF_CHANGE:
                self._apply_conf(index, ConfChange.decode(entry.data))
                quorum_changed = True
        # A smaller or different voter set may commit more: only now, after the loop,
        # so changes are applied strictly in log order.
        if quorum_changed and self.role == Role.LEADER and replication.maybe_commit(self):
            self._append_pending = True

    def _apply_conf(self, index: int, change: ConfChange) -> None:
        self.conf = apply_conf_change(self.conf, change)
        self._conf_history.record(index, self.conf)
        self._emit("conf", f"{change.kind.name.lower()} {change.node_id} at {index}")
        if self.role != Role.LEADER:
            if self.role in (Role.FOLLOWER, Role.LEARNER):
                self._set_role(Role.FOLLOWER if self._promotable() else Role.LEARNER)
            elif not self._promotable():
                self._become_follower(self.term, "")
            return
        if not self._promotable():
            # Removed ourselves: tell the others the commit index before stepping down,
            # so they apply the removal and elect without waiting for us.
            replication.bcast_append(self)
            self._become_follower(self.term, "")
            return
        members = (*self.conf.voters, *self.conf.learners)
        for peer in members:
            if peer not in self.prs:
                self.prs[peer] = self._new_progress(peer, self.log.last_index() + 1)
                replication.send_append(self, peer)
            self.prs[peer].is_learner = peer not in self.conf.voters
        for peer in [p for p in self.prs if p not in members]:
            del self.prs[peer]
        if self.lead_transferee and self.lead_transferee not in self.conf.voters:
            self.lead_transferee = ""

    # ============================================================ output

    def _send(self, msg: RaftMessage) -> None:
        self._msgs.append(msg)

    def _emit(self, kind: str, summary: str) -> None:
        self._events.append(
            ConsensusEvent(
                kind=kind,
                term=self.term,
                role=self.role.name.lower(),
                leader=self.leader_id or None,
                summary=summary,
            )
        )


_ANY_ROLE: dict[type, Callable[[RaftNode, Any], None]] = {
    RequestVote: election.handle_vote_request,
    RepairRequest: _leader_only(repair.handle_request),
    RepairGrant: repair.handle_grant,
    StartCheck: _leader_only(repair.handle_start_check),
    StartCheckResp: repair.handle_start_check_resp,
}
"""Messages handled the same in every role (once the term checks passed); the
rest go to the role's own step (leader, candidate, follower)."""
