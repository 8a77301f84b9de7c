"""The two non-replica roles of PBFT, sans-IO: a client and a follower.

``PbftClient`` signs requests and sends each to the primary it believes in;
a request with no result after ``retry_ticks`` is broadcast to every replica
(the backups forward it to the primary and start their view-change timers, so
a silent primary is replaced).  A result is accepted once f+1 replicas sent
the same signed REPLY: at least one of them is correct, and correct replicas
execute the same requests in the same order.

``PbftFollower`` is a host outside the replica set.  It accepts a batch at a
sequence number once f+1 replicas signed the same EXECUTED for it, and hands
batches out in order; behind (a gap it cannot fill), it asks a replica for the
last stable checkpoint, which it checks against its 2f+1 signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.pbft.messages import (
    CommittedBatch,
    Executed,
    Outbound,
    Reply,
    Request,
    StableCheckpoint,
    StateReply,
    StateRequest,
)
from agent.pbft.reconfig import Membership, is_replace, split_snapshot
from agent.pbft.signing import CheckedVerifier, Signer, Verifier, sign, state_digest
from agent.pbft.viewchange import Group, valid_proof


@dataclass(slots=True)
class _Outstanding:
    request: Request
    sent_at: int
    votes: dict[str, bytes] = field(default_factory=dict)


class PbftClient:
    def __init__(
        self,
        signer: Signer,
        verifier: Verifier,
        replicas: tuple[str, ...],
        retry_ticks: int = 10,
        first_rid: int = 0,
    ) -> None:
        """``first_rid``: request ids continue after it.  Replicas keep each client's
        replies by (client, rid) and answer a known rid with the stored reply, so a
        client that restarts must not reuse rids: the runtime passes the wall clock
        in microseconds (a client sends far fewer than 10^6 requests a second)."""
        self.id = signer.node_id
        self._signer = signer
        self.checker = CheckedVerifier(verifier)
        self.group = Group(tuple(replicas))
        self.retry_ticks = retry_ticks
        self.view = 0
        self._rid = first_rid
        self._ticks = 0
        self._outstanding: dict[int, _Outstanding] = {}
        self._msgs: list[Outbound] = []
        self._results: list[tuple[int, bytes]] = []

    def submit(self, op: bytes, rid: int | None = None) -> Request:
        """Sign and send ``op``; its result comes out of ``take_results`` as (rid, result)."""
        if rid is None:
            self._rid += 1
            rid = self._rid
        request = sign(self._signer, Request(self.id, rid, op))
        self._outstanding[rid] = _Outstanding(request, self._ticks)
        self._msgs.append(Outbound(self.group.primary(self.view), request))
        return request

    def abandon(self, rid: int) -> None:
        self._outstanding.pop(rid, None)

    def step(self, msg: Reply) -> None:
        if not isinstance(msg, Reply) or msg.client != self.id or msg.frm not in self.group.replicas:
            return
        pending = self._outstanding.get(msg.rid)
        if pending is None or not self.checker.check(msg):
            return
        pending.votes[msg.frm] = msg.result
        self.view = max(self.view, msg.view)
        if sum(1 for r in pending.votes.values() if r == msg.result) >= self.group.f + 1:
            del self._outstanding[msg.rid]
            self._results.append((msg.rid, msg.result))

    def tick(self) -> None:
        self._ticks += 1
        for pending in self._outstanding.values():
            if self._ticks - pending.sent_at >= self.retry_ticks:
                pending.sent_at = self._ticks
                for replica in self.group.replicas:
                    self._msgs.append(Outbound(replica, pending.request))

    def take_messages(self) -> list[Outbound]:
        msgs, self._msgs = self._msgs, []
        return msgs

    def take_results(self) -> list[tuple[int, bytes]]:
        results, self._results = self._results, []
        return results


class PbftFollower:
    """Follows committed batches from outside the replica set (f+1 signed EXECUTEDs)."""

    def __init__(
        self,
        signer: Signer,
        verifier: Verifier,
        replicas: tuple[str, ...],
        window: int,
        stall_ticks: int = 20,
        *,
        interval: int = 0,
        applied: int = 0,
        previous: tuple[tuple[str, ...], int] | None = None,
        handoff: StableCheckpoint | None = None,
    ) -> None:
        """``interval``: K (default window // 2); ``applied``: where the local state is
        (a replaced replica follows from its last executed seq); ``previous``: the
        group before the last replacement and its last checkpoint; ``handoff``: a
        replaced replica's stable checkpoint at the switch, whose proof it sends the
        group every ``stall_ticks`` until the new group runs past it.  Its CHECKPOINT
        may be one of the 2f+1 the others still need (another old replica down), and
        as a follower it no longer resends it or answers STATUS (seed 70266 of
        tests/sim/test_pbft_replace_faults.py)."""
        self.id = signer.node_id
        self._signer = signer
        self.checker = CheckedVerifier(verifier)
        self.membership = Membership(tuple(replicas), interval or max(1, window // 2))
        if previous is not None:
            self.membership.previous = (Group(previous[0]), previous[1])
        self.window = window
        self.stall_ticks = stall_ticks
        self.applied = applied
        self._votes: dict[int, dict[str, Executed]] = {}
        self._ticks = 0
        self._progress_at = 0
        self._asked = 0
        self._highest = 0
        """The highest seq any replica said it executed (even beyond our window)."""
        self._msgs: list[Outbound] = []
        self._batches: list[CommittedBatch] = []
        self._reset: StableCheckpoint | None = None
        self._handoff = handoff if handoff is not None and handoff.proof else None

    @property
    def group(self) -> Group:
        return self.membership.group

    def step(self, msg: Executed | StateReply) -> None:
        pending = self.membership.pending
        known = msg.frm in self.group.replicas or (pending is not None and msg.frm in pending[0].replicas)
        if not known or not self.checker.check(msg):
            return
        if isinstance(msg, StateReply):
            self._on_state(msg)
            return
        self._highest = max(self._highest, msg.seq)
        if not self.applied < msg.seq <= self.applied + self.window:
            return
        self._votes.setdefault(msg.seq, {})[msg.frm] = msg
        self._drain()

    def _drain(self) -> None:
        while (votes := self._votes.get(self.applied + 1)) is not None:
            # Only the group that ordered this seq counts (a replacement's boundary may lie behind).
            digests = [m.digest for s, m in votes.items() if s in self.group.replicas]
            if not digests:
                return
            best = max(set(digests), key=digests.count)
            if digests.count(best) < self.group.f + 1:
                return
            chosen = next(m for m in votes.values() if m.digest == best)
            if not all(self.checker.check(r) for r in chosen.requests):
                return
            del self._votes[self.applied + 1]
            self.applied += 1
            self._progress_at = self._ticks
            self._batches.append(CommittedBatch(chosen.seq, chosen.view, chosen.digest, chosen.requests))
            for r in chosen.requests:
                if is_replace(r.op):
                    self.membership.decide(chosen.seq, r.op)
            self.membership.reach(chosen.seq)

    def _on_state(self, msg: StateReply) -> None:
        if msg.seq <= self.applied or state_digest(msg.snapshot) != msg.state_digest:
            return
        signers = self.membership.signers(msg.seq)
        if not valid_proof(self.checker, signers, msg.seq, msg.state_digest, msg.proof):
            # Missed replacements: the chain of switches may lead to the group that signed.
            via, _ = self.membership.chain_signers(self.checker, msg.chain, msg.seq)
            if via is None or not valid_proof(self.checker, via, msg.seq, msg.state_digest, msg.proof):
                return
        self.membership.adopt(split_snapshot(msg.snapshot)[0], msg.seq)
        self._reset = StableCheckpoint(msg.seq, msg.state_digest, msg.snapshot, msg.proof)
        self._batches = []
        self.applied = msg.seq
        self._votes = {s: v for s, v in self._votes.items() if s > msg.seq}
        self._progress_at = self._ticks
        self._drain()

    def tick(self) -> None:
        """Behind with nothing arriving for ``stall_ticks``: ask every replica for what
        follows ``applied`` -- the stable state if it lies beyond, else the EXECUTEDs
        again (f+1 matching ones are needed, so one replica's answer is not enough)."""
        self._ticks += 1
        handoff = self._handoff
        if handoff is not None and self._ticks % self.stall_ticks == 1:
            if self.applied > handoff.seq:
                self._handoff = None  # f+1 of the new group executed past the switch
            else:
                for to in self.group.replicas:
                    self._msgs.extend(Outbound(to, cp) for cp in handoff.proof if cp.frm != to)
        if self._highest > self.applied and self._ticks - self._progress_at >= self.stall_ticks:
            self._progress_at = self._ticks
            self._asked += 1
            request = sign(self._signer, StateRequest(self.id, self.applied + 1))
            for to in self.group.replicas:
                self._msgs.append(Outbound(to, request))

    def take_messages(self) -> list[Outbound]:
        msgs, self._msgs = self._msgs, []
        return msgs

    def take(self) -> tuple[StableCheckpoint | None, list[CommittedBatch]]:
        """(a state to restore first, or None; then batches to apply in order)."""
        reset, batches = self._reset, self._batches
        self._reset, self._batches = None, []
        return reset, batches
