"""The membership rules: how alive/suspect/dead news and PushPull merges change a view.

Theory of operation
-------------------
These are memberlist's ``aliveNode``, ``suspectNode``, ``deadNode`` and
``mergeState`` (state.go), as a mixin of :class:`agent.swim.core.SwimNode`.
Incarnation numbers order news about a node; only the node itself increments
its own.  At an equal incarnation, suspect beats alive and dead beats
suspect; a higher-incarnation Alive beats everything.  Every accepted change
is re-broadcast (that is the epidemic) and reported as a MemberEvent.

* Alive: accepted if newer; a node we do not know is admitted only from a
  PushPull, or from gossip sent by an existing member (who admitted it).  News
  that *we* are something else than what we are is refuted: bump our
  incarnation past the accusation and broadcast Alive.
* Suspect: starts a Lifeguard suspicion timer, or confirms a running one (an
  accuser not counted before shortens it, and the confirmation is re-broadcast
  so others shorten theirs).
* Telling (a bridge's lesson): the member whose probe fails sends its Suspect
  to the accused over a stream as well (the runtime relays streams around a
  broken link), and its probes of a member it suspects carry the suspicion
  outside gossip's retransmit budget; the accused sends its refuting Alive
  straight back to the accuser the same way.  Gossip alone may spend its few
  retransmissions on members that cannot reach the accused, and the suspicion
  runs out before the refutation crosses the bridge.
* Refused (issue 14): a Suspect may say its accuser's own TCP connect to the
  suspect's port was refused, the kernel's word that the process is gone.
  Such news never starts a suspicion by itself (a single link's word suspects
  no one: a probe must have failed first, ours or another member's); it
  counts once per accuser on a running suspicion, and when a majority of the
  other live members (ourselves included) have found the port refused, the
  suspect is declared dead at once instead of at the end of its timer.  A
  one-link reset gives one refuser; a process that died gives every survivor.
* Dead: final for this incarnation; ``from_node == node`` means the node left.
* PushPull merge: remote alive -> Alive; remote left -> Left; remote suspect
  *or dead* -> only a suspicion (a remote death is not trusted as a death:
  the suspected node gets a chance to refute, which is what re-merges the two
  halves of a healed partition).
* Healing: dead members are kept (and offered a PushPull, one per reconnect
  interval) until ``reconnect_timeout``; a stranger probing us gets one too.
* Identity: news that puts *our* node id at another address (a PushPull
  state, Alive gossip, a PushPull reply from "ourselves") may mean a copy of
  our data dir runs there; the core checks whether something answers there
  as us (:meth:`SwimNode._check_identity`).  A joining PushPull from
  "ourselves" is answered but not checked: its sender is the newcomer, and it
  is the one that checks and refuses, so the member the cluster knows keeps
  running.
"""

from __future__ import annotations

import abc
import random
from typing import TYPE_CHECKING

from agent.swim.members import Member, MemberTable, push_pull_state
from agent.swim.messages import (
    Ack,
    Alive,
    Dead,
    LoadReport,
    MemberState,
    Piggyback,
    Ping,
    PushPull,
    Suspect,
)
from agent.swim.suspicion import Suspicion
from agent.swim.timing import expected_confirmations, suspicion_bounds

if TYPE_CHECKING:
    from agent.swim.awareness import Awareness
    from agent.swim.broadcast import BroadcastMsg
    from agent.swim.config import SwimConfig
    from agent.swim.identity import IdentityChecks


