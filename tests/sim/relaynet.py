"""A deterministic cluster under partial partitions: Raft cores, SWIM cores and the
real link-state and relay-selection code (``agent.links.state.LinkTable``) on one
virtual clock.

Time is RaftNet's step (0.1 s, ``SIM_CONFIG.tick_interval``).  Every message
between nodes -- Raft's, forwarded client writes and their results, link
probes and summaries -- goes through this network, which drops what crosses a
*directed* link in ``down`` (a cut link is both directions, a simplex link one).
A reliable message (Raft, forwarded writes) is routed as ``PeerRouter`` routes
it: ``LinkTable.route`` of its sender says direct, or a relay; a relayed message
crosses two links (sender→relay, relay→destination), the relay passes it on only
if *its* table says its direct path onward works, and otherwise answers with a
nack that makes the sender pick another relay (``LinkTable.relay_failed``).
Link probes (``due_probes``/``on_pong``) and summaries travel one link, never
relayed, as the runtime sends them as datagrams.

As the runtime does (``RelayService``), what a node sent directly to a peer in
the last ``resend_window`` seconds is sent again over the relay when it finds
that peer's path broken; forwarded writes carry their client's request id and
the state machine applies each once (``DedupKV``, as the agent dedups by rid).

SWIM runs beside it (``tests/sim/swimnet.py``) on the same directed links, with
each node's indirect-probe helpers ranked by its LinkTable's ``relay_score`` (as
the agent wires it), so the "no alive node declared dead" check sees the real
ranking.  A failing seed replays exactly (``MESH_SEED``).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.links.config import LinkConfig
from agent.links.state import LinkTable
from agent.raft.messages import Entry, EntryKind, RaftMessage, Role
from agent.swim.config import SwimConfig
from agent.swim.messages import MemberState
from sim.raftnet import KV, SIM_CONFIG, MemoryStorage, RaftNet
from sim.swimnet import _DELIVER, SimHost, SwimNet

SIM_LINKS = dataclasses.replace(LinkConfig.lan(), probe_interval=0.5, probe_timeout=0.45,
                                idle_probe_interval=1.0)
"""LAN link timings, but probes every 0.5 s with a 0.45 s timeout: the sim's one-way
hops take 0.1-0.2 s (a step or two), far slower than a LAN's."""
TICK = SIM_CONFIG.tick_interval
RESEND_STEPS = round(SIM_LINKS.resend_window / TICK)


class DedupKV(KV):
    """The test state machine applying each (client, op) once: a forwarded write sent
    again over a relay is a duplicate, as the agent's request ids make it one."""

    def __init__(self) -> None:
        super().__init__()
        self.results: dict[str, Any] = {}

    def apply(self, entry: Entry) -> Any:
        if entry.kind != EntryKind.NORMAL:
            return super().apply(entry)
        client, op, *_rest = json.loads(entry.data)
        rid = f"{client}:{op}"
        if rid in self.results:
            self.applied = entry.index
            return self.results[rid]
        result = self.results[rid] = super().apply(entry)
        return result

    def snapshot(self) -> bytes:
        return json.dumps([self.applied, self.data, self.results]).encode()

    def restore(self, data: bytes) -> None:
        self.applied, self.data, self.results = json.loads(data)


class RelaySwimNet(SwimNet):
    """SwimNet whose reliable messages (push-pull, the fallback TCP ping and its Ack)
    also arrive over a relay while their direct path is broken, as ``PeerRouter``
    sends every reliable message; datagrams never do."""

    relayable: Callable[[str, str], bool] = staticmethod(lambda _a, _b: False)
    resend_window: float = SIM_LINKS.resend_window
    """As ``RelayService`` does, a reliable message that found its direct path cut is
    sent again over the relay once the path is found broken, if it was sent in the
    last ``resend_window`` seconds: here, retried each step for that long."""

    def _reachable(self, src: str, dst: str, reliable: bool) -> bool:
        return self.connected(src, dst) or (reliable and self.relayable(src, dst))

    def _redeliver(self, when: float, dst: str, payload: tuple[Any, ...]) -> bool:
        """Deliver ``payload`` again a step later while it is within the resend
        window of its first try (carried as a fourth item); False once it is over."""
        src, msg, reliable, *first = payload
        started = first[0] if first else when
        if when - started >= self.resend_window:
            return False
        self._push(when + TICK, _DELIVER, dst, (src, msg, reliable, started))
        return True


