"""SwimNode: the sans-IO SWIM + Lifeguard membership core.

Theory of operation
-------------------
The runtime feeds the core time (``tick(now)``), decoded peer messages
(``step(now, from_addr, msg)``) and local facts (load, health), and collects
what to send and what to report from ``ready()``, acknowledging with
``advance()``.  Nothing here touches a socket or a clock.

Failure detection (SWIM, Das et al. 2002, with Lifeguard, Dadgar et al. 2018,
as hashicorp/memberlist implements them).  Every probe interval (stretched by
the local health multiplier) the node pings the next member of a shuffled
round-robin order.  If no Ack arrives within the probe timeout it asks
``indirect_checks`` random members to ping the target for it (they answer with
a relayed Ack, or a Nack when they cannot reach it either) and sends a reliable
TCP Ping as a fallback.  Without any Ack by the end of the interval the target
is suspected: no path among k + 2 reached it, the quorum confirmation of a
failure.  Missing Nacks count against our *own* health (Lifeguard), as do
refutations and, when load-aware health is on, a saturated CPU or a lagging
event loop: a sick node probes more slowly and waits longer.

Suspicion carries an incarnation number.  A suspected node that hears of it
refutes by bumping its incarnation and broadcasting Alive, which overrides
any suspicion or death at a lower incarnation.  Otherwise the suspicion
expires into Dead after a timeout that starts at its ceiling and shrinks
logarithmically as independent members confirm it (Lifeguard).

Dissemination: every state change is queued as a broadcast
(:mod:`agent.swim.broadcast`) and piggybacked on Pings, Acks and dedicated
Gossip datagrams to ``gossip_nodes`` random members per gossip interval, each
broadcast sent ``retransmit_mult * ceil(log10(n + 1))`` times.  Datagrams are
filled up to ``max_datagram_payload`` by a conservative size estimate.

Admission and healing.  A node becomes a member only through PushPull (full
state exchange over authenticated TCP): ``join`` sends ours to candidate
addresses; every PushPull that is not a reply is answered, and both sides
merge.  Anti-entropy PushPull with a random live member runs every push-pull
interval.  To heal partitions without an operator, dead members are kept for
``reconnect_timeout`` and every reconnect interval one of them gets a
PushPull (Serf's reconnect): a remote "dead" is merged as a suspicion, so the
nodes on either side refute with higher incarnations, and the next exchange
across carries those incarnations, which win over the stale deaths.  A probe
from a node we do not know (or think dead) also gets a PushPull offer (rate
limited per address), so diverged views converge at the first contact.

Partition: see :mod:`agent.swim.partition`.  Load: each node's psutil sample
rides on its Pings and Acks and, when it changes, as a broadcast; push-sum
(:mod:`agent.swim.pushsum`) aggregates the cluster's average CPU.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Sequence

from agent.swim.awareness import Awareness
from agent.swim.broadcast import BroadcastMsg, BroadcastQueue
from agent.swim.config import SwimConfig
from agent.swim.identity import IDENTITY_SEQ, IdentityChecks
from agent.swim.members import Member, MemberTable, MemberView, view_of
from agent.swim.messages import (
    EMPTY_PIGGYBACK,
    Ack,
    Alive,
    Dead,
    Gossip,
    IndirectPingReq,
    LoadReport,
    MemberState,
    Nack,
    NodeLoad,
    NodeMeta,
    Ping,
    PushPull,
    PushSum,
    Suspect,
)
from agent.swim.partition import PartitionDetector
from agent.swim.probe import HelperScore, PendingProbe, ProbeHints, ProbeObserver, RelayTable
from agent.swim.probing import LIVE_STATES, ProbeRules
from agent.swim.pushsum import PushSumAggregator
from agent.swim.ready import MemberEvent, Outbound, SwimReady
from agent.swim.sizing import TUPLE_GROWTH_BYTES, message_size
from agent.swim.timing import (
    push_pull_scale,
    retransmit_limit,
)


class SwimNode(ProbeRules):
    """One node's membership protocol state machine (see the module docstring)."""

    def __init__(
        self, config: SwimConfig, node_id: str, meta: NodeMeta, rng: random.Random, now: float
    ) -> None:
        config.validate()
        self.config = config
        self.node_id = node_id
        self._rng = rng
        self._now = now
        me = Member(node_id, meta.addr, meta, 0, MemberState.ALIVE, now)
        self.table = MemberTable(me)
        self.broadcasts = BroadcastQueue(config.max_queued_broadcasts)
        self.load_broadcasts = BroadcastQueue(min(config.max_queued_broadcasts, 1024))
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.pushsum = PushSumAggregator(config.pushsum_epoch, now)
        self._partition = PartitionDetector(config.partition_window)
        self._outbound: list[Outbound] = []
        self._events: list[MemberEvent] = []
        self._suspicion_heap: list[tuple[float, str]] = []
        self._leaving = False
        self._seq = 0
        self._probe: PendingProbe | None = None
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._relays = RelayTable(capacity=1024)
        self._hints = ProbeHints()
        self._self_load: LoadReport | None = None
        self._load_seq = 0
        self._last_load_broadcast: tuple[float, NodeLoad] | None = None
        self._unreachable_until: dict[str, float] = {}
        self._stranger_syncs: dict[str, float] = {}  # addr -> last PushPull offered
        self.identity = IdentityChecks(config.probe_interval, rng)  # see agent.swim.identity
        # Spread periodic work over the interval so nodes started together do not
        # act in lockstep.
        self._next_probe_at = now + rng.random() * config.probe_interval
        self._next_gossip_at = now + rng.random() * config.gossip_interval
        self._next_push_pull_at = now + config.push_pull_interval * (0.5 + rng.random())
        self._next_reconnect_at = now + config.reconnect_interval * (0.5 + rng.random())
        self._next_pushsum_at = now + rng.random() * max(config.pushsum_interval, 1e-3)
        counters = ("msgs_in", "msgs_out", "probes", "probe_failures", "refutes", "refutes_told", "ignored",
                    "refused_deaths")
        self._refused: dict[str, int] = {}  # node -> incarnation its port refused us at
        self.stats: dict[str, int] = dict.fromkeys(counters, 0)
        self.helper_score: HelperScore | None = None  # ranks indirect-probe helpers
        self.probe_observer: ProbeObserver | None = None  # hears each probe's Ack path

    # ------------------------------------------------------------------ API

    @property
    def incarnation(self) -> int:
        return self.table.self_member.incarnation

    @property
    def health_score(self) -> int:
        """Lifeguard local health: 0 healthy; timeouts are scaled by ``score + 1``."""
        return self.awareness.score

    @property
    def partitioned(self) -> bool:
        return self._partition.partitioned

    @property
    def reach(self) -> float | None:
        """Fraction of our recent probes answered by any path (a metric)."""
        return self._partition.reach()

    @property
    def cluster_avg_cpu(self) -> float | None:
        """Push-sum estimate of the average CPU (0..1) over the cluster."""
        return self.pushsum.published

    @property
    def leave_complete(self) -> bool:
        """After :meth:`leave`: our departure has been gossiped at least its retransmit
        limit (or nobody is left to tell); the runtime may stop."""
        if not self._leaving:
            return False
        live = self.table.count(MemberState.ALIVE) + self.table.count(MemberState.SUSPECT)
        return live == 0 or self.broadcasts.pending_about(("m", self.node_id)) is None

    def join(self, now: float, addrs: Sequence[str]) -> None:
        """Send our full state (PushPull, join=True) reliably to each candidate address.
        Admission happens when an answer (or their own join) arrives."""
        self._now = max(self._now, now)
        own = self.table.self_member.addr
        for addr in dict.fromkeys(addrs):
            if addr and addr != own:
                self._send(addr, self._push_pull_msg(join=True, reply=False), reliable=True)

    def tick(self, now: float) -> None:
        """Run whatever timers are due at ``now``."""
        self._now = now = max(self._now, now)
        if not self._leaving:
            self._tick_probe(now)
            self._expire_suspicions(now)
            for relay in self._relays.expired(now):
                self._send(relay.source_addr, Nack(relay.orig_seq, self.node_id), reliable=False)
            if now >= self._next_push_pull_at:
                self._next_push_pull_at = now + push_pull_scale(
                    self.config.push_pull_interval, len(self.table) + 1
                )
                self._anti_entropy()
            if now >= self._next_reconnect_at:
                self._next_reconnect_at = now + self.config.reconnect_interval
                self._reap(now)
                self._reconnect(now)
            if self.config.pushsum_interval > 0:
                self.pushsum.advance(now)
                if now >= self._next_pushsum_at:
                    self._next_pushsum_at = now + self.config.pushsum_interval
                    self._pushsum_round()
        if now >= self._next_gossip_at:
            has_news = bool(len(self.broadcasts) or len(self.load_broadcasts))
            self._next_gossip_at = self._gossip_slot_after(now)
            if has_news:
                self._gossip_round(now)
        self._partition.update_state(self.table, self._emit_partition_event)

    def next_deadline(self) -> float:
        """The earliest time at which :meth:`tick` has something to do (a simulator or
        a runtime may sleep until then; a new message may bring it forward)."""
        soonest = self._next_gossip_at
        if soonest < self._now:
            soonest = self._gossip_slot_after(self._now)
        if not len(self.broadcasts) and not len(self.load_broadcasts):
            soonest += 3600.0  # nothing to gossip: a queued broadcast brings it back
        if self._leaving:
            return soonest
        probe = self._probe
        if probe is None:
            soonest = min(soonest, self._now if self._hints else self._next_probe_at)
        else:
            soonest = min(soonest, probe.end_at if probe.indirect_sent else probe.timeout_at)
        soonest = min(soonest, self._next_push_pull_at, self._next_reconnect_at)
        if self._suspicion_heap:
            soonest = min(soonest, self._suspicion_heap[0][0])
        relay_deadline = self._relays.next_deadline()
        if relay_deadline is not None:
            soonest = min(soonest, relay_deadline)
        if self.config.pushsum_interval > 0:
            soonest = min(soonest, self._next_pushsum_at, self.pushsum.next_deadline)
        return soonest

    def step(self, now: float, from_addr: str, msg: object) -> None:
        """Handle one decoded peer message.  ``from_addr`` is informational only (a TCP
        peer's source port is ephemeral): replies go to the address in the message."""
        self._now = now = max(self._now, now)
        self.stats["msgs_in"] += 1
        if isinstance(msg, Ping | Ack) and msg.seq >= IDENTITY_SEQ and self._identity_message(msg):
            return
        if isinstance(msg, Ping):
            self._apply_piggyback(now, msg.source, msg.gossip)
            self._on_ping(now, msg)
        elif isinstance(msg, Ack):
            self._apply_piggyback(now, msg.relay or msg.source, msg.gossip)
            self._on_ack(now, msg)
        elif isinstance(msg, Gossip):
            self._apply_piggyback(now, msg.source, msg.gossip)
        elif isinstance(msg, IndirectPingReq):
            self._apply_piggyback(now, msg.source, msg.gossip)
            self._on_indirect(now, msg)
        elif isinstance(msg, Nack):
            self._apply_piggyback(now, msg.source, msg.gossip)
            probe = self._probe
            if probe is not None and probe.seq == msg.seq and msg.source not in probe.nackers:
                probe.nackers.append(msg.source)
                if probe.indirect_sent and probe.nacks >= probe.expected_nacks:
                    # Every helper failed to reach it too, each after most of a probe
                    # timeout: waiting out the interval would only delay the suspicion.
                    self._probe = None
                    self._probe_failed(now, probe)
        elif isinstance(msg, PushPull):
            self._on_push_pull(now, msg)
        elif isinstance(msg, PushSum):
            if msg.source != self.node_id and msg.source in self.table:
                self.pushsum.receive(now, msg.epoch, msg.total, msg.weight)
        elif isinstance(msg, Alive | Suspect | Dead | LoadReport):
            # A bare broadcast (not piggybacked): treat like a one-item gossip.
            self._apply_broadcast(now, msg, admit=False)
        else:
            self.stats["ignored"] += 1
        self._partition.update_state(self.table, self._emit_partition_event)

    def ready(self) -> SwimReady | None:
        if not self._outbound and not self._events:
            return None
        return SwimReady(list(self._outbound), list(self._events))

    def advance(self, ready: SwimReady) -> None:
        """The runtime has sent and published everything in ``ready``."""
        del self._outbound[: len(ready.outbound)]
        del self._events[: len(ready.events)]

    def leave(self, now: float) -> None:
        """Announce a graceful departure (Dead about ourselves) and stop probing; keep
        gossiping until :attr:`leave_complete`."""
        self._now = max(self._now, now)
        if self._leaving:
            return
        me = self.table.self_member
        self._leaving = True
        self._probe = None
        me.state = MemberState.LEFT
        me.since = self._now
        self._queue(Dead(me.incarnation, self.node_id, self.node_id))
        self._emit("leave", me)

    def update_meta(self, meta: NodeMeta) -> None:
        """New metadata (role, caps, ...): bump our incarnation and broadcast Alive."""
        me = self.table.self_member
        me.meta = meta
        me.addr = meta.addr
        me.incarnation += 1
        self._queue(self._self_alive())
        self._emit("update", me)

    def update_load(self, now: float, load: NodeLoad) -> None:
        """A fresh psutil sample (about once a second)."""
        self._now = now = max(self._now, now)
        self._load_seq += 1
        report = LoadReport(self.node_id, self.incarnation, self._load_seq, load)
        self._self_load = report
        self.table.self_member.load = report
        self.pushsum.set_value(load.cpu)
        last = self._last_load_broadcast
        interval = self.config.load_broadcast_interval
        due = last is None or now - last[0] >= interval
        if not due and last is not None and now - last[0] >= interval / 5.0:
            prev = last[1]
            due = (
                abs(load.cpu - prev.cpu) >= 0.1
                or abs(load.mem_percent - prev.mem_percent) >= 5.0
                or (load.queued, load.running) != (prev.queued, prev.running)
            )
        if due:
            self._last_load_broadcast = (now, load)
            self._queue(report)

    def note_local_health(self, cpu_saturation: float, loop_lag: float) -> None:
        """Load-aware Lifeguard: the host's CPU saturation (0..1) and the runtime's
        event-loop lag (seconds), sampled about once a second."""
        if not self.config.load_aware_health:
            self.awareness.clear_load()
            return
        self.awareness.note_load(
            lagging=loop_lag > self.config.probe_timeout / 2.0,
            saturated=cpu_saturation > self.config.busy_cpu_saturation,
        )

    def unreachable(self, now: float, addr: str) -> None:
        """The runtime could not deliver a reliable message to ``addr``: back off
        reconnect attempts there (the probe outcome itself is decided by Acks)."""
        self._now = max(self._now, now)
        if len(self._unreachable_until) >= 4096:
            oldest = min(self._unreachable_until, key=self._unreachable_until.__getitem__)
            del self._unreachable_until[oldest]
        self._unreachable_until[addr] = self._now + 2.0 * self.config.reconnect_interval

    def connection_lost(self, now: float, addr: str) -> None:
        """The runtime's stream connection to or from ``addr`` broke: probe that
        member now rather than at its turn (see :class:`ProbeHints`)."""
        self._now = max(self._now, now)
        member = next((m for m in self.table if m.addr == addr), None)
        if member is None or member.state != MemberState.ALIVE:
            return
        if self._probe is not None and self._probe.target == member.node:
            return
        self._hints.add(member.node, self._now, self.config.probe_interval)

    def members(self) -> list[MemberView]:
        """Every known member, ourselves first."""
        views = [view_of(self.table.self_member)]
        views.extend(view_of(m) for m in self.table)
        return views

    def member(self, node: str) -> MemberView | None:
        m = self.table.self_member if node == self.node_id else self.table.get(node)
        return view_of(m) if m is not None else None

    # ------------------------------------------------------------------ gossip

    def _gossip_slot_after(self, now: float) -> float:
        """The first gossip slot strictly after ``now`` on this node's round grid."""
        interval = self.config.gossip_interval
        behind = now - self._next_gossip_at
        return self._next_gossip_at + (math.floor(behind / interval) + 1) * interval

    def _gossip_round(self, now: float) -> None:
        if not len(self.broadcasts) and not len(self.load_broadcasts):
            return
        dead_horizon = now - self.config.gossip_to_the_dead_time

        def target_ok(m: Member) -> bool:
            return m.state in LIVE_STATES or (m.state == MemberState.DEAD and m.since >= dead_horizon)

        for target in self.table.sample(self._rng, self.config.gossip_nodes, target_ok):
            before = len(self._outbound)
            self._send_udp(target.addr, Gossip(self.node_id, EMPTY_PIGGYBACK))
            if len(self._outbound) == before:
                break  # nothing left to piggyback

    def _pushsum_round(self) -> None:
        targets = self.table.sample(self._rng, 1, lambda m: m.state == MemberState.ALIVE)
        if not targets:
            return
        share = self.pushsum.share()
        if share is not None:
            epoch, total, weight = share
            self._send(targets[0].addr, PushSum(self.node_id, epoch, total, weight), False)

    # ------------------------------------------------------------------ output

    def _send(self, to: str, msg: object, reliable: bool) -> None:
        self.stats["msgs_out"] += 1
        self._outbound.append(Outbound(to, msg, reliable))

    def _send_udp(
        self, to: str, msg: Ping | Ack | IndirectPingReq | Nack | Gossip, accused: Suspect | None = None
    ) -> None:
        """Send a datagram, filling its piggyback from the broadcast queues up to the
        payload bound (``accused`` first, if given).  A Gossip with nothing to carry
        is not sent."""
        # Each of the Piggyback's four tuples may outgrow its one-byte header.
        overhead = message_size(msg) + 4 * TUPLE_GROWTH_BYTES
        extra = message_size(accused) if accused is not None else 0
        budget = self.config.max_datagram_payload - overhead - extra
        n = len(self.table) + 1
        limit = retransmit_limit(self.config.retransmit_mult, n)
        chosen = self.broadcasts.select(budget, limit)
        loads = self.load_broadcasts.select(budget - chosen.size, limit)
        if accused is not None and not _mentions(chosen.alive, chosen.suspect, chosen.dead, accused.node):
            chosen.suspect.append(accused)
        if len(chosen) or len(loads):
            chosen.loads.extend(loads.loads)
            msg = dataclasses.replace(msg, gossip=chosen.piggyback())
        elif isinstance(msg, Gossip):
            return
        self._send(to, msg, reliable=False)

    def _queue(self, msg: BroadcastMsg) -> None:
        idle = not len(self.broadcasts) and not len(self.load_broadcasts)
        if idle and self._next_gossip_at <= self._now:
            # Rounds were skipped while idle; news waits for the next slot of the
            # round grid, as with memberlist's gossip ticker.
            self._next_gossip_at = self._gossip_slot_after(self._now)
        if isinstance(msg, LoadReport):
            self.load_broadcasts.queue(msg)
        else:
            self.broadcasts.queue(msg)

    def _emit(self, kind: str, member: Member) -> None:
        self._events.append(MemberEvent(kind, view_of(member), self._now))

    def _emit_partition_event(self, kind: str) -> None:
        self._emit(kind, self.table.self_member)

    def _push_suspicion_deadline(self, deadline: float, node: str) -> None:
        heapq.heappush(self._suspicion_heap, (deadline, node))

    def _expire_suspicions(self, now: float) -> None:
        heap = self._suspicion_heap
        while heap and heap[0][0] <= now:
            _deadline, node = heapq.heappop(heap)
            member = self.table.get(node)
            if member is None or member.state != MemberState.SUSPECT or member.suspicion is None:
                continue
            if member.suspicion.deadline > now:
                continue  # a stale entry; the live deadline has its own entry
            self._on_dead(now, Dead(member.incarnation, node, self.node_id))
            # Gossip our verdict in this tick, not at the next slot of the grid.
            self._next_gossip_at = min(self._next_gossip_at, now)


def _mentions(
    alive: Sequence[Alive], suspect: Sequence[Suspect], dead: Sequence[Dead], node: str
) -> bool:
    """Whether a piggyback already carries an item about ``node`` (one per node)."""
    return any(m.node == node for group in (alive, suspect, dead) for m in group)
