"""PBFT's message log: one slot per sequence number, and the checkpoint table.

A slot holds what a replica accepted for its sequence number: the pre-prepare
of the current view, the PREPAREs and COMMITs of each view by sender, the
highest-view prepared certificate, and the batch once committed.  The quorum
predicates are the paper's:

=================  ==========================================================
prepared(v, n, d)  the pre-prepare of view v for n with digest d, and 2f
                   matching PREPAREs from distinct backups (not the primary)
committed-local    prepared, and 2f+1 matching COMMITs from distinct replicas
=================  ==========================================================

A replica signs one PREPARE and one COMMIT per view and slot, and a primary
one pre-prepare: a second one with another digest is *equivocation*, and both
signed messages become ``Evidence``.  A second pre-prepare is refused; a
second vote is kept beside the first (at most ``DIGESTS_PER_SENDER``): the
sender is faulty, and a faulty replica's vote may count towards any quorum
(the quorum sizes already allow for f of them), whereas keeping only its first
vote would let it poison a slot for good.

The checkpoint table keeps, per sender, its few newest CHECKPOINTs above the
low watermark (a Byzantine sender cannot grow it), and reports a proof once
2f+1 distinct replicas signed the same (seq, state digest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.pbft.messages import (
    Checkpoint,
    Commit,
    CommittedBatch,
    Evidence,
    Prepare,
    PreparedCert,
    PrePrepare,
    Request,
)

CHECKPOINTS_PER_SENDER = 4
"""Newest checkpoints kept per sender above the low watermark."""
OLD_VIEWS = 2
"""Older views whose resent COMMITs a slot keeps (to complete a commit certificate)."""
DIGESTS_PER_SENDER = 4
"""Votes kept per sender, view and slot (only an equivocating sender has more than one)."""

Votes = dict[tuple[str, bytes], Prepare | Commit]
"""One view's votes in one slot, by (sender, digest)."""


@dataclass(slots=True)
class Slot:
    seq: int
    pp: PrePrepare | None = None
    """The pre-prepare accepted in the current view."""
    prepares: dict[int, Votes] = field(default_factory=dict)
    commits: dict[int, Votes] = field(default_factory=dict)
    cert: PreparedCert | None = None
    """The highest-view certificate this replica prepared (VIEW-CHANGE carries it)."""
    committed: CommittedBatch | None = None
    proof: tuple[Prepare | Commit, ...] = ()
    """The 2f+1 matching COMMITs (of one view) that committed it: sent to a replica
    that missed them, whatever view it is in now."""
    mine: list[PrePrepare | Prepare | Commit] = field(default_factory=list)
    """What this replica signed for the current view (resent until executed)."""

    def prepared(self, view: int, f: int, primary: str) -> bool:
        pp = self.pp
        if pp is None or pp.view != view:
            return False
        votes = self.prepares.get(view, {})
        return sum(1 for s, d in votes if s != primary and d == pp.digest) >= 2 * f

    def commit_quorum(self, view: int, digest: bytes, f: int) -> bool:
        return sum(1 for _, d in self.commits.get(view, {}) if d == digest) >= 2 * f + 1

    def commit_votes(self, view: int, digest: bytes) -> tuple[Prepare | Commit, ...]:
        return tuple(v for (_, d), v in sorted(self.commits.get(view, {}).items()) if d == digest)

    def batch_for(self, digest: bytes) -> tuple[int, tuple[Request, ...]] | None:
        """(view, requests) of a pre-prepare this slot holds with ``digest``, if any."""
        for pp in (self.pp, self.cert.preprepare if self.cert is not None else None):
            if pp is not None and pp.digest == digest:
                return pp.view, pp.requests
        return None

    def has_commit(self, view: int, sender: str, digest: bytes) -> bool:
        return (sender, digest) in self.commits.get(view, {})

    def make_cert(self, view: int, primary: str) -> PreparedCert:
        pp = self.pp
        assert pp is not None
        votes = self.prepares.get(view, {})
        matching = tuple(
            p
            for (s, d), p in sorted(votes.items())
            if s != primary and d == pp.digest and isinstance(p, Prepare)
        )
        return PreparedCert(pp, matching)

    def enter_view(self, view: int) -> None:
        """Forget what belongs to older views (certificates and commits stay)."""
        self.pp = None
        self.mine = []
        self.prepares = {v: m for v, m in self.prepares.items() if v >= view}
        self.commits = {v: m for v, m in self.commits.items() if v >= view}