class LinkNet(RaftNet):
    """``n`` voters ``n1``..``nN`` with directed link faults and relays (see module doc)."""

    def __init__(self, seed: int, n: int, links: LinkConfig = SIM_LINKS) -> None:
        ids = [f"n{i}" for i in range(1, n + 1)]
        super().__init__(seed, ids)
        self.down: set[tuple[str, str]] = set()
        self.tables = {i: LinkTable(links, i) for i in ids}
        for table in self.tables.values():
            table.set_members(set(ids), 0.0)
        self._events: list[tuple[int, int, str, str, str, Any]] = []
        self._eseq = 0
        self.relayed = 0
        self.relay_nacks = 0
        self.direct_while_broken = 0
        self.on_forward: Callable[[str, str, Any], None] | None = None  # at the leader
        self.on_forward_result: Callable[[str, Any], None] | None = None  # back at the origin
        self._last_summary = 0
        self._sent_summary: dict[str, int] = {}  # node -> step of its last summary
        self.leader_changes: list[tuple[int, str]] = []
        self.resent = 0
        self._recent: dict[tuple[str, str], deque[tuple[int, str, Any]]] = {}
        self._broken: dict[str, set[str]] = {i: set() for i in ids}
        self._leader = ""
        # SWIM beside it, same links.
        self.swim = RelaySwimNet(seed, SwimConfig.lan())
        hosts = self.swim.add_nodes(n)
        self.swim.bootstrap(hosts)
        self.host = dict(zip(ids, hosts, strict=True))
        self._raft_of = {h.node.node_id: i for i, h in self.host.items()}
        self._addr_to_id = {h.addr: i for i, h in self.host.items()}
        for i, h in self.host.items():
            table = self.tables[i]
            h.node.helper_score = self._helper_score(table)
        self.swim.connected = self._swim_connected  # type: ignore[method-assign]
        self.swim.relayable = self._swim_relayable  # type: ignore[method-assign]

    def _start(self, node_id: str, storage: MemoryStorage) -> None:
        super()._start(node_id, storage)
        node = self.nodes[node_id]
        kv = DedupKV()
        restored = storage.restored()
        if restored.snapshot is not None:
            kv.restore(restored.snapshot.data)
        node.kv = kv

    # ------------------------------------------------------------ links

    def cut_link(self, a: str, b: str) -> None:
        self.down |= {(a, b), (b, a)}

    def drop_direction(self, a: str, b: str) -> None:
        self.down.add((a, b))

    def heal(self) -> None:
        super().heal()
        self.down = set()

    def connected(self, a: str, b: str) -> bool:
        return (a, b) not in self.down and super().connected(a, b)

    def _swim_connected(self, a: str, b: str) -> bool:
        ia, ib = self._addr_to_id.get(a), self._addr_to_id.get(b)
        return ia is None or ib is None or (ia, ib) not in self.down

    def _swim_relayable(self, a: str, b: str) -> bool:
        """A reliable SWIM message from ``a`` to ``b`` crosses ``a``'s relay now."""
        ia, ib = self._addr_to_id.get(a), self._addr_to_id.get(b)
        if ia is None or ib is None:
            return False
        via = self.tables[ia].route(ib, self.now * TICK).via
        return bool(via) and self.connected(ia, via) and self.connected(via, ib) and (
            self.tables[via].direct_ok(ib))

    def _helper_score(self, table: LinkTable) -> Callable[[str, str], float]:
        def score(helper: str, target: str) -> float:
            return table.relay_score(self._raft_of.get(helper, helper), self._raft_of.get(target, target))
        return score

    # ------------------------------------------------------------ sending

    def _send(self, msg: RaftMessage) -> None:
        if self.rng.random() < self.drop_rate:
            return
        self.send_reliable("raft", msg.frm, msg.to, msg)

    def send_reliable(self, kind: str, src: str, dst: str, payload: Any) -> None:
        """Route as the PeerRouter does: direct, or over the sender's chosen relay."""
        table = self.tables[src]
        route = table.route(dst, self.now * TICK)
        if route.via:
            self.relayed += 1
            self._push("relay0", src, route.via, (kind, dst, payload))
        else:
            if route.broken:
                self.direct_while_broken += 1
            self._push(kind, src, dst, payload)
            table.note_active(dst, self.now * TICK)  # as RelayService.send does
            recent = self._recent.get((src, dst))
            if recent is None:
                recent = self._recent[(src, dst)] = deque(maxlen=SIM_LINKS.resend_max)
            recent.append((self.now, kind, payload))

    def _push(self, kind: str, src: str, dst: str, payload: Any) -> None:
        self._eseq += 1
        at = self.now + 1 + self.rng.randint(0, self.max_delay)
        heapq.heappush(self._events, (at, self._eseq, kind, src, dst, payload))

    # ------------------------------------------------------------ driving

    def step(self) -> None:
        super().step()  # ticks and drains the Raft nodes (their queue stays empty)
        t = self.now * TICK
        events = self._events
        while events and events[0][0] <= self.now:
            _at, _seq, kind, src, dst, payload = heapq.heappop(events)
            node = self.nodes[dst]
            if node.up and self.connected(src, dst):
                self._deliver(kind, src, dst, payload, t)
        self._links(t)
        self.swim.run_until(t)
        self._note_leader()

    def _deliver(self, kind: str, src: str, dst: str, payload: Any, t: float) -> None:
        if kind == "raft":
            node = self.nodes[dst]
            node.raft.step(payload)
            self._drain(node)
        elif kind == "relay0":
            inner, final, body = payload
            if self.tables[dst].direct_ok(final) and final != src:
                self._push("relay1", dst, final, (inner, src, body))
            else:
                self._push("nack", dst, src, final)
        elif kind == "relay1":
            inner, origin, body = payload
            self._deliver(inner, origin, dst, body, t)
        elif kind == "nack":
            self.relay_nacks += 1
            self.tables[dst].relay_failed(payload, src, t)
        elif kind == "ping":
            self._push("pong", dst, src, payload)
        elif kind == "pong":
            self.tables[dst].on_pong(src, payload, t)
        elif kind == "summary":
            self.tables[dst].on_summary(payload, t)
        elif kind == "fwd" and self.on_forward is not None:
            self.on_forward(dst, src, payload)
        elif kind == "fwd_result" and self.on_forward_result is not None:
            self.on_forward_result(dst, payload)

    def _links(self, t: float) -> None:
        tick = self.now - self._last_summary >= round(SIM_LINKS.summary_interval / TICK)
        if tick:
            self._last_summary = self.now
        for node_id, table in self.tables.items():
            if not self.nodes[node_id].up:
                continue
            table.tick(t)
            broken = set(table.broken_peers())
            for peer in sorted(broken - self._broken[node_id]):
                for sent, kind, payload in self._recent.pop((node_id, peer), ()):
                    if self.now - sent <= RESEND_STEPS:
                        self.resent += 1
                        self.send_reliable(kind, node_id, peer, payload)
            self._broken[node_id] = broken
            for peer, seq in table.due_probes(t):
                self._push("ping", node_id, peer, seq)
            since = (self.now - self._sent_summary.get(node_id, -10**9)) * TICK
            if tick and table.summary_due(since):  # the agent's rule (relay.py poll)
                self._sent_summary[node_id] = self.now
                summary = table.summary()
                for peer in table.tracked():
                    self._push("summary", node_id, peer, summary)

    def _note_leader(self) -> None:
        """Record each new (term, leader): a re-election of the same node counts too."""
        leader = self.leader()
        if leader is None or leader.raft.role != Role.LEADER:
            return
        key = f"{leader.raft.term}:{leader.node_id}"
        if key != self._leader:
            self.leader_changes.append((self.now, key))
            self._leader = key

    # ------------------------------------------------------------ observing

    def dead_seen(self) -> list[tuple[str, str]]:
        """(observer, subject) pairs where a running SWIM node holds a live one dead."""
        out = []
        for a, ha in self.host.items():
            for b, hb in self.host.items():
                if a != b and self.swim.state_of(ha, hb) == MemberState.DEAD:
                    out.append((a, b))
        return out

    def swim_host(self, node_id: str) -> SimHost:
        return self.host[node_id]
