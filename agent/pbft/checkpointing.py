"""PBFT checkpoints, garbage collection and state transfer (rules of ``PbftReplica``).

Every K executed sequence numbers the application hands back its state
(``checkpoint``); the replica signs CHECKPOINT(seq, sha256(state)) and
broadcasts it.  2f+1 matching CHECKPOINTs make it *stable*: the low watermark
moves to seq, and the log, older checkpoints and older snapshots are dropped
(``Ready.stable`` lets storage do the same).  A replica that sees a stable
checkpoint above what it executed is behind: it asks one of the signers for
the snapshot (STATE-REQUEST, trying the next signer on every resend), checks
it against the 2f+1 signed digests, and resets the application to it
(``Ready.reset_to``).
"""

from __future__ import annotations

from collections import deque

from agent.pbft import viewchange
from agent.pbft.messages import (
    Checkpoint,
    Executed,
    Outbound,
    PbftEvent,
    StableCheckpoint,
    StateReply,
    StateRequest,
)
from agent.pbft.reconfig import SHORT, link_of, recent_of, split_snapshot, wrap_snapshot
from agent.pbft.signing import state_digest
from agent.pbft.state import ReplicaState


class CheckpointRules(ReplicaState):
    def checkpoint(self, seq: int, snapshot: bytes) -> None:
        """The application state after executing ``seq`` (``Ready.checkpoint_due``)."""
        if seq != self._checkpoint_wait:
            return
        self._checkpoint_wait = 0
        # The state names the group for what follows it (a replacement's boundary: reconfig.py).
        snapshot = wrap_snapshot(self.membership.group_after(seq), snapshot, tuple(self._recent))
        digest = state_digest(snapshot)
        self._snapshots[seq] = (digest, snapshot)
        cp = self._sign(Checkpoint(self.id, seq, digest))
        self._my_checkpoint = cp
        self._records.append(cp)
        self._broadcast(cp)
        self._on_checkpoint(cp)
        self._execute()

    def _load_recent(self, snapshot: bytes) -> None:
        """Restarting from, or sent, a checkpoint state: the requests executed in its last
        K seqs are done (a client retransmitting one made this replica, which had
        forgotten it, start a view change alone, and a restarted primary order it again:
        tests/sim/test_pbft_replace_faults.py, ``ExecutedAgain``)."""
        recent = recent_of(snapshot)
        self._recent = deque(recent)
        self._done_before = done = {d for _, ds in recent for d in ds}
        # Those received before the state arrived are done too (seed 61017).
        for digest in [d for d in self._pending if d[:SHORT] in done]:
            del self._pending[digest]
            self._assigned.discard(digest)
        if self.active and not self._pending:
            self._timer = None  # (armed for them; nothing is waiting now)

    def _on_checkpoint(self, cp: Checkpoint) -> None:
        signers = self.membership.signers(cp.seq)
        if cp.frm not in signers.replicas or cp.seq <= self.low:
            return
        if cp.seq % self.config.checkpoint_interval:
            self.dropped += 1
            return
        proof = self._checkpoints.add(cp, signers.quorum)
        if proof is not None:
            self._on_stable_proof(cp.seq, cp.state_digest, proof)

    def _on_stable_proof(self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        if seq <= self.low:
            return
        mine = self._snapshots.get(seq)
        if mine is not None and mine[0] == digest:
            self._make_stable(StableCheckpoint(seq, digest, mine[1], proof))
        elif self.executed < seq and (self._fetch is None or self._fetch[0] < seq):
            # Ask the current replicas first (a replaced one signed but no longer answers).
            signers = sorted(
                (cp.frm for cp in proof if cp.frm != self.id), key=lambda s: s not in self.group.replicas
            )
            self._fetch = (seq, tuple(signers), 0)
            self._request_state()

    def _make_stable(self, stable: StableCheckpoint) -> None:
        self._stable = stable
        self.low = stable.seq
        self._stable_out = stable
        self.log.collect(self.low)
        self._checkpoints.collect(self.low)
        self._snapshots = {s: v for s, v in self._snapshots.items() if s >= self.low}
        self._signed = {k: v for k, v in self._signed.items() if k[2] > self.low}
        self._seq = max(self._seq, self.low)
        self._events.append(PbftEvent("stable", self.view, f"checkpoint {stable.seq} stable"))
        if self._fetch is not None and self._fetch[0] <= self.low:
            self._fetch = None
        info, _ = split_snapshot(stable.snapshot)
        if self.membership.adopt(info, stable.seq):
            link = link_of(stable)
            if link is not None:
                self.membership.note_link(link)
            self._switch_group(stable.seq)
        elif self.is_primary():
            self._propose()

    def _switch_group(self, seq: int) -> None:
        """The checkpoint at ``seq`` is stable and names a new group: what was ordered
        above it under the old one is dropped (nothing executed it: the fence), the
        replaced replica becomes an observer and the new group starts the next view."""
        for s in [s for s in self.log.slots if s > seq]:
            del self.log.slots[s]
        self._seq = self.low
        self._assigned.clear()
        old = self.membership.previous[0].replicas if self.membership.previous else ()
        self.observers = tuple(
            sorted({*self.observers, *old} - set(self.group.replicas))
        )
        self._view_changes = {s: m for s, m in self._view_changes.items() if s in self.group.replicas}
        self._events.append(
            PbftEvent("group", self.view, f"replicas {','.join(self.group.replicas)} from {seq} on")
        )
        if self.retired:
            self._timer = None
            self._fetch = None
            return
        if self.active:
            if not self._view_of_new_group(seq):
                self._start_view_change(self.view + 1)
        else:
            # It already left its view and waits for a NEW-VIEW (checked under the new
            # group): it stays, with a VIEW-CHANGE from the new checkpoint.  (Moving on
            # again took a replica that had joined the others' VIEW-CHANGEs before it
            # learnt the switch -- after a restart, or a state transfer -- one view past
            # them, alone: seeds 60138, 60166 of tests/sim/test_pbft_replace_faults.py.)
            self._refresh_view_change()

    def _view_of_new_group(self, seq: int) -> bool:
        """Our view was started by the new group already: its NEW-VIEW holds under the new
        group and its checkpoint is at or past the switch (2f+1 VIEW-CHANGEs of replicas
        that had switched).  A replica that learns the switch late -- it entered that
        view still under the old group -- stays in it instead of going one view past
        the others, alone (seed 62013 of the crash sims with n = 7)."""
        nv = self._new_view
        if nv is None or nv.view != self.view:
            return False
        plan = viewchange.check_new_view(
            self.checker, self.group, nv, self.config.window, self.membership.signers
        )
        return plan is not None and plan.min_s >= seq

    def _request_state(self) -> None:
        if self._fetch is None:
            return
        seq, signers, attempt = self._fetch
        if not signers:
            return
        self._msgs.append(Outbound(signers[attempt % len(signers)], self._sign(StateRequest(self.id, seq))))
        self._fetch = (seq, signers, attempt + 1)

    def _on_state_request(self, msg: StateRequest) -> None:
        stable = self._stable
        known = msg.frm in self.group.replicas or msg.frm in self.observers
        if not known or msg.frm == self.id:
            return
        if stable.seq >= msg.seq and stable.seq > 0:
            self._send_state(msg.frm)
        elif msg.frm in self.observers:
            # A follower missed EXECUTEDs above the stable checkpoint: send them again
            # (it asks every replica, and takes a batch on f+1 matching ones).
            for seq in range(max(msg.seq, self.low + 1), self.executed + 1):
                slot = self.log.slots.get(seq)
                batch = slot.committed if slot is not None else None
                if batch is not None:
                    executed = Executed(self.id, batch.view, seq, batch.digest, batch.requests)
                    self._msgs.append(Outbound(msg.frm, self._sign(executed)))

    def _send_state(self, to: str) -> None:
        """The stable state, its proof and the proofs of the last switches (``reconfig.py``)."""
        stable = self._stable
        chain = tuple(self.membership.links)
        reply = StateReply(self.id, stable.seq, stable.digest, stable.snapshot, stable.proof, chain=chain)
        self._msgs.append(Outbound(to, self._sign(reply)))

    def _push_state(self, to: str, behind: int) -> None:
        """``to``'s stable checkpoint ``behind`` predates our last two switches: it may
        know only the group two switches ago, too few of whose replicas are left to
        prove a checkpoint of ours (2f+1), so it would never ask.  Send it the state
        with the chain of switches.  (One switch behind, the proof it is sent leads it
        to ask: the groups share n-1 >= 2f+1 replicas.)"""
        links = self.membership.links
        if len(links) >= 2 and behind < links[-2].seq and self._stable.seq > 0:
            self._send_state(to)

    def _on_state_reply(self, msg: StateReply) -> None:
        if msg.seq <= self.executed or msg.seq <= self.low:
            return
        if state_digest(msg.snapshot) != msg.state_digest:
            self.dropped += 1
            return
        # Signed by the group we know, or by one the chain of switches leads to (a host
        # that missed two replacements or more: its old group is not 2f+1 of the new one).
        signers = self.membership.signers(msg.seq)
        via, links = self.membership.chain_signers(self.checker, msg.chain, msg.seq)
        if not viewchange.valid_proof(self.checker, signers, msg.seq, msg.state_digest, msg.proof) and (
            via is None or not viewchange.valid_proof(self.checker, via, msg.seq, msg.state_digest, msg.proof)
        ):
            self.dropped += 1
            return
        for link in links:
            self.membership.note_link(link)
        stable = StableCheckpoint(msg.seq, msg.state_digest, msg.snapshot, msg.proof)
        self.executed = msg.seq
        self._checkpoint_wait = 0
        self._snapshots[msg.seq] = (msg.state_digest, msg.snapshot)
        self._reset_to = stable
        self._committed = []  # the snapshot covers them
        self._load_recent(msg.snapshot)
        self._events.append(PbftEvent("state-transfer", self.view, f"state at {msg.seq} from {msg.frm}"))
        self._make_stable(stable)
        self._execute()
        self._maybe_new_view()
