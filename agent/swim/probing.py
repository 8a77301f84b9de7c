"""The probing rules: SWIM's failure detector, as a layer of :class:`SwimNode`.

Rules
-----
=====================  ==========================================================
event                  what the node does
=====================  ==========================================================
probe interval         ping the next member of a shuffled round-robin order (a
                       member we suspect gets our suspicion on the ping, outside
                       gossip's retransmit budget)
probe timeout          ask ``indirect_checks`` helpers (ranked by ``helper_score``
                       when the runtime gives one) and send a TCP fallback Ping
Ack (ours)             probe done: health improves, RTT and the path observed
Ack (relayed for us)   forward it to whoever asked (``RelayTable``)
all helpers Nack       fail the probe now instead of at the interval's end
interval ends, no Ack  suspect the target (each Nacker confirms it), and tell the
                       accused over a stream too (the runtime relays streams)
Ping                   Ack it the way it came (datagram or stream)
IndirectPingReq        ping the target for the requester; Nack at 80% of the
                       probe timeout if it stays silent
=====================  ==========================================================

Lifeguard's local health scales the interval and the timeout; missing Nacks
count against our own health.  Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import abc

from agent.swim.members import Member
from agent.swim.messages import Ack, IndirectPingReq, LoadReport, MemberState, Nack, Ping, Suspect
from agent.swim.partition import PartitionDetector
from agent.swim.probe import HelperScore, PendingProbe, ProbeHints, ProbeObserver, RelayTable, pick_helpers
from agent.swim.rules import MembershipRules
from agent.swim.timing import ewma, scaled_probe_interval, scaled_timeout

LIVE_STATES = (MemberState.ALIVE, MemberState.SUSPECT)
"""The states of a member we still probe and gossip to."""


class ProbeRules(MembershipRules):
    """Probe scheduling and outcomes; :class:`agent.swim.core.SwimNode` provides the
    state below and the datagram output."""

    _probe: PendingProbe | None
    _probe_order: list[str]
    _probe_index: int
    _hints: ProbeHints
    _seq: int
    _relays: RelayTable
    _partition: PartitionDetector
    _self_load: LoadReport | None
    _next_probe_at: float
    helper_score: HelperScore | None
    probe_observer: ProbeObserver | None

    @property
    @abc.abstractmethod
    def health_score(self) -> int:
        """Lifeguard's local health (0 = healthy)."""

    @abc.abstractmethod
    def _send_udp(
        self, to: str, msg: Ping | Ack | IndirectPingReq | Nack, accused: Suspect | None = None
    ) -> None:
        """Send a datagram with as much piggybacked news as fits."""

    def _tick_probe(self, now: float) -> None:
        probe = self._probe
        if probe is not None and not probe.indirect_sent and now >= probe.timeout_at:
            self._probe_indirect(probe)
        if probe is not None and now >= probe.end_at:
            self._probe = None
            self._probe_failed(now, probe)
        while self._probe is None and self._hints:
            # Out of turn; the round-robin schedule keeps its own time.
            hinted = self.table.get(self._hints.pop() or "")
            if hinted is not None and hinted.state == MemberState.ALIVE:
                self._start_probe(now, hinted)
        if self._probe is None and now >= self._next_probe_at:
            self._next_probe_at = now + scaled_probe_interval(self.config.probe_interval, self.health_score)
            self._start_probe(now)

    def _next_probe_target(self) -> Member | None:
        for _attempt in range(2):
            while self._probe_index < len(self._probe_order):
                node = self._probe_order[self._probe_index]
                self._probe_index += 1
                member = self.table.get(node)
                if member is not None and member.state in LIVE_STATES:
                    return member
            self._probe_order = self.table.ids()
            self._rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    def _note_new_member(self, node: str) -> None:
        """Put a new member at a random place in the rest of this probe round."""
        order = self._probe_order
        if self._probe_index >= len(order):
            return  # the next probe reshuffles all members anyway
        order.append(node)
        pos = self._rng.randrange(self._probe_index, len(order))
        order[pos], order[-1] = order[-1], order[pos]

    def _start_probe(self, now: float, target: Member | None = None) -> None:
        if target is None:
            target = self._next_probe_target()
        if target is None:
            return
        self._seq += 1
        health = self.health_score
        self._probe = PendingProbe(
            seq=self._seq,
            target=target.node,
            addr=target.addr,
            started=now,
            timeout_at=now + scaled_timeout(self.config.probe_timeout, health),
            end_at=now + scaled_probe_interval(self.config.probe_interval, health),
        )
        self.stats["probes"] += 1
        ping = Ping(self._seq, target.node, self.node_id, self.table.self_member.addr, load=self._self_load)
        accused = None
        if target.state == MemberState.SUSPECT:
            # Tell the accused: our suspicion rides on our probe of it outside the
            # retransmit budget, which gossip may have spent on members that cannot
            # reach it (a bridge); hearing it is what lets a live node refute.
            accused = Suspect(target.incarnation, target.node, self.node_id)
        self._send_udp(target.addr, ping, accused)

    def _probe_indirect(self, probe: PendingProbe) -> None:
        probe.indirect_sent = True
        me = self.table.self_member
        helpers = pick_helpers(self.table, self._rng, self.config.indirect_checks, probe.target,
                               self.helper_score)
        probe.expected_nacks = len(helpers)
        for helper in helpers:
            req = IndirectPingReq(probe.seq, probe.target, probe.addr, self.node_id, me.addr)
            self._send_udp(helper.addr, req)
        if self.config.tcp_fallback_probe:
            ping = Ping(probe.seq, probe.target, self.node_id, me.addr, via_stream=True)
            self._send(probe.addr, ping, reliable=True)

    def _probe_failed(self, now: float, probe: PendingProbe) -> None:
        self.stats["probe_failures"] += 1
        # Lifeguard: helpers that did not even Nack suggest the problem is ours.
        if probe.expected_nacks > 0:
            self.awareness.apply_delta(max(0, probe.expected_nacks - probe.nacks))
        else:
            self.awareness.apply_delta(1)
        target = self.table.get(probe.target)
        if target is None or target.state not in LIVE_STATES:
            return
        self._partition.record_probe(False)
        refused = self._refused.get(target.node) == target.incarnation
        accusation = Suspect(target.incarnation, target.node, self.node_id, refused)
        self._on_suspect(now, accusation)
        if target.state == MemberState.SUSPECT:
            # Tell the accused over a stream too (the runtime relays it around a
            # broken link): a live node that hears it refutes at once, and tells us.
            self._send(target.addr, accusation, reliable=True)
        # Each helper that Nacked failed to reach the target on its own: that is an
        # independent confirmation (the k indirect probes are the quorum), so the
        # suspicion starts as short as Lifeguard allows for that evidence.
        susp = target.suspicion
        if susp is not None:
            confirmed = [helper for helper in probe.nackers if susp.confirm(helper)]
            if confirmed:
                self._push_suspicion_deadline(susp.deadline, target.node)

    def _on_ack(self, now: float, ack: Ack) -> None:
        relay = self._relays.pop(ack.seq)
        if relay is not None:
            fwd = Ack(relay.orig_seq, ack.source, relay=self.node_id)
            self._send(relay.source_addr, fwd, reliable=False)
            self._apply_load(ack.load, rebroadcast=False)
            return
        probe = self._probe
        if probe is None or probe.seq != ack.seq or ack.source != probe.target:
            return
        self._probe = None
        self.awareness.apply_delta(-1)
        self._partition.record_probe(True)
        self._apply_load(ack.load, rebroadcast=False)
        target = self.table.get(probe.target)
        direct = not ack.relay and not probe.indirect_sent
        if target is not None and direct:
            target.rtt = ewma(target.rtt, now - probe.started, self.config.rtt_smoothing)
        if self.probe_observer is not None and (direct or ack.relay):
            self.probe_observer(probe.target, ack.relay, now - probe.started if direct else None)

    def _on_ping(self, now: float, ping: Ping) -> None:
        if ping.target and ping.target != self.node_id:
            self.stats["ignored"] += 1  # meant for whoever had this address before us
            return
        self._apply_load(ping.load, rebroadcast=False)
        self._sync_with_stranger(now, ping.source, ping.source_addr)
        ack = Ack(ping.seq, self.node_id, load=self._self_load)
        if ping.via_stream:
            self._send(ping.source_addr, ack, reliable=True)
        else:
            self._send_udp(ping.source_addr, ack)

    def _on_indirect(self, now: float, req: IndirectPingReq) -> None:
        self._sync_with_stranger(now, req.source, req.source_addr)
        self._seq += 1
        # Lifeguard: Nack at 80% of the probe timeout, so that the Nack reaches the
        # requester before its probe interval ends (it sent us the request one probe
        # timeout into that interval).
        deadline = now + 0.8 * scaled_timeout(self.config.probe_timeout, self.health_score)
        if not self._relays.add(self._seq, req.seq, req.source_addr, req.want_nack, deadline):
            return  # too many relays in flight: let the requester count a missing Nack
        self._send_udp(
            req.target_addr, Ping(self._seq, req.target, self.node_id, self.table.self_member.addr)
        )
