"""PBFT's data model: signed peer messages, certificates, evidence and Ready batches.

Peer messages follow docs/internals.md §1: frozen slotted dataclasses whose fields
are wire-encodable, registered in ``WIRE_TYPES`` (append-only numbers 90-109).
Every protocol message ends with ``sig``: the signature of its sender (``frm``,
or ``client`` for a ``Request``) over ``signing.payload(msg)`` -- a canonical
encoding of every other field (a ``PrePrepare``'s requests are bound through its
``digest`` instead).  Nothing is trusted because of the connection it came on:
the cluster key lets any member claim any sender, the signature does not.

Unlike Raft's messages these carry no ``to``: a message is signed once and the
same object is broadcast; ``Outbound(to, msg)`` names each destination.

Castro & Liskov, "Practical Byzantine Fault Tolerance and Proactive Recovery"
(TOCS 2002), in its signature variant: the names (pre-prepare, prepare, commit,
checkpoint, view-change, new-view) are the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Request:
    """A client operation.  ``rid`` is unique per client; ``op`` is opaque to PBFT."""

    client: str
    rid: int
    op: bytes
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class PrePrepare:
    """The primary of ``view`` assigns ``seq`` to a batch of requests.  ``digest``
    is ``signing.batch_digest(requests)``; an empty batch is the null request a
    NEW-VIEW uses to fill a gap."""

    frm: str
    view: int
    seq: int
    digest: bytes
    requests: tuple[Request, ...]
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class Prepare:
    frm: str
    view: int
    seq: int
    digest: bytes
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class Commit:
    frm: str
    view: int
    seq: int
    digest: bytes
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    """The result of executing ``client``'s request ``rid``; the client accepts a
    result once f+1 replicas sent the same one."""

    frm: str
    view: int
    client: str
    rid: int
    result: bytes
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """``frm`` executed everything up to ``seq`` and its state hashes to ``state_digest``."""

    frm: str
    seq: int
    state_digest: bytes
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class PreparedCert:
    """Proof that ``preprepare`` prepared: its primary's signature and 2f matching
    PREPAREs from distinct backups."""

    preprepare: PrePrepare
    prepares: tuple[Prepare, ...]


@dataclass(frozen=True, slots=True)
class ViewChange:
    """``frm`` moves to ``view``: its last stable checkpoint (with 2f+1 signed
    CHECKPOINTs as proof, empty for seq 0) and every certificate it prepared above it."""

    frm: str
    view: int
    stable_seq: int
    stable_digest: bytes
    proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedCert, ...]
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class NewView:
    """The primary of ``view`` starts it: 2f+1 VIEW-CHANGEs and the pre-prepares
    they imply (``viewchange.plan_new_view``), which every backup recomputes."""

    frm: str
    view: int
    view_changes: tuple[ViewChange, ...]
    preprepares: tuple[PrePrepare, ...]
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class StateRequest:
    """A replica behind a stable checkpoint asks for the state at ``seq`` or later."""

    frm: str
    seq: int
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class GroupLink:
    """One replacement's switch, provable to a host that knows the group before it
    (``reconfig.py``): the checkpoint at the boundary ``seq``, whose snapshot's group
    header is ``head`` and whose application part hashes to ``app_digest``
    (``signing.state_digest`` of a headed snapshot hashes the two), with the 2f+1
    CHECKPOINTs the group before signed for it."""

    seq: int
    head: bytes
    app_digest: bytes
    proof: tuple[Checkpoint, ...]


@dataclass(frozen=True, slots=True)
class StateReply:
    """The application snapshot at stable checkpoint ``seq``, with its 2f+1 proof, and
    the switches that lead a host which missed some to the group that signed it."""

    frm: str
    seq: int
    state_digest: bytes
    snapshot: bytes
    proof: tuple[Checkpoint, ...]
    sig: bytes = b""
    chain: tuple[GroupLink, ...] = ()
    """The last replacements' ``GroupLink``s, oldest first (appended field: older peers send none)."""


@dataclass(frozen=True, slots=True)
class Status:
    """Sent every ``resend_ticks``: where ``frm`` is, so peers resend what it lacks
    (the pre-prepare and their commits for slots it has not executed, the
    NEW-VIEW of a view it has not entered, their latest checkpoint)."""

    frm: str
    view: int
    active: bool
    low: int
    executed: int
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class Executed:
    """To non-replica followers: ``frm`` executed this batch at ``seq``.  f+1
    matching ones prove it committed (one of them is correct)."""

    frm: str
    view: int
    seq: int
    digest: bytes
    requests: tuple[Request, ...]
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class KeyAnnounce:
    """``frm``'s Ed25519 public key, signed by that key.  Believed only if ``frm``
    is the id the key derives (``agent/identity_key.py``)."""

    frm: str
    public: bytes
    sig: bytes = b""


