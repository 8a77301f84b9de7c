"""Raft's data model: log entries, hard state, snapshots, peer messages, Ready batches.

Peer messages follow docs/internals.md §1: frozen slotted dataclasses whose fields
are wire-encodable (int, str, bytes, bool, tuples, nested dataclasses, IntEnums),
so ``agent/wire.py`` encodes them generically.  Every peer message starts with
``frm``, ``to``, ``term``.  ``WIRE_TYPES`` maps their append-only type numbers
(40-69) to classes.

Proposal forwarding (a follower passing a client write to the leader) is left to
the runtime, which knows the client and its request id; the core only raises
``NotLeaderError(leader_id)``.  Snapshots travel whole in one ``InstallSnapshot``
(bounded by the transport's frame limit, 16 MiB), which is ample for the state an
orchestrator keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class EntryKind(IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """An application command (opaque bytes for the state machine)."""
    CONF_CHANGE = 1
    """A membership change, ``ConfChange.encode()``; applied by the core when committed."""
    EMPTY = 2
    """The no-op a new leader appends so it can commit entries of earlier terms."""


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind
    data: bytes


@dataclass(frozen=True, slots=True)
class ConfState:
    """The voting and non-voting members (node ids), each sorted."""

    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()

    def is_voter(self, node_id: str) -> bool:
        return node_id in self.voters

    def is_member(self, node_id: str) -> bool:
        return node_id in self.voters or node_id in self.learners


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message depending on it leaves the node."""

    term: int = 0
    vote: str = ""
    """Who we voted for in ``term``; "" for nobody."""
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Application state as of ``index`` (of ``term``) and the membership at that index."""

    index: int
    term: int
    conf: ConfState
    data: bytes


class ConfChangeKind(IntEnum):
    ADD_LEARNER = 0
    PROMOTE = 1
    REMOVE = 2
    DEMOTE = 3
    """A voter becomes a learner: how a node whose disk lost acknowledged entries
    stops counting towards quorums while it is repaired (see ``repair.py``)."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server membership change (Raft thesis §4.1)."""

    kind: ConfChangeKind
    node_id: str

    def encode(self) -> bytes:
        return f"{int(self.kind)}:{self.node_id}".encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        kind, _, node_id = data.decode().partition(":")
        return ConfChange(ConfChangeKind(int(kind)), node_id)


# ---------------------------------------------------------------- peer messages


@dataclass(frozen=True, slots=True)
class AppendEntries:
    frm: str
    to: str
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResp:
    """Success: ``index`` is the follower's last index matching the leader.
    Reject: ``index`` is the rejected ``prev_index``; the hint is the follower's
    largest index with term <= the probed term, for fast back-off."""

    frm: str
    to: str
    term: int
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote:
    frm: str
    to: str
    term: int
    """For a pre-vote: the term the candidate would campaign in (its term + 1)."""
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False
    """Campaign started by TimeoutNow: voters skip the leader-lease check."""


@dataclass(frozen=True, slots=True)
class RequestVoteResp:
    frm: str
    to: str
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    frm: str
    to: str
    term: int
    commit: int
    ctx: bytes = b""
    """ReadIndex context being confirmed by this round (empty if none)."""


@dataclass(frozen=True, slots=True)
class HeartbeatResp:
    frm: str
    to: str
    term: int
    ctx: bytes = b""


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    frm: str
    to: str
    term: int
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class InstallSnapshotResp:
    frm: str
    to: str
    term: int
    index: int
    """The follower's last index after installing (or its commit index if it was
    already past the snapshot)."""


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: campaign now, without pre-vote or lease checks."""

    frm: str
    to: str
    term: int


@dataclass(frozen=True, slots=True)
class ReadIndexReq:
    """A follower asks the leader for a read index (linearizable read)."""

    frm: str
    to: str
    term: int
    ctx: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResp:
    frm: str
    to: str
    term: int
    ctx: bytes
    index: int


@dataclass(frozen=True, slots=True)
class RepairRequest:
    """A node whose storage broke its promises (acknowledged entries lost) asks the
    leader to take its vote away and send it the log again (``repair.py``)."""

    frm: str
    to: str
    term: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StartCheck:
    """A voter that just started tells the leader where its log ends, so a data
    dir restored from an older copy is caught before it votes (``repair.py``)."""

    frm: str
    to: str
    term: int
    last_index: int


@dataclass(frozen=True, slots=True)
class StartCheckResp:
    """The leader's answer: the highest index it saw this node acknowledge."""

    frm: str
    to: str
    term: int
    acknowledged: int


@dataclass(frozen=True, slots=True)
class RepairGrant:
    """The leader's answer once the damaged node is no longer a voter: it may drop
    its local log and catch up as a learner."""

    frm: str
    to: str
    term: int


RaftMessage = (
    AppendEntries
    | AppendResp
    | RequestVote
    | RequestVoteResp
    | Heartbeat
    | HeartbeatResp
    | InstallSnapshot
    | InstallSnapshotResp
    | TimeoutNow
    | ReadIndexReq
    | ReadIndexResp
    | RepairRequest
    | RepairGrant
    | StartCheck
    | StartCheckResp
)

WIRE_TYPES: dict[int, type] = {
    40: AppendEntries,
    41: AppendResp,
    42: RequestVote,
    43: RequestVoteResp,
    44: Heartbeat,
    45: HeartbeatResp,
    46: InstallSnapshot,
    47: InstallSnapshotResp,
    48: TimeoutNow,
    49: ReadIndexReq,
    50: ReadIndexResp,
    51: RepairRequest,
    52: RepairGrant,
    53: StartCheck,
    54: StartCheckResp,
}


# ---------------------------------------------------------------- local results


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3
    LEARNER = 4
    """Not a voter (a learner, removed, or not yet added): never campaigns."""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once ``applied >= index``."""

    index: int
    ctx: bytes


@dataclass(frozen=True, slots=True)
class ConsensusEvent:
    """For the TUI's consensus log (docs/internals.md §4, topic ``consensus``)."""

    kind: str
    """One of role, term, election, vote, leader, conf."""
    term: int
    role: str | None = None
    leader: str | None = None
    summary: str = ""


@dataclass(frozen=True, slots=True)
class RestoredState:
    """What ``Storage.load()`` found: the core is built from this."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    """Contiguous entries with index > snapshot.index (or starting at 1)."""
    damaged: str = ""
    """Non-empty when storage lost what this node acknowledged (one line: the file,
    the offset, what is missing): the node neither votes nor acknowledges until
    repaired (``repair.py``)."""


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the runtime: persist, then send, then apply, then advance.

    * ``snapshot`` (from the leader): persist with ``Storage.save_snapshot`` and
      restore the state machine from it; it comes before ``entries``.
    * ``hard_state`` and ``entries``: append to the WAL; fsync if ``must_sync``.
    * ``messages``: send only after the above is durable.
    * ``committed_entries``: apply in order (CONF_CHANGE/EMPTY entries carry no
      application command, they are listed so ``index`` stays contiguous).
    * ``read_states``: reads that may be served once applied >= index.
    """

    hard_state: HardState | None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[RaftMessage] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    events: list[ConsensusEvent] = field(default_factory=list)
    must_sync: bool = False
    reset_storage: bool = False
    """The leader granted a repair: drop the whole local log, snapshot and state
    machine *before* persisting anything else in this Ready (the hard state it
    carries is the one to keep)."""
