"""The state of one PBFT replica and the helpers every rule uses.

``PbftReplica`` (``core.py``) is this state plus three sets of rules kept in
modules of their own: the normal case and retransmission (``core.py``),
checkpoints and state transfer (``checkpointing.py``), and view changes
(``viewchange_rules.py``).  A rule set calls into another only through the
methods declared at the bottom of ``ReplicaState``.
"""

from __future__ import annotations

import abc
from collections import OrderedDict, deque
from typing import Any

from agent.pbft.config import PbftConfig
from agent.pbft.log import CheckpointTable, MessageLog
from agent.pbft.messages import (
    Checkpoint,
    Commit,
    CommittedBatch,
    Evidence,
    HardState,
    NewView,
    Outbound,
    PbftEvent,
    PbftMessage,
    PersistRecord,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    StableCheckpoint,
    ViewChange,
)
from agent.pbft.reconfig import Membership
from agent.pbft.signing import CheckedVerifier, Signer, Verifier, sign
from agent.pbft.viewchange import Group


class ReplicaState(abc.ABC):
    def __init__(
        self,
        config: PbftConfig,
        signer: Signer,
        verifier: Verifier,
        replicas: tuple[str, ...],
        observers: tuple[str, ...] = (),
        previous: tuple[tuple[str, ...], int] | None = None,
    ) -> None:
        assert len(set(replicas)) == len(replicas) >= 4, "PBFT needs n >= 4 distinct replicas"
        self.config = config
        self.id = signer.node_id
        self.membership = Membership(tuple(replicas), config.checkpoint_interval)
        """The replica group, a pending replacement and the group before the last one
        (``reconfig.py``); ``previous``: (that group, its last checkpoint) for a replica
        that joined by a replacement."""
        if previous is not None:
            self.membership.previous = (Group(previous[0]), previous[1])
            observers = (*observers, *previous[0])  # the replaced replica follows
        self.observers = tuple(sorted({o for o in observers if o not in replicas}))
        self._signer = signer
        self.checker = CheckedVerifier(verifier)
        self.view = 0
        self.active = True
        self.low = 0
        self.executed = 0
        self._seq = 0
        self._stable = StableCheckpoint(0, b"", b"", ())
        self.log = MessageLog()
        self._checkpoints = CheckpointTable()
        self._snapshots: dict[int, tuple[bytes, bytes]] = {}
        self._signed: dict[tuple[str, int, int], bytes] = {}
        self._pending: OrderedDict[bytes, Request] = OrderedDict()
        self._assigned: set[bytes] = set()
        self._done: OrderedDict[bytes, None] = OrderedDict()
        self._recent: deque[tuple[int, tuple[bytes, ...]]] = deque()
        """Requests executed in the last K seqs (short digests): part of the checkpoint state."""
        self._done_before: set[bytes] = set()
        """Short digests of requests executed before the state this replica restored or
        was sent (``reconfig.Recent``): a retransmission of one is not taken for new."""
        self._replies: OrderedDict[tuple[str, int], Reply] = OrderedDict()
        self._view_changes: dict[str, ViewChange] = {}
        self._my_vc: ViewChange | None = None
        self._new_view: NewView | None = None
        self._fetch: tuple[int, tuple[str, ...], int] | None = None
        self._checkpoint_wait = 0
        self._my_checkpoint: Checkpoint | None = None
        """The last CHECKPOINT this replica signed (resent until it is stable)."""
        self._ticks = 0
        self._timer: int | None = None
        self._backoff = 1
        self.view_changes = 0
        """Views entered since start (NEW-VIEWs accepted or sent)."""
        self.dropped = 0
        """Messages dropped: outside the watermarks, wrong view, not from a replica."""
        self.evidence: list[Evidence] = []
        # Ready accumulation
        self._msgs: list[Outbound] = []
        self._records: list[PersistRecord] = []
        self._committed: list[CommittedBatch] = []
        self._events: list[PbftEvent] = []
        self._new_evidence: list[Evidence] = []
        self._stable_out: StableCheckpoint | None = None
        self._reset_to: StableCheckpoint | None = None
        self._hs = HardState()
        self._unadvanced = False

    @property
    def group(self) -> Group:
        return self.membership.group

    @property
    def retired(self) -> bool:
        """Replaced (``replicas replace``): this host no longer votes; it follows."""
        return self.id not in self.membership.group.replicas

    @property
    def f(self) -> int:
        return self.group.f

    @property
    def primary(self) -> str:
        return self.group.primary(self.view)

    def is_primary(self) -> bool:
        return self.active and self.primary == self.id

    @property
    def high(self) -> int:
        return self.low + self.config.window

    @property
    def stable_checkpoint(self) -> StableCheckpoint:
        return self._stable

    # ============================================================ helpers

    def _sign(self, msg: Any) -> Any:
        return sign(self._signer, msg)

    def _broadcast(self, msg: PbftMessage) -> None:
        for replica in self.group.replicas:
            if replica != self.id:
                self._msgs.append(Outbound(replica, msg))

    def _in_window(self, seq: int) -> bool:
        if self.low < seq <= self.high:
            return True
        self.dropped += 1
        return False

    def _from_replica(self, frm: str) -> bool:
        if frm in self.group.replicas and frm != self.id:
            return True
        self.dropped += 1
        return False

    def _report(self, evidence: Evidence | None) -> None:
        if evidence is None:
            return
        self.evidence.append(evidence)
        self._new_evidence.append(evidence)
        self._events.append(PbftEvent("evidence", self.view, evidence.describe()))

    def _vote(self, msg: PrePrepare | Prepare | Commit) -> Any:
        """Sign ``msg`` unless that would contradict something already signed."""
        key = (type(msg).__name__, msg.view, msg.seq)
        held = self._signed.get(key)
        if held is not None and held != msg.digest:
            return None
        signed = self._sign(msg)
        if held is None:
            self._signed[key] = msg.digest
            self._records.append(signed)
        if self.low < msg.seq <= self.high:  # (a NEW-VIEW may re-propose below our low)
            slot = self.log.slot(msg.seq)
            if signed not in slot.mine:
                slot.mine.append(signed)
        return signed

    def _arm_timer(self, force: bool = False) -> None:
        if self._timer is not None and not force:
            return
        self._timer = self._ticks + self.config.view_change_ticks * self._backoff

    # ============================================================ rules used across modules
    # Implemented by the rule modules mixed into ``PbftReplica`` (core.py,
    # checkpointing.py, viewchange_rules.py); declared here so each can call the others.

    @abc.abstractmethod
    def _check_slot(self, seq: int) -> None:
        """Move slot ``seq`` on (prepared, committed) if its certificates are complete."""

    @abc.abstractmethod
    def _execute(self) -> None:
        """Execute committed slots in sequence order."""

    @abc.abstractmethod
    def _propose(self) -> None:
        """Primary: pre-prepare what is queued, within the watermarks."""

    @abc.abstractmethod
    def _on_stable_proof(self, seq: int, digest: bytes, proof: tuple[Any, ...]) -> None:
        """A checkpoint at ``seq`` is stable with ``proof``: move the low watermark."""

    @abc.abstractmethod
    def _start_view_change(self, view: int) -> None:
        """Leave the current view for ``view`` (VIEW-CHANGE)."""

    @abc.abstractmethod
    def _refresh_view_change(self) -> None:
        """Waiting for a NEW-VIEW across a replacement: VIEW-CHANGE again from the new checkpoint."""

    @abc.abstractmethod
    def _maybe_new_view(self) -> None:
        """The next primary: send NEW-VIEW once it holds enough VIEW-CHANGEs."""