@dataclass(frozen=True, slots=True)
class Genesis:
    """The replica set a PBFT cluster was formed with, and each replica's public key."""

    frm: str
    replicas: tuple[str, ...]
    keys: tuple[bytes, ...]
    sig: bytes = b""


PbftMessage = (
    Request
    | PrePrepare
    | Prepare
    | Commit
    | Reply
    | Checkpoint
    | ViewChange
    | NewView
    | StateRequest
    | StateReply
    | Status
    | Executed
)

WIRE_TYPES: dict[int, type] = {
    90: Request,
    91: PrePrepare,
    92: Prepare,
    93: Commit,
    94: Reply,
    95: Checkpoint,
    96: ViewChange,
    97: NewView,
    98: StateRequest,
    99: StateReply,
    100: Status,
    101: Executed,
    102: KeyAnnounce,
    103: Genesis,
}
"""Append-only message numbers (PBFT's range is 90-109)."""


# ---------------------------------------------------------------- local outputs


@dataclass(frozen=True, slots=True)
class Outbound:
    """Send ``msg`` to replica (or client, follower) ``to``."""

    to: str
    msg: PbftMessage


@dataclass(frozen=True, slots=True)
class Evidence:
    """``culprit`` signed two conflicting messages (``kind``: pre-prepare, prepare
    or commit) for one ``view`` and ``seq``.  Both signed messages are kept, so
    anyone holding the culprit's public key can check the claim."""

    kind: str
    culprit: str
    view: int
    seq: int
    first: PrePrepare | Prepare | Commit
    second: PrePrepare | Prepare | Commit

    def describe(self) -> str:
        return (
            f"{self.culprit} signed two {self.kind}s for view {self.view} seq {self.seq}: "
            f"{self.first.digest.hex()[:12]} and {self.second.digest.hex()[:12]}"
        )


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    """Execute ``requests`` in order at ``seq`` (an empty batch is a no-op)."""

    seq: int
    view: int
    digest: bytes
    requests: tuple[Request, ...]


@dataclass(frozen=True, slots=True)
class StableCheckpoint:
    """A checkpoint 2f+1 replicas signed: the durable log may drop records at or
    below ``seq``; ``snapshot`` is the state there."""

    seq: int
    digest: bytes
    snapshot: bytes
    proof: tuple[Checkpoint, ...]


@dataclass(frozen=True, slots=True)
class HardState:
    """The view this replica is in and whether it entered it (NEW-VIEW accepted)."""

    view: int = 0
    active: bool = True


PersistRecord = PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView | PreparedCert
"""What the durable log holds: what this replica signed (so a restart never signs a
conflicting message), the certificates it prepared (so its VIEW-CHANGEs keep them) and
the NEW-VIEW of its view (so it can resend it to a replica that missed it)."""


@dataclass(frozen=True, slots=True)
class Restored:
    """What storage hands a restarting replica."""

    hard_state: HardState = HardState()
    stable: StableCheckpoint | None = None
    records: tuple[PersistRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class PbftEvent:
    """For the consensus log and the TUI: view changes, stable checkpoints, evidence."""

    kind: str
    """One of view-change, new-view, stable, state-transfer, evidence."""
    view: int
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the runtime: persist, then send, then execute, then advance.

    * ``reset_to`` (state transfer): restore the application from this stable
      checkpoint's snapshot *before* executing ``committed``; persist it.
    * ``hard_state``, ``records``: append to the durable log; ``stable``: the log
      may drop records at or below its seq (keep the snapshot).  Sync before sending.
    * ``messages``: send after the above is durable.
    * ``committed``: execute in order; call ``reply(request, result)`` for each
      request, and if ``checkpoint_due`` is set, ``checkpoint(seq, snapshot)``
      with the application state after the last batch, before ``advance``.
    * ``evidence``, ``events``: report.
    """

    hard_state: HardState | None = None
    records: list[PersistRecord] = field(default_factory=list)
    stable: StableCheckpoint | None = None
    reset_to: StableCheckpoint | None = None
    messages: list[Outbound] = field(default_factory=list)
    committed: list[CommittedBatch] = field(default_factory=list)
    checkpoint_due: int = 0
    evidence: list[Evidence] = field(default_factory=list)
    events: list[PbftEvent] = field(default_factory=list)