class MessageLog:
    """Slots in (low, low + window], equivocation detection, garbage collection."""

    def __init__(self) -> None:
        self.slots: dict[int, Slot] = {}
        self._reported: set[tuple[str, str, int, int]] = set()

    def slot(self, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot(seq)
        return slot

    def accept_preprepare(self, pp: PrePrepare) -> tuple[bool, Evidence | None]:
        """(newly accepted?, evidence if it conflicts with the one accepted)."""
        slot = self.slot(pp.seq)
        held = slot.pp
        if held is None or held.view != pp.view:
            slot.pp = pp
            return True, None
        if held.digest == pp.digest:
            return False, None
        return False, self._evidence("pre-prepare", held, pp)

    def add_prepare(self, msg: Prepare) -> tuple[bool, Evidence | None]:
        slot = self.slot(msg.seq)
        return self._add_vote(slot, slot.prepares.setdefault(msg.view, {}), msg, "prepare")

    def add_commit(self, msg: Commit) -> tuple[bool, Evidence | None]:
        slot = self.slot(msg.seq)
        return self._add_vote(slot, slot.commits.setdefault(msg.view, {}), msg, "commit")

    def add_old_commit(self, msg: Commit, current: int) -> bool:
        """A COMMIT of a view before ``current`` for a slot not committed here: part of
        a commit certificate someone resent.  At most ``OLD_VIEWS`` older views are kept."""
        slot = self.slot(msg.seq)
        if slot.committed is not None:
            return False
        added, _ = self._add_vote(slot, slot.commits.setdefault(msg.view, {}), msg, "commit")
        old = sorted(v for v in slot.commits if v < current)
        for view in old[: max(0, len(old) - OLD_VIEWS)]:
            del slot.commits[view]
        return added

    def _add_vote(
        self, slot: Slot, votes: Votes, msg: Prepare | Commit, kind: str
    ) -> tuple[bool, Evidence | None]:
        if (msg.frm, msg.digest) in votes:
            return False, None
        held = [v for (s, _), v in votes.items() if s == msg.frm]
        if len(held) >= DIGESTS_PER_SENDER:
            # Full of an equivocator's votes: only the pre-prepare's digest gets in,
            # in place of one that cannot matter.
            pp = slot.pp
            if pp is None or pp.view != msg.view or pp.digest != msg.digest:
                return False, None
            stale = next(v for v in held if v.digest != pp.digest)
            del votes[(stale.frm, stale.digest)]
        votes[(msg.frm, msg.digest)] = msg
        return True, (self._evidence(kind, held[0], msg) if held else None)

    def _evidence(
        self, kind: str, first: PrePrepare | Prepare | Commit, second: PrePrepare | Prepare | Commit
    ) -> Evidence | None:
        key = (kind, first.frm, first.view, first.seq)
        if key in self._reported:
            return None
        self._reported.add(key)
        return Evidence(kind, first.frm, first.view, first.seq, first, second)

    def enter_view(self, view: int) -> None:
        for slot in self.slots.values():
            slot.enter_view(view)
        self._reported = {k for k in self._reported if k[2] >= view}

    def collect(self, low: int) -> None:
        """Drop every slot at or below the stable checkpoint ``low``."""
        for seq in [s for s in self.slots if s <= low]:
            del self.slots[seq]
        self._reported = {k for k in self._reported if k[3] > low}

    def certificates(self, low: int) -> tuple[PreparedCert, ...]:
        return tuple(s.cert for seq, s in sorted(self.slots.items()) if seq > low and s.cert is not None)


class CheckpointTable:
    """CHECKPOINT messages above the low watermark, bounded per sender."""

    def __init__(self) -> None:
        self._by_sender: dict[str, dict[int, Checkpoint]] = {}

    def add(self, cp: Checkpoint, quorum: int) -> tuple[Checkpoint, ...] | None:
        """Record ``cp``; the 2f+1 proof for its (seq, digest) once complete."""
        held = self._by_sender.setdefault(cp.frm, {})
        if cp.seq in held:
            return None
        held[cp.seq] = cp
        while len(held) > CHECKPOINTS_PER_SENDER:
            del held[min(held)]
        if cp.seq not in held:
            return None
        proof = tuple(
            m[cp.seq]
            for _, m in sorted(self._by_sender.items())
            if cp.seq in m and m[cp.seq].state_digest == cp.state_digest
        )
        return proof if len(proof) >= quorum else None

    def collect(self, low: int) -> None:
        for held in self._by_sender.values():
            for seq in [s for s in held if s <= low]:
                del held[seq]

    def latest_seen(self) -> int:
        return max((max(m) for m in self._by_sender.values() if m), default=0)
