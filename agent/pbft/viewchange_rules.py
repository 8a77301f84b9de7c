"""PBFT view changes (rules of ``PbftReplica``; the checks are in ``viewchange.py``).

A backup whose view-change timer fires moves to view v+1 and sends
VIEW-CHANGE; a replica that sees f+1 replicas ask for views above its own
joins the lowest of them, and one that sees its primary ask for the next
view joins it (a primary stepping down: ``transfer-leader``).  The primary of
the view, once it holds 2f+1 valid VIEW-CHANGEs, sends NEW-VIEW with the
planned pre-prepares (behind the plan's checkpoint it first fetches that
state); a backup checks NEW-VIEW against its VIEW-CHANGEs, enters the view
and PREPAREs every planned pre-prepare.
"""

from __future__ import annotations

from agent.pbft import viewchange
from agent.pbft.messages import (
    NewView,
    PbftEvent,
    Prepare,
    PrePrepare,
    ViewChange,
)
from agent.pbft.signing import request_digest
from agent.pbft.state import ReplicaState


class ViewChangeRules(ReplicaState):
    def _on_timeout(self) -> None:
        if self.active and self.primary == self.id:
            return
        if not self.active:
            self._backoff = min(self._backoff * 2, self.config.max_backoff)
        self._start_view_change(self.view + 1)

    def _start_view_change(self, view: int) -> None:
        if view <= self.view and not self.active:
            return
        if view < self.view:
            return
        self.view = view
        self.active = False
        self._new_view = None
        self.log.enter_view(view)
        self._assigned.clear()
        self._view_changes = {s: m for s, m in self._view_changes.items() if m.view >= view}
        self._send_view_change()
        self._events.append(PbftEvent("view-change", view, f"{self.id} asks for view {view}"))
        self._timer = None
        self._arm_view_change_timer()
        self._maybe_new_view()

    def _send_view_change(self) -> None:
        vc = self._sign(
            ViewChange(
                self.id,
                self.view,
                self._stable.seq,
                self._stable.digest,
                self._stable.proof,
                self.log.certificates(self.low),
            )
        )
        self._my_vc = vc
        self._view_changes[self.id] = vc
        self._records.append(vc)
        self._broadcast(vc)

    def _refresh_view_change(self) -> None:
        """A replacement took effect while this replica waits for a NEW-VIEW: it signs its
        VIEW-CHANGE for the view again, from the switch's checkpoint (the one it sent may
        carry the old group's certificates, which the new group refuses: a stall, seed
        70009), and keeps only the VIEW-CHANGEs that hold under the new group.  Safe: the
        new one differs by a later checkpoint and by dropping certificates above it that
        the old group ordered and nobody executed (the fence, ``reconfig.py``)."""
        self._view_changes = {
            s: m
            for s, m in self._view_changes.items()
            if s != self.id
            and viewchange.valid_view_change(
                self.checker, self.group, m, self.config.window, self.membership.signers
            )
        }
        self._send_view_change()
        self._arm_view_change_timer()
        self._maybe_new_view()

    def _arm_view_change_timer(self) -> None:
        """Waiting for NEW-VIEW: the timer runs only once 2f+1 replicas asked for
        this view (the paper's liveness rule), so a replica cut off alone stays
        one view ahead instead of climbing through views nobody else is in."""
        if self.active or self._timer is not None:
            return
        # A VIEW-CHANGE for a later view counts too: its sender left this one as well.
        asking = sum(1 for m in self._view_changes.values() if m.view >= self.view)
        if asking >= self.group.quorum:
            self._arm_timer()

    def _on_view_change(self, vc: ViewChange) -> None:
        if not self._from_replica(vc.frm):
            return
        if vc.view < self.view or (vc.view == self.view and self.active):
            return
        held = self._view_changes.get(vc.frm)
        if held is not None and held.view >= vc.view:
            return
        if not viewchange.valid_view_change(
            self.checker, self.group, vc, self.config.window, self.membership.signers
        ):
            self.dropped += 1
            return
        self._view_changes[vc.frm] = vc
        self._arm_view_change_timer()
        above = sorted(m.view for s, m in self._view_changes.items() if m.view > self.view and s != self.id)
        if len(above) >= self.f + 1:
            self._start_view_change(above[0])
        elif self.active and vc.view == self.view + 1 and vc.frm == self.primary:
            # The primary steps down (``transfer-leader``): only liveness is at stake,
            # and a primary can stall the view anyway.
            self._start_view_change(vc.view)
        self._maybe_new_view()

    def _maybe_new_view(self) -> None:
        if self.active or self.group.primary(self.view) != self.id:
            return
        vcs = tuple(m for _, m in sorted(self._view_changes.items()) if m.view == self.view)
        if len(vcs) < self.group.quorum:
            return
        vcs = vcs[: self.group.quorum]
        plan = viewchange.plan_new_view(vcs)
        if plan.min_s > self.low:
            self._on_stable_proof(plan.min_s, plan.stable_digest, plan.proof)
            if plan.min_s > self.low:
                return  # behind the view's checkpoint: lead once the state is here
        pps = []
        for seq, digest, held in plan.slots:
            requests = held.requests if held is not None else ()
            pp = self._vote(PrePrepare(self.id, self.view, seq, digest, requests))
            if pp is None:
                return  # we signed something else for this view and seq: cannot lead it
            pps.append(pp)
        nv = self._sign(NewView(self.id, self.view, vcs, tuple(pps)))
        self._broadcast(nv)
        self._enter_view(nv, plan)

    def _on_new_view(self, nv: NewView) -> None:
        if nv.view < self.view or (nv.view == self.view and self.active):
            return
        plan = viewchange.check_new_view(
            self.checker, self.group, nv, self.config.window, self.membership.signers
        )
        if plan is None:
            self.dropped += 1
            return
        if nv.view > self.view:
            self.view = nv.view
            self.log.enter_view(nv.view)
            self._assigned.clear()
        self._enter_view(nv, plan)

    def _enter_view(self, nv: NewView, plan: viewchange.Plan) -> None:
        self.active = True
        self._new_view = nv
        self._records.append(nv)  # resent to whoever missed it, after a restart too
        self._my_vc = None
        self.view_changes += 1
        self._timer = None
        self._events.append(PbftEvent("new-view", self.view, f"view {self.view} led by {nv.frm}"))
        if plan.min_s > self.low:
            self._on_stable_proof(plan.min_s, plan.stable_digest, plan.proof)
        top = max((pp.seq for pp in nv.preprepares), default=0)
        self._seq = max(self.low, plan.min_s, top)
        for pp in nv.preprepares:
            if not self.low < pp.seq <= self.high:
                continue  # behind: resent once the state transfer is done
            self.log.accept_preprepare(pp)
            self._assigned.update(request_digest(r) for r in pp.requests)
            if nv.frm != self.id:
                prepare = self._vote(Prepare(self.id, self.view, pp.seq, pp.digest))
                if prepare is not None:
                    self.log.add_prepare(prepare)
                    self._broadcast(prepare)
        for seq in sorted(self.log.slots):
            self._check_slot(seq)
        if self.is_primary():
            self._propose()
        elif self._pending:
            self._arm_timer()
