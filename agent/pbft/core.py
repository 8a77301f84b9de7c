"""The sans-IO PBFT replica (Castro & Liskov, signature variant), shaped like ``raft/core.py``.

Theory of operation
-------------------
``PbftReplica`` is a synchronous object.  The runtime feeds it ``tick()`` every
``config.tick_interval`` seconds and ``step(msg)`` for every peer message, and
drains ``ready()``: persist (records, hard state, stable checkpoint) → send →
execute ``committed`` (calling ``reply`` per request and ``checkpoint`` when
due) → ``advance(ready)``.  No sockets, no clock, no asyncio, no msgpack.

Every message a replica accepts is signed by its sender (``signing.py``); what
fails verification is dropped and counted.  The rules, by message:

==============  ================  ==========================================================
message         accepted when     then
==============  ================  ==========================================================
Request         client signed     executed: resend the stored reply; else remember it;
                                  primary: assign it a seq (batch); backup: forward it to
                                  the primary and start the view-change timer
PrePrepare      view == ours,     backup: log it, sign and broadcast PREPARE; a second
                active, from the  one with another digest for the view and seq is
                primary, seq in   evidence: shown to every replica, and the view changes.
                window, digest    (Resent copies travel via any replica: the primary's
                binds requests    signature is what counts.)
Prepare         from a backup,    logged (a second digest from one sender is evidence,
                view == ours,     kept beside the first); another digest than our
                seq in window     pre-prepare's: show the sender our pre-prepare; 2f
                                  matching + the pre-prepare = prepared: keep the
                                  certificate, sign and broadcast COMMIT
Commit          view == ours,     logged (as Prepare); the pre-prepare + 2f+1 matching
                seq in window     (a commit certificate) = committed; execute in order
Checkpoint      seq > low,        2f+1 matching = stable: low := seq, collect the log;
                seq % K == 0      behind it: state transfer from one of the signers
ViewChange      view > ours, or   kept (the newest per sender); f+1 for views above ours,
                == ours and       or our primary asking for the next: join it; primary of
                waiting           the view with 2f+1 for it: NEW-VIEW (``plan_new_view``)
NewView         view >= ours,     enter the view; every planned pre-prepare is logged and
                not yet active    PREPAREd; behind its checkpoint: state transfer
                in it; checks
StateRequest    from a replica    answer with the stable snapshot and its 2f+1 proof (and
                                  the proofs of the last switches: ``GroupLink``)
StateReply      proof and digest  reset the application to it (``Ready.reset_to``); the
                verify, ahead     proof's group may be one the chain of switches leads to
                                  from ours (a host that missed replacements)
Status          from a replica    behind us: resend the pre-prepares and the commit
                                  certificates of slots we executed, our NEW-VIEW, our
                                  checkpoint proof; its checkpoint before our last two
                                  switches: send it our state (``_push_state``)
==============  ================  ==========================================================

Timers (in ticks): a backup that knows of a request not yet executed runs the
view-change timer; when it fires it sends VIEW-CHANGE(v+1).  Waiting for the
NEW-VIEW runs the same timer once 2f+1 replicas asked for the view; each
consecutive view change doubles it (up to ``max_backoff``), and executing a
request in an active view resets it.  Every
``resend_ticks`` a replica broadcasts a signed STATUS and resends what it
signed for slots it has not executed (or its VIEW-CHANGE while waiting):
progress over a lossy network comes from retransmission.

Durability: a replica never signs two different digests for one (kind, view,
seq), even across a restart: what it signs and the certificates it prepares
are ``Ready.records``, persisted before the messages leave (``Restored``
brings them back; a prepared certificate of the group before a replacement is
not brought back: ``_of_group``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from agent.pbft.checkpointing import CheckpointRules
from agent.pbft.config import PbftConfig
from agent.pbft.messages import (
    Checkpoint,
    Commit,
    CommittedBatch,
    Evidence,
    Executed,
    HardState,
    NewView,
    Outbound,
    PbftEvent,
    PbftMessage,
    PersistRecord,
    Prepare,
    PreparedCert,
    PrePrepare,
    Ready,
    Reply,
    Request,
    Restored,
    StateReply,
    StateRequest,
    Status,
    ViewChange,
)
from agent.pbft.reconfig import SHORT, is_replace, link_of, split_snapshot
from agent.pbft.signing import (
    Signer,
    Verifier,
    batch_digest,
    request_digest,
)
from agent.pbft.viewchange_rules import ViewChangeRules

__all__ = ["PbftReplica"]


class PbftReplica(CheckpointRules, ViewChangeRules):
    def __init__(
        self,
        config: PbftConfig,
        signer: Signer,
        verifier: Verifier,
        replicas: tuple[str, ...],
        restored: Restored | None = None,
        observers: tuple[str, ...] = (),
        previous: tuple[tuple[str, ...], int] | None = None,
    ) -> None:
        super().__init__(config, signer, verifier, replicas, observers, previous)
        self._replace_outcomes: OrderedDict[bytes, tuple[bool, str, int]] = OrderedDict()
        self._last_executed: Executed | None = None
        self._restore(restored or Restored())

    # ============================================================ public API

    def tick(self) -> None:
        self._ticks += 1
        if self.retired:
            return
        if self._ticks % self.config.resend_ticks == 0:
            self._resend()
        if self._timer is None and self.active and self._pending and self.primary != self.id:
            self._arm_timer()
        if self._timer is not None and self._ticks >= self._timer:
            self._timer = None
            self._on_timeout()

    def step(self, msg: PbftMessage) -> None:
        rule = _RULES.get(type(msg))
        if rule is None or self.retired:
            self.dropped += 1
            return
        if not self.checker.check(msg):
            return
        getattr(self, rule)(msg)

    def propose(self, request: Request) -> None:
        """A signed request from a local client (same path as one from the network)."""
        self.step(request)

    def request_view_change(self) -> None:
        """Ask the group to move to the next view (``transfer-leader``)."""
        self._start_view_change(self.view + 1)

    def reply(self, request: Request, result: bytes) -> None:
        """The application executed ``request``: sign the result for its client."""
        msg = self._sign(Reply(self.id, self.view, request.client, request.rid, result))
        self._replies[(request.client, request.rid)] = msg
        while len(self._replies) > self.config.max_replies:
            self._replies.popitem(last=False)
        self._msgs.append(Outbound(request.client, msg))  # (to ourselves too: our client)

    def ready(self) -> Ready | None:
        if self._unadvanced:
            return None
        hs = HardState(self.view, self.active)
        hs_out = hs if hs != self._hs else None
        if not (
            hs_out
            or self._msgs
            or self._records
            or self._committed
            or self._events
            or self._new_evidence
            or self._stable_out
            or self._reset_to
        ):
            return None
        rd = Ready(
            hard_state=hs_out,
            records=self._records,
            stable=self._stable_out,
            reset_to=self._reset_to,
            messages=self._msgs,
            committed=self._committed,
            checkpoint_due=self._checkpoint_wait if self._committed else 0,
            evidence=self._new_evidence,
            events=self._events,
        )
        self._hs = hs
        self._msgs, self._records, self._committed, self._events, self._new_evidence = [], [], [], [], []
        self._stable_out = self._reset_to = None
        self._unadvanced = True
        return rd

    def advance(self, rd: Ready) -> None:
        self._unadvanced = False

    def window_phases(self) -> list[tuple[int, str]]:
        """(seq, phase) for every slot in the window: pre-prepared, prepared,
        committed, executed (for the TUI)."""
        rows = []
        for seq, slot in sorted(self.log.slots.items()):
            if seq <= self.executed:
                phase = "executed"
            elif slot.committed is not None:
                phase = "committed"
            elif slot.cert is not None and slot.cert.preprepare.view == self.view:
                phase = "prepared"
            elif slot.pp is not None:
                phase = "pre-prepared"
            else:
                phase = "voting"
            rows.append((seq, phase))
        return rows

    def status(self) -> dict[str, Any]:
        return {
            "engine": "pbft",
            "view": self.view,
            "active": self.active,
            "primary": self.primary,
            "replicas": list(self.group.replicas),
            "replace_pending": self.membership.pending_status(),
            "retired": self.retired,
            "n": self.group.n,
            "f": self.f,
            "low": self.low,
            "high": self.high,
            "executed": self.executed,
            "pending": len(self._pending),
            "view_changes": self.view_changes,
            "evidence": len(self.evidence),
            "rejected_signatures": self.checker.rejected,
            "dropped": self.dropped,
        }


    # ============================================================ restore

    def _restore(self, restored: Restored) -> None:
        stable = restored.stable
        if stable is not None and stable.seq > 0:
            info, _ = split_snapshot(stable.snapshot)
            self.membership.adopt(info, stable.seq)
            link = link_of(stable)  # (the switch's own checkpoint: its proof is kept again)
            if link is not None:
                self.membership.note_link(link)
            self._stable = stable
            self.low = self.executed = self._seq = stable.seq
            self._snapshots[stable.seq] = (stable.digest, stable.snapshot)
            self._load_recent(stable.snapshot)
        self.view = restored.hard_state.view
        self.active = restored.hard_state.active
        self._hs = restored.hard_state
        for record in restored.records:
            self._restore_record(record)

    def _restore_record(self, record: PersistRecord) -> None:
        if isinstance(record, PreparedCert):
            pp = record.preprepare
            if pp.seq > self.low and self._of_group(record):
                slot = self.log.slot(pp.seq)
                if slot.cert is None or slot.cert.preprepare.view <= pp.view:
                    slot.cert = record
            return
        if isinstance(record, ViewChange):
            if record.view == self.view and not self.active:
                self._my_vc = record
                self._view_changes[self.id] = record
            return
        if isinstance(record, NewView):
            if record.view == self.view and self.active:
                self._new_view = record
            return
        if isinstance(record, Checkpoint):
            return
        if record.seq <= self.low:
            return
        self._signed[(type(record).__name__, record.view, record.seq)] = record.digest
        if record.view == self.view:
            slot = self.log.slot(record.seq)
            slot.mine.append(record)
            if isinstance(record, PrePrepare):
                slot.pp = record
                self._seq = max(self._seq, record.seq)
            elif isinstance(record, Prepare):
                self.log.add_prepare(record)
            else:
                self.log.add_commit(record)

    def _of_group(self, cert: PreparedCert) -> bool:
        """Prepared by the current group.  A certificate above a replacement's boundary
        ordered by the group before it (``_switch_group`` drops those slots in memory, but
        the log keeps what lies above the stable checkpoint) would make every VIEW-CHANGE
        of this replica invalid to the new group after a restart: a stall
        (tests/sim/test_pbft_replace_faults.py, seed 60690)."""
        pp = cert.preprepare
        replicas = self.group.replicas
        return pp.frm == self.group.primary(pp.view) and all(p.frm in replicas for p in cert.prepares)

    # ============================================================ requests

    def _on_request(self, req: Request) -> None:
        digest = request_digest(req)
        stored = self._replies.get((req.client, req.rid))
        if stored is not None:
            self._msgs.append(Outbound(req.client, stored))
            return
        if digest in self._done or digest[:SHORT] in self._done_before:
            return  # executed (before the checkpoint state we hold, for the second test)
        if digest in self._pending:
            self._forward(req)
            return
        if len(self._pending) >= self.config.max_pending:
            self.dropped += 1
            return
        self._pending[digest] = req
        self._forward(req)
        if self.is_primary():
            self._propose()
        elif self.active:
            self._arm_timer()

    def _forward(self, req: Request) -> None:
        if self.active and self.primary != self.id:
            self._msgs.append(Outbound(self.primary, req))

    def _propose(self) -> None:
        """Primary: give pending requests sequence numbers while the window allows
        and fewer than ``max_inflight`` are unexecuted; what arrives meanwhile waits
        and goes out as one batch.  With a replacement pending nothing goes above its
        checkpoint, and null requests fill the gap to it (so it takes effect at once)."""
        fence = self.membership.fence
        limit = self.high if fence is None else min(self.high, fence)
        while self._seq < limit and self._seq - self.executed < self.config.max_inflight:
            batch = tuple(r for d, r in self._pending.items() if d not in self._assigned)[
                : self.config.max_batch
            ]
            if not batch and fence is None:
                return
            self._seq += 1
            pp = self._vote(PrePrepare(self.id, self.view, self._seq, batch_digest(batch), batch))
            if pp is None:
                continue
            self._assigned.update(request_digest(r) for r in batch)
            self.log.accept_preprepare(pp)
            self._broadcast(pp)
            self._check_slot(pp.seq)

    # ============================================================ normal case

    def _on_preprepare(self, pp: PrePrepare) -> None:
        if not self.active or pp.view != self.view or pp.frm != self.primary:
            self.dropped += 1
            return
        if not self._in_window(pp.seq) or not self.checker.check_batch(pp):
            return
        fence = self.membership.fence
        if fence is not None and pp.seq > fence:
            self.dropped += 1  # ordered under a group that ends at the fence
            return
        accepted, evidence = self.log.accept_preprepare(pp)
        if evidence is not None:
            self._depose(evidence)
        if not accepted:
            return
        for r in pp.requests:
            self._pending.setdefault(request_digest(r), r)
        if pp.frm != self.id:
            prepare = self._vote(Prepare(self.id, pp.view, pp.seq, pp.digest))
            if prepare is not None:
                self.log.add_prepare(prepare)
                self._broadcast(prepare)
        self._check_slot(pp.seq)

    def _depose(self, evidence: Evidence) -> None:
        """The primary signed two pre-prepares for one seq: report it, show both to
        every replica (each then holds the evidence itself) and change the view."""
        self._report(evidence)
        self._broadcast(evidence.first)
        self._broadcast(evidence.second)
        self._start_view_change(self.view + 1)

    def _on_prepare(self, msg: Prepare) -> None:
        if not self._from_replica(msg.frm) or msg.frm == self.group.primary(msg.view):
            return
        if msg.view != self.view or not self._in_window(msg.seq):
            return
        added, evidence = self.log.add_prepare(msg)
        self._report(evidence)
        pp = self.log.slots[msg.seq].pp
        if added and pp is not None and pp.view == msg.view and pp.digest != msg.digest:
            # It prepared another digest: either it lies or the primary equivocated.
            # Show it our pre-prepare; if the primary signed both, it now holds the
            # evidence (and shows both to everyone, ``_depose``).
            self._msgs.append(Outbound(msg.frm, pp))
        if added and self.active:
            self._check_slot(msg.seq)

    def _on_commit(self, msg: Commit) -> None:
        if msg.view > self.view or not self._in_window(msg.seq):
            return
        if msg.view < self.view and msg.frm in self.group.replicas:  # (our own vote among them)
            # Resent from a commit certificate of an earlier view: 2f+1 of them commit
            # the slot as well (f+1 correct replicas prepared it; every later view keeps it).
            if self.log.add_old_commit(msg, self.view):
                self._check_old_certificate(msg.seq, msg.view, msg.digest)
            return
        if not self._from_replica(msg.frm) or msg.view != self.view:
            return
        added, evidence = self.log.add_commit(msg)
        self._report(evidence)
        if added and self.active:
            self._check_slot(msg.seq)

    def _check_slot(self, seq: int) -> None:
        slot = self.log.slot(seq)
        pp = slot.pp
        if pp is None or pp.view != self.view:
            return
        if slot.prepared(self.view, self.f, self.primary):
            if slot.cert is None or slot.cert.preprepare.view < self.view:
                slot.cert = slot.make_cert(self.view, self.primary)
                self._records.append(slot.cert)
            if not slot.has_commit(self.view, self.id, pp.digest):
                commit = self._vote(Commit(self.id, self.view, seq, pp.digest))
                if commit is not None:
                    self.log.add_commit(commit)
                    self._broadcast(commit)
        # 2f+1 COMMITs are a commit certificate even if we missed the PREPAREs:
        # f+1 correct replicas prepared it, so every later view keeps it.
        if slot.committed is None and slot.commit_quorum(self.view, pp.digest, self.f):
            slot.committed = CommittedBatch(seq, self.view, pp.digest, pp.requests)
            slot.proof = slot.commit_votes(self.view, pp.digest)
            self._execute()

    def _check_old_certificate(self, seq: int, view: int, digest: bytes) -> None:
        slot = self.log.slot(seq)
        batch = slot.batch_for(digest)
        if slot.committed is None and batch is not None and slot.commit_quorum(view, digest, self.f):
            slot.committed = CommittedBatch(seq, view, digest, batch[1])
            slot.proof = slot.commit_votes(view, digest)
            self._execute()

    def _execute(self) -> None:
        """Hand committed batches to the application in sequence order, stopping
        after a checkpoint's seq until its snapshot came back (``checkpoint``)."""
        ran = False
        while not self._checkpoint_wait:
            fence = self.membership.fence
            if fence is not None and self.executed >= fence:
                break  # the new group takes over once the checkpoint at the fence is stable
            slot = self.log.slots.get(self.executed + 1)
            if slot is None or slot.committed is None:
                break
            batch = slot.committed
            self.executed = batch.seq
            self._committed.append(batch)
            ran = True
            short = []
            for r in batch.requests:
                d = request_digest(r)
                short.append(d[:SHORT])
                self._pending.pop(d, None)
                self._assigned.discard(d)
                self._done[d] = None
                if is_replace(r.op):
                    self._decide_replace(batch.seq, r, d)
            if short:
                self._recent.append((batch.seq, tuple(short)))
            while self._recent and self._recent[0][0] <= batch.seq - self.config.checkpoint_interval:
                self._recent.popleft()
            self._tell_observers(batch)
            if batch.seq % self.config.checkpoint_interval == 0:
                self._checkpoint_wait = batch.seq
        while len(self._done) > 2 * self.config.max_pending:
            self._done.popitem(last=False)
        if ran and self.active:
            self._backoff = 1
            self._timer = None
            if self._pending and self.primary != self.id:
                self._arm_timer()
        if ran and self.is_primary():
            self._propose()

    def _decide_replace(self, seq: int, request: Request, digest: bytes) -> None:
        ok, why, at = self.membership.decide(seq, request.op)
        self._replace_outcomes[digest] = (ok, why, at)
        while len(self._replace_outcomes) > 64:
            self._replace_outcomes.popitem(last=False)
        if ok:
            new = self.membership.pending[0].replicas if self.membership.pending else ()
            self._events.append(
                PbftEvent("replace", self.view, f"replicas {','.join(new)} from checkpoint {at} on")
            )

    def replace_outcome(self, request: Request) -> tuple[bool, str, int] | None:
        """How the replace ``request`` (executed here) was decided: (accepted, why not,
        the checkpoint it takes effect after)."""
        return self._replace_outcomes.get(request_digest(request))

    def _tell_observers(self, batch: CommittedBatch) -> None:
        if not self.observers:
            return
        msg = self._sign(Executed(self.id, batch.view, batch.seq, batch.digest, batch.requests))
        self._last_executed = msg
        for observer in self.observers:
            self._msgs.append(Outbound(observer, msg))

    # ============================================================ retransmission

    def _resend(self) -> None:
        self._broadcast(self._sign(Status(self.id, self.view, self.active, self.low, self.executed)))
        mine = self._my_checkpoint
        if mine is not None and mine.seq > self.low:
            # Not stable yet: peers may have lost it (a pending replacement waits on it).
            self._broadcast(mine)
        last = self._last_executed
        if last is not None and last.seq == self.executed:
            # Followers learn how far we are even if every EXECUTED of the last batch was
            # lost (behind, they ask for what they miss: ``PbftFollower.tick``).
            for observer in self.observers:
                self._msgs.append(Outbound(observer, last))
        if not self.active:
            if self._my_vc is not None:
                self._broadcast(self._my_vc)
            if self._fetch is not None:
                self._request_state()
            return
        for seq, slot in sorted(self.log.slots.items()):
            if seq > self.executed:
                for msg in slot.mine:
                    self._broadcast(msg)
                if slot.pp is not None and slot.pp.frm != self.id:
                    self._broadcast(slot.pp)
        if self._fetch is not None:
            self._request_state()

    def _on_status(self, st: Status) -> None:
        if st.frm in self.observers and st.low < self.low:
            # A replaced replica still behind the switch: the proof lets it switch too.
            for cp in self._stable.proof:
                self._msgs.append(Outbound(st.frm, cp))
            self._push_state(st.frm, st.low)
            return
        if not self._from_replica(st.frm):
            return
        behind_view = st.view < self.view or (st.view == self.view and not st.active)
        if behind_view and self.active and self._new_view is not None:
            self._msgs.append(Outbound(st.frm, self._new_view))
        if st.low < self.low:
            for cp in self._stable.proof:
                self._msgs.append(Outbound(st.frm, cp))
            self._push_state(st.frm, st.low)
        self._resend_executed(st)

    def _resend_executed(self, st: Status) -> None:
        """``st.frm`` is behind us in execution: what lets it catch up."""
        same_view = st.view == self.view and self.active and st.active
        for seq in range(max(st.executed, self.low) + 1, self.executed + 1):
            slot = self.log.slots.get(seq)
            if slot is None:
                continue
            # The pre-prepare (in our common view) and the commit certificate that
            # committed the slot here, of whichever view (each COMMIT carries its
            # sender's signature): enough to execute without us.
            if same_view and slot.pp is not None:
                self._msgs.append(Outbound(st.frm, slot.pp))
            if same_view or st.view >= self.view:
                for vote in slot.proof:
                    self._msgs.append(Outbound(st.frm, vote))


_RULES: dict[type, str] = {
    Request: "_on_request",
    PrePrepare: "_on_preprepare",
    Prepare: "_on_prepare",
    Commit: "_on_commit",
    Checkpoint: "_on_checkpoint",
    ViewChange: "_on_view_change",
    NewView: "_on_new_view",
    StateRequest: "_on_state_request",
    StateReply: "_on_state_reply",
    Status: "_on_status",
}
"""Message type -> the method holding its rule (the table in the module doc).
Replies and EXECUTEDs are for clients and followers: a replica drops them."""
