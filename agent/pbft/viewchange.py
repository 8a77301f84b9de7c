"""View changes: checking VIEW-CHANGE and NEW-VIEW messages, and planning a new view.

Theory of operation
-------------------
A backup that suspects the primary of view v stops taking part in v and sends
VIEW-CHANGE(v+1): its last stable checkpoint with the 2f+1 signed CHECKPOINTs
that prove it, and every prepared certificate above it.  The primary of v+1
waits for 2f+1 valid VIEW-CHANGEs (its own among them) and plans the view:

* ``min_s``: the highest stable checkpoint any of them proves;
* ``max_s``: the highest sequence number any certificate above ``min_s`` holds;
* for every n in (min_s, max_s]: a pre-prepare in v+1 for the digest of the
  highest-view certificate for n, or the null request (an empty batch) if none.

A request that committed in an earlier view prepared at 2f+1 replicas, f+1 of
them correct; any 2f+1 VIEW-CHANGEs include one of those, so the plan keeps it
at its sequence number.  Backups accept NEW-VIEW only if it carries 2f+1 valid
VIEW-CHANGEs for its view and the pre-prepares are exactly the plan they imply:
a Byzantine new primary cannot drop or replace a committed request.

Everything here is a pure function over signed messages and a
``CheckedVerifier``; the core decides when to call them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.pbft.messages import Checkpoint, NewView, PreparedCert, PrePrepare, ViewChange
from agent.pbft.signing import CheckedVerifier, batch_digest

NULL_DIGEST = batch_digest(())
"""The digest of the null request a NEW-VIEW puts into a gap."""


@dataclass(frozen=True, slots=True)
class Group:
    """The replica set: who is primary of which view, and the quorum sizes."""

    replicas: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.replicas)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """2f+1."""
        return 2 * self.f + 1

    def primary(self, view: int) -> str:
        return self.replicas[view % self.n]


@dataclass(frozen=True, slots=True)
class Plan:
    """What a NEW-VIEW must contain, computed from its VIEW-CHANGEs."""

    min_s: int
    stable_digest: bytes
    proof: tuple[Checkpoint, ...]
    slots: tuple[tuple[int, bytes, PrePrepare | None], ...]
    """(seq, digest, the certificate's pre-prepare or None for the null request)."""


def valid_proof(
    checker: CheckedVerifier, group: Group, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]
) -> bool:
    """2f+1 distinct replicas signed CHECKPOINT(seq, digest); seq 0 needs no proof."""
    if seq == 0:
        return not proof and digest == b""
    senders = {cp.frm for cp in proof}
    if len(senders) != len(proof) or len(senders) < group.quorum:
        return False
    return all(
        cp.frm in group.replicas and cp.seq == seq and cp.state_digest == digest and checker.check(cp)
        for cp in proof
    )


def valid_cert(
    checker: CheckedVerifier, group: Group, cert: PreparedCert, below_view: int, low: int, window: int
) -> bool:
    """A pre-prepare of a view before ``below_view`` signed by that view's primary,
    inside (low, low + window], with 2f matching PREPAREs from distinct backups."""
    pp = cert.preprepare
    if not (pp.view < below_view and low < pp.seq <= low + window):
        return False
    if pp.frm != group.primary(pp.view) or not checker.check(pp) or not checker.check_batch(pp):
        return False
    senders = {p.frm for p in cert.prepares}
    if len(senders) != len(cert.prepares) or len(senders) < 2 * group.f:
        return False
    return all(
        p.frm in group.replicas
        and p.frm != pp.frm
        and (p.view, p.seq, p.digest) == (pp.view, pp.seq, pp.digest)
        and checker.check(p)
        for p in cert.prepares
    )


Signers = Callable[[int], Group]
"""The group whose CHECKPOINTs prove a checkpoint at a seq (``reconfig.Membership.signers``)."""


def valid_view_change(
    checker: CheckedVerifier, group: Group, vc: ViewChange, window: int, signers: Signers | None = None
) -> bool:
    if vc.frm not in group.replicas or not checker.check(vc):
        return False
    proof_group = signers(vc.stable_seq) if signers is not None else group
    if not valid_proof(checker, proof_group, vc.stable_seq, vc.stable_digest, vc.proof):
        return False
    seqs = [c.preprepare.seq for c in vc.prepared]
    if len(set(seqs)) != len(seqs):
        return False
    return all(valid_cert(checker, group, c, vc.view, vc.stable_seq, window) for c in vc.prepared)


def plan_new_view(view_changes: tuple[ViewChange, ...]) -> Plan:
    """The pre-prepares a NEW-VIEW built from these (valid) VIEW-CHANGEs must hold."""
    base = max(view_changes, key=lambda vc: (vc.stable_seq, vc.frm))
    min_s = base.stable_seq
    best: dict[int, PrePrepare] = {}
    for vc in view_changes:
        for cert in vc.prepared:
            pp = cert.preprepare
            held = best.get(pp.seq)
            if pp.seq > min_s and (held is None or (pp.view, pp.digest) > (held.view, held.digest)):
                best[pp.seq] = pp
    max_s = max(best, default=min_s)
    slots = tuple(
        (seq, best[seq].digest, best[seq]) if seq in best else (seq, NULL_DIGEST, None)
        for seq in range(min_s + 1, max_s + 1)
    )
    return Plan(min_s, base.stable_digest, base.proof, slots)


def check_new_view(
    checker: CheckedVerifier, group: Group, nv: NewView, window: int, signers: Signers | None = None
) -> Plan | None:
    """The plan of a valid NEW-VIEW, or None: signed by the view's primary, 2f+1
    valid VIEW-CHANGEs for that view from distinct replicas, and pre-prepares
    that are exactly their plan, each signed by the primary."""
    if nv.frm != group.primary(nv.view) or not checker.check(nv):
        return None
    senders = {vc.frm for vc in nv.view_changes}
    if len(senders) != len(nv.view_changes) or len(senders) < group.quorum:
        return None
    for vc in nv.view_changes:
        if vc.view != nv.view or not valid_view_change(checker, group, vc, window, signers):
            return None
    plan = plan_new_view(nv.view_changes)
    if len(plan.slots) != len(nv.preprepares):
        return None
    for (seq, digest, _), pp in zip(plan.slots, nv.preprepares, strict=True):
        if (pp.frm, pp.view, pp.seq, pp.digest) != (nv.frm, nv.view, seq, digest):
            return None
        if not checker.check(pp) or not checker.check_batch(pp):
            return None
    return plan