class MembershipRules(abc.ABC):
    """State-transition rules; the host class provides the attributes and hooks below."""

    config: SwimConfig
    node_id: str
    table: MemberTable
    awareness: Awareness
    stats: dict[str, int]
    _rng: random.Random
    _leaving: bool
    _unreachable_until: dict[str, float]  # addr -> no reconnect attempts before
    _stranger_syncs: dict[str, float]  # addr -> last PushPull offered to a stranger
    _now: float
    identity: IdentityChecks
    _refused: dict[str, int]  # node -> incarnation its port refused our connect at

    @abc.abstractmethod
    def _queue(self, msg: BroadcastMsg) -> None:
        """Queue a broadcast for piggybacking."""

    @abc.abstractmethod
    def _emit(self, kind: str, member: Member) -> None:
        """Report a MemberEvent."""

    @abc.abstractmethod
    def _send(self, to: str, msg: object, reliable: bool) -> None:
        """Queue an outbound message."""

    def _self_alive(self) -> Alive:
        me = self.table.self_member
        return Alive(me.incarnation, self.node_id, me.addr, me.meta)

    def _push_pull_msg(self, join: bool, reply: bool) -> PushPull:
        """Our full state."""
        states = [push_pull_state(self.table.self_member)]
        states.extend(push_pull_state(m) for m in self.table)
        me = self.table.self_member
        return PushPull(self.node_id, me.addr, join, reply, tuple(states))

    def _anti_entropy(self) -> None:
        """Push-pull with one random live member (the periodic full-state sync)."""
        targets = self.table.sample(self._rng, 1, lambda m: m.state == MemberState.ALIVE)
        if targets:
            self._send(targets[0].addr, self._push_pull_msg(join=False, reply=False), True)

    @abc.abstractmethod
    def _push_suspicion_deadline(self, deadline: float, node: str) -> None:
        """Arm the suspicion timer of ``node``."""

    @abc.abstractmethod
    def _note_new_member(self, node: str) -> None:
        """Fit a newly admitted member into the probe order."""


    # ------------------------------------------------------------------ entry points

    def _apply_piggyback(self, now: float, source: str, piggy: Piggyback) -> None:
        if not (piggy.alive or piggy.suspect or piggy.dead or piggy.loads):
            return
        admit = source in self.table  # a member vouches for nodes it gossips about
        for alive in piggy.alive:
            self._on_alive(now, alive, admit=admit)
        for suspect in piggy.suspect:
            self._on_suspect(now, suspect)
        for dead in piggy.dead:
            self._on_dead(now, dead)
        for load in piggy.loads:
            self._apply_load(load, rebroadcast=True)

    def _apply_broadcast(self, now: float, msg: Alive | Suspect | Dead | LoadReport, admit: bool) -> None:
        if isinstance(msg, Alive):
            self._on_alive(now, msg, admit=admit)
        elif isinstance(msg, Suspect):
            self._on_suspect(now, msg)
        elif isinstance(msg, Dead):
            self._on_dead(now, msg)
        else:
            self._apply_load(msg, rebroadcast=True)

    def _on_push_pull(self, now: float, pp: PushPull) -> None:
        if pp.source == self.node_id:
            if pp.source_addr != self.table.self_member.addr:
                if pp.join and not pp.reply:
                    # A newcomer with our node id: let it see who we are (it refuses).
                    self._send(pp.source_addr, self._push_pull_msg(join=False, reply=True), True)
                else:
                    self._check_identity(pp.source_addr)
            return  # otherwise we dialled our own address
        if not pp.reply:
            self._send(pp.source_addr, self._push_pull_msg(join=False, reply=True), True)
        # A fresh joiner learns a whole cluster that already knows itself:
        # re-broadcasting every member would only add load.
        fresh = len(self.table) == 0
        for st in pp.states:
            if st.node == self.node_id and st.addr != self.table.self_member.addr:
                self._check_identity(st.addr)
            if st.state == MemberState.ALIVE:
                alive = Alive(st.incarnation, st.node, st.addr, st.meta)
                self._on_alive(now, alive, admit=True, broadcast=not fresh)
            elif st.state == MemberState.LEFT:
                self._on_dead(now, Dead(st.incarnation, st.node, st.node))
            else:
                self._on_suspect(now, Suspect(st.incarnation, st.node, pp.source))
            if st.load is not None:
                self._apply_load(st.load, rebroadcast=False)

    # ------------------------------------------------------------------ rules

    def _on_alive(self, now: float, a: Alive, admit: bool, broadcast: bool = True) -> None:
        if a.node == self.node_id:
            me = self.table.self_member
            if a.addr != me.addr:
                self._check_identity(a.addr)
            if self._leaving or a.incarnation < me.incarnation:
                return
            if a.incarnation == me.incarnation and a.meta == me.meta and a.addr == me.addr:
                return
            self._refute(a.incarnation)
            return
        m = self.table.get(a.node)
        if m is None:
            if not admit:
                self.stats["ignored"] += 1
                return
            m = Member(a.node, a.addr, a.meta, a.incarnation, MemberState.ALIVE, now)
            self.table.add(m)
            self._note_new_member(a.node)
            if broadcast:
                self._queue(a)
            self._emit("join", m)
            return
        reclaim = False
        if a.addr != m.addr:
            dead_long_enough = (
                m.state in (MemberState.DEAD, MemberState.LEFT)
                and now - m.since >= self.config.dead_node_reclaim_time
            )
            if not dead_long_enough:
                self.stats["ignored"] += 1  # address conflict with a live member
                return
            reclaim = True
        if a.incarnation <= m.incarnation and not reclaim:
            return
        old_state = m.state
        meta_changed = a.meta != m.meta
        m.incarnation = a.incarnation
        m.meta = a.meta
        m.addr = a.addr
        if broadcast:
            self._queue(a)
        if old_state != MemberState.ALIVE:
            m.suspicion = None
            self.table.set_state(m, MemberState.ALIVE, now)
            self._emit("alive" if old_state == MemberState.SUSPECT else "join", m)
        elif meta_changed:
            self._emit("update", m)

    def _on_suspect(self, now: float, s: Suspect) -> None:
        if s.node == self.node_id:
            if not self._leaving and s.incarnation >= self.table.self_member.incarnation:
                self._refute(s.incarnation)
                self._tell_accuser(s.from_node)
            return
        m = self.table.get(s.node)
        if m is None or s.incarnation < m.incarnation:
            return
        if m.state == MemberState.SUSPECT:
            susp = m.suspicion
            if susp is not None and susp.confirm(s.from_node):
                self._push_suspicion_deadline(susp.deadline, m.node)
                self._queue(s)
            elif (s.refused and susp is not None and s.incarnation == susp.incarnation
                  and susp.refuse(s.from_node)):
                self._queue(s)  # a new refuser: others count it too
            self._count_refusal(now, m, s)
            return
        if m.state != MemberState.ALIVE:
            return
        n = len(self.table) - self.table.count(MemberState.LEFT) + 1
        lo, hi = suspicion_bounds(
            self.config.suspicion_mult,
            self.config.suspicion_max_timeout_mult,
            n,
            self.config.probe_interval,
        )
        k = expected_confirmations(self.config.suspicion_mult, n)
        m.incarnation = s.incarnation
        m.suspicion = Suspicion(s.from_node, s.incarnation, k, lo, hi, now)
        self.table.set_state(m, MemberState.SUSPECT, now)
        self._push_suspicion_deadline(m.suspicion.deadline, m.node)
        self._queue(s)
        self._emit("suspect", m)
        self._count_refusal(now, m, s)

    def refused(self, now: float, addr: str) -> None:
        """The runtime's connect to ``addr`` was refused (runtime/leader_loss.py).
        Remembered for this member's incarnation: our own suspicion of it, if a
        probe fails, says so; a suspicion already running is confirmed with it.
        Never a suspicion by itself (see "Refused" above)."""
        m = next((x for x in self.table if x.addr == addr), None)
        if m is None or m.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            return
        if len(self._refused) >= 4096:
            self._refused.clear()
        self._refused[m.node] = m.incarnation
        if m.state == MemberState.SUSPECT:
            self._on_suspect(now, Suspect(m.incarnation, m.node, self.node_id, True))

    def _count_refusal(self, now: float, m: Member, s: Suspect) -> None:
        """``s`` says its accuser's connect to ``m`` was refused: once a majority of
        the other live members (ourselves included) say so, ``m`` is dead now."""
        susp = m.suspicion
        if not s.refused or susp is None or m.state != MemberState.SUSPECT:
            return
        if s.incarnation != susp.incarnation:
            return
        susp.refuse(s.from_node)
        others = 1 + sum(
            1 for o in self.table
            if o.node != m.node and o.state in (MemberState.ALIVE, MemberState.SUSPECT)
        )
        if susp.refusals >= others // 2 + 1:
            self.stats["refused_deaths"] += 1
            self._on_dead(now, Dead(m.incarnation, m.node, self.node_id))

    def _on_dead(self, now: float, d: Dead) -> None:
        if d.node == self.node_id:
            if not self._leaving and d.incarnation >= self.table.self_member.incarnation:
                self._refute(d.incarnation)
            return
        m = self.table.get(d.node)
        if m is None or d.incarnation < m.incarnation:
            return
        if m.state in (MemberState.DEAD, MemberState.LEFT):
            return
        left = d.from_node == d.node
        m.incarnation = d.incarnation
        m.suspicion = None
        self.table.set_state(m, MemberState.LEFT if left else MemberState.DEAD, now)
        self._queue(d)
        self._emit("leave" if left else "dead", m)

    def _refute(self, accused_incarnation: int) -> None:
        """Someone thinks we are suspect, dead, or older: outbid them."""
        me = self.table.self_member
        me.incarnation = max(me.incarnation, accused_incarnation) + 1
        self.stats["refutes"] += 1
        self.awareness.apply_delta(1)
        self._queue(Alive(me.incarnation, self.node_id, me.addr, me.meta))

    def _tell_accuser(self, accuser: str) -> None:
        """Send our refutation straight to the member that suspects us, reliably
        (a stream, which the runtime relays around a broken link), beside the
        gossip: across a bridge, gossip's retransmit budget may be spent on members
        that cannot reach the accuser before the suspicion runs out."""
        m = self.table.get(accuser)
        if m is None or accuser == self.node_id or m.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            return
        me = self.table.self_member
        self.stats["refutes_told"] += 1
        self._send(m.addr, Alive(me.incarnation, self.node_id, me.addr, me.meta), True)

    def _apply_load(self, report: LoadReport | None, rebroadcast: bool) -> None:
        if report is None or report.node == self.node_id:
            return
        m = self.table.get(report.node)
        if m is None:
            return
        cur = m.load
        if cur is None or (report.incarnation, report.seq) > (cur.incarnation, cur.seq):
            m.load = report
            if rebroadcast:
                self._queue(report)

    # ------------------------------------------------------------------ identity

    def _check_identity(self, addr: str) -> None:
        """News puts our node id at ``addr``: ping it as ourselves (UDP and TCP, no
        piggyback) to learn whether a live process there has our node id."""
        if self._leaving or not addr or addr == self.table.self_member.addr:
            return
        seq = self.identity.start(self._now, addr)
        if seq is None:
            return
        me = self.table.self_member.addr
        self._send(addr, Ping(seq, self.node_id, self.node_id, me), reliable=False)
        self._send(addr, Ping(seq, self.node_id, self.node_id, me, via_stream=True), reliable=True)

    def _identity_message(self, msg: Ping | Ack) -> bool:
        """A Ping or Ack with an identity-check sequence; True if it was consumed
        here (an Ack, or our own check reaching us under another address).  A
        check from another process with our node id is answered as usual."""
        if isinstance(msg, Ack):
            self.identity.on_ack(msg.seq, msg.source == self.node_id and not msg.relay)
            return True
        return msg.source == self.node_id and self.identity.on_own_ping(msg.seq, msg.source_addr)

    # ------------------------------------------------------------------ healing

    def _sync_with_stranger(self, now: float, source: str, addr: str) -> None:
        """A node we do not know (or think dead) is probing us: our views differ.
        Offer a PushPull (the only admission path), at most once per address per
        reconnect interval."""
        member = self.table.get(source)
        if source == self.node_id or not addr or (member and member.state != MemberState.DEAD):
            return
        last = self._stranger_syncs.get(addr)
        if last is not None and now - last < self.config.reconnect_interval:
            return
        if len(self._stranger_syncs) >= 4096:
            self._stranger_syncs.pop(next(iter(self._stranger_syncs)))
        self._stranger_syncs[addr] = now
        self._send(addr, self._push_pull_msg(join=True, reply=False), reliable=True)

    def _reconnect(self, now: float) -> None:
        """Serf's reconnect: offer a PushPull to one random dead member (skipping
        addresses the runtime recently failed to reach)."""

        def backed_off(m: Member) -> bool:
            return self._unreachable_until.get(m.addr, 0.0) > now

        candidates = self.table.sample(
            self._rng, 1, lambda m: m.state == MemberState.DEAD and not backed_off(m)
        )
        if candidates:
            self._send(candidates[0].addr, self._push_pull_msg(join=True, reply=False), True)

    def _reap(self, now: float) -> None:
        """Forget members dead for ``reconnect_timeout`` or left for ``tombstone_timeout``."""
        cfg = self.config
        doomed = [
            m.node
            for m in self.table
            if (m.state == MemberState.DEAD and now - m.since >= cfg.reconnect_timeout)
            or (m.state == MemberState.LEFT and now - m.since >= cfg.tombstone_timeout)
        ]
        for node in doomed:
            self.table.remove(node)
        self._unreachable_until = {a: t for a, t in self._unreachable_until.items() if t > now}
