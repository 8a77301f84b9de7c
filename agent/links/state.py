"""Link state: how healthy each direct path is, and which relay to use when one is broken.

Theory of operation
-------------------
SWIM tells whether a member is alive; it does not tell whether *we* reach it
directly.  Under a partial partition (one link cut, a bridge, a simplex link)
a member is alive -- others reach it, so SWIM's indirect probes keep it alive
-- while our own messages to it vanish.  This table keeps, per peer, the
health of our direct path, shares a compact summary of it with the peers,
and picks a relay for a destination whose direct path is broken.

Sans-IO: nothing here reads a clock or touches a socket.  The runtime
(``agent.runtime.relay``) passes ``now`` (monotonic seconds), sends the
``LinkPing``/``LinkSummary`` datagrams :meth:`LinkTable.due_probes` and
:meth:`LinkTable.summary` ask for, and feeds back pongs, summaries and SWIM's
observations.

Rules, per peer P (our direct path to P):

============================================  ==========  =====================
event                                         from        to
============================================  ==========  =====================
LinkPong (or SWIM direct Ack) from P          any         DIRECT (failures = 0)
next probe of P, a reliable message with P    any         in probe_interval
  within idle_after, or P failing/broken
next probe of P otherwise (an idle pair)      DIRECT      in idle_probe_interval
a probe goes out now, P idle and due within   DIRECT      probed now too (one
  probe_interval                                          wake-up serves them)
a reliable message with an idle P             DIRECT      next probe at most
                                                          probe_interval away
P's probe due, our stream to P made a round   any         as a LinkPong (no
  trip within probe_interval (TCP, runtime)               LinkPing sent)
probe of P unanswered after probe_timeout,    DIRECT      DIRECT (failures + 1)
  failures + 1 < broken_after
probe unanswered, failures + 1 >= broken_after DIRECT      BROKEN
stream connection refused or reset by P       DIRECT      counts as one failure
SWIM: P answered only through helper X        any         note X as a witness
============================================  ==========  =====================

A BROKEN path is shown RELAYED (with its relay) when :meth:`route` finds a
relay for it, DOWN when none.  One answered probe heals it: the next probe
is at most ``probe_interval`` away, so traffic returns to the direct path
within one probe interval of the link coming back.

Relay choice, for a destination D whose path is broken (:meth:`route`):

==========================================  =====================================
condition on a candidate R                  effect
==========================================  =====================================
R is D, us, or not a live member            not a candidate
our path to R is BROKEN                     not a candidate
R's summary says R-D is not direct          not a candidate
D's summary says D-R is not direct          not a candidate
R failed us for D within relay_retry        not a candidate
otherwise                                   score = leg(us, R) * leg(R, D)
the relay in use is still a candidate       kept (sticky), so frames stay in order
==========================================  =====================================

``leg(a, b) = success * rtt_scale / (rtt_scale + rtt)``, with the success
rate over the last ``window`` probes and the smoothed RTT: the same score
ranks SWIM's indirect-probe helpers (:meth:`relay_score`), the design's
"reputation-based peer selection".  A leg nobody reported is worth
``UNKNOWN_LEG``: such a relay is used only when no known one exists, and its
``RelayNack`` (it cannot reach D) moves us to the next.  Ties go to the
lower node id, so a simulation replays exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from agent.links.config import LinkConfig
from agent.runtime.messages import LinkEntry, LinkSummary

UNKNOWN_LEG = 0.25
"""Score of a leg no summary reports on (a relay of last resort)."""
MAX_PENDING_PROBES = 4
"""Unanswered LinkPings remembered per peer (later pongs are still counted)."""
MAX_PEERS = 4096
"""Peers with link state kept (a backstop; the least recently active goes)."""


class LinkState(IntEnum):
    """A directed link's state as ``meshtui status`` shows it."""

    DIRECT = 0
    RELAYED = 1
    DOWN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach a peer now: ``via`` is the relay, or "" for the direct path.
    ``broken`` says the direct path is known broken (``via`` "" then means no
    relay was found: send directly anyway, it may heal)."""

    via: str = ""
    broken: bool = False


DIRECT_ROUTE = Route()


@dataclass(frozen=True, slots=True)
class PairView:
    """One directed link for ``status``: ``a``'s path to ``b``."""

    a: str
    b: str
    state: LinkState
    via: str
    rtt_ms: float | None


@dataclass(slots=True)
class _Peer:
    outcomes: deque[bool]
    failures: int = 0
    rtt: float | None = None
    broken: bool = False
    broken_since: float = 0.0
    next_probe: float = 0.0
    pending: dict[int, float] = field(default_factory=dict)  # seq -> sent at
    active_at: float = 0.0
    relay: str = ""  # relay in use while broken
    bad_relays: dict[str, float] = field(default_factory=dict)  # relay -> until
    witness: str = ""  # SWIM: answered through this helper

    def success(self) -> float:
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else 1.0


def leg_score(success: float, rtt: float | None, rtt_scale: float) -> float:
    """A leg's worth for relaying: its success rate, discounted by its RTT."""
    if rtt is None:
        return success * 0.5
    return success * rtt_scale / (rtt_scale + max(0.0, rtt))


class LinkTable:
    """This node's direct-path health per peer, the peers' summaries, relay choice."""

    def __init__(self, config: LinkConfig, self_id: str) -> None:
        self.config = config.validate()
        self.self_id = self_id
        self._peers: dict[str, _Peer] = {}
        self._members: set[str] = set()
        self._summaries: dict[str, tuple[float, LinkSummary]] = {}  # origin -> (heard at, summary)
        self._seq = 0
        self._version = 0
        self._sent_shape: tuple[tuple[str, bool, str], ...] | None = None
        """The broken links of the last summary made (``_shape``): a summary that
        would say the same waits for ``summary_refresh``."""
        self.broken_events = 0
        """Times a direct path was found broken."""
        self.heal_events = 0
        """Times a broken direct path answered again."""
        self.probes_spared = 0
        """Due probes answered by a stream's round trip instead of a LinkPing."""

    # ------------------------------------------------------------ who to watch

    def set_members(self, alive: set[str], now: float) -> None:
        """The live members (SWIM): small clusters track every one of them."""
        self._members = set(alive) - {self.self_id}
        track_all = len(self._members) <= self.config.track_all_limit
        for node in sorted(self._members):  # sorted: a simulation replays exactly
            if track_all:
                self._peer(node, now)
        for node in [n for n in self._peers if n not in self._members]:
            del self._peers[node]  # left or dead: SWIM's business now

    def note_active(self, peer: str, now: float) -> bool:
        """A reliable message went to or came from ``peer``: keep its path tracked.
        True when this brought its next probe forward (an idle pair became busy: its
        path is probed at the busy rate from now on, not at the idle one), so the
        runtime wakes up for it."""
        state = self._peers.get(peer)  # tracked peers are live members, never us
        if state is not None and now - state.active_at <= self.config.idle_after:
            state.active_at = now  # busy already: the per-message path (Raft under load)
            return False
        if peer == self.self_id or peer not in self._members:
            return False
        state = self._peer(peer, now)
        was_idle = now - state.active_at > self.config.idle_after
        state.active_at = now
        soonest = now + self.config.probe_interval
        if was_idle and state.next_probe > soonest:
            state.next_probe = soonest
            return True
        return False

    def tracked(self) -> list[str]:
        return list(self._peers)

    def _peer(self, node: str, now: float) -> _Peer:
        peer = self._peers.get(node)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                oldest = min(self._peers, key=lambda n: self._peers[n].active_at)
                del self._peers[oldest]
            peer = self._peers[node] = _Peer(deque(maxlen=self.config.window), active_at=now,
                                             next_probe=now)
        return peer

    # ------------------------------------------------------------ probing

    def tick(self, now: float) -> None:
        """Expire unanswered probes (each a failure), idle peers and old summaries."""
        cfg = self.config
        track_all = len(self._members) <= cfg.track_all_limit
        for node, peer in list(self._peers.items()):
            for seq, sent in list(peer.pending.items()):
                if now - sent >= cfg.probe_timeout:
                    del peer.pending[seq]
                    self._failed(peer, now)
            if not track_all and now - peer.active_at > cfg.active_ttl and not peer.broken:
                del self._peers[node]
        for origin, (heard, _summary) in list(self._summaries.items()):
            if now - heard > cfg.summary_ttl:
                del self._summaries[origin]

    def due_probes(self, now: float,
                   round_trip: Callable[[str], float | None] | None = None) -> list[tuple[str, int]]:
        """(peer, seq) of the LinkPings to send now; each is then pending.

        ``round_trip(peer)``, when given, is the runtime's other evidence: the RTT
        (seconds) of a round trip our reliable stream to ``peer`` made within the
        last ``probe_interval`` (its data all acknowledged), or None.  A due peer
        with such evidence counts one answered probe and gets no LinkPing: a busy
        pair (Raft's heartbeats, 10 a second) already proves its path both ways."""
        cfg = self.config
        if not any(now >= peer.next_probe for peer in self._peers.values()):
            return []
        # Idle peers due within one busy probe interval go now too: their probes
        # then fall into the same rounds instead of each waking the runtime up on
        # its own (ten idle peers, ten phases), at most that much early.
        early = now + cfg.probe_interval
        out: list[tuple[str, int]] = []
        for node, peer in self._peers.items():
            busy = peer.failures or peer.broken or now - peer.active_at <= cfg.idle_after
            if now < peer.next_probe and (busy or peer.next_probe > early):
                continue
            peer.next_probe = now + (cfg.probe_interval if busy else cfg.idle_probe_interval)
            rtt = round_trip(node) if round_trip is not None and not peer.broken else None
            if rtt is not None:
                self.observe_direct(node, now, rtt)
                self.probes_spared += 1
                continue
            self._seq += 1
            if len(peer.pending) >= MAX_PENDING_PROBES:
                del peer.pending[next(iter(peer.pending))]
            peer.pending[self._seq] = now
            out.append((node, self._seq))
        return out

    def next_deadline(self) -> float:
        """When :meth:`tick` or :meth:`due_probes` next has work (``inf`` if never)."""
        soonest = float("inf")
        timeout = self.config.probe_timeout
        for peer in self._peers.values():
            soonest = min(soonest, peer.next_probe)
            for sent in peer.pending.values():
                soonest = min(soonest, sent + timeout)
        return soonest

    def on_pong(self, node: str, seq: int, now: float) -> None:
        """``node`` answered LinkPing ``seq``: the direct path works."""
        peer = self._peers.get(node)
        if peer is None:
            return
        sent = peer.pending.pop(seq, None)
        if sent is None:
            return  # late (already counted as failed) or not ours
        self.observe_direct(node, now, now - sent)

    def observe_direct(self, node: str, now: float, rtt: float | None = None) -> None:
        """Direct evidence that the path to ``node`` works (a pong, SWIM's direct Ack)."""
        peer = self._peers.get(node)
        if peer is None:
            return
        peer.outcomes.append(True)
        peer.failures = 0
        if rtt is not None:
            a = self.config.rtt_smoothing
            peer.rtt = rtt if peer.rtt is None else (1 - a) * peer.rtt + a * rtt
        if peer.broken:
            peer.broken = False
            peer.relay = ""
            self.heal_events += 1
            self._version += 1

    def observe_failure(self, node: str, now: float) -> None:
        """Direct evidence that the path failed once (a refused or reset connection)."""
        peer = self._peers.get(node)
        if peer is not None:
            self._failed(peer, now)

    def observe_indirect(self, node: str, via: str) -> None:
        """SWIM reached ``node`` only through helper ``via``: a relay that works."""
        peer = self._peers.get(node)
        if peer is not None and via:
            peer.witness = via

    def _failed(self, peer: _Peer, now: float) -> None:
        peer.outcomes.append(False)
        peer.failures += 1
        if not peer.broken and peer.failures >= self.config.broken_after:
            peer.broken = True
            peer.broken_since = now
            self.broken_events += 1
            self._version += 1

    # ------------------------------------------------------------ what we know

    def direct_ok(self, node: str) -> bool:
        """False only when the direct path to ``node`` is known broken."""
        peer = self._peers.get(node)
        return peer is None or not peer.broken

    def reachable(self, node: str, now: float) -> bool:
        """Known to be reachable now: our last probe of ``node`` was answered, or its
        path is broken and a relay to it is in use.  Unknown peers are not (the Raft
        driver's minority rule counts only what it knows; leader_wait.py)."""
        peer = self._peers.get(node)
        if peer is None:
            return False
        if not peer.broken:
            return bool(peer.outcomes) and peer.outcomes[-1]
        return self.route(node, now).via != ""

    def broken_peers(self) -> list[str]:
        return [n for n, p in self._peers.items() if p.broken]

    def rtt(self, node: str) -> float | None:
        peer = self._peers.get(node)
        return None if peer is None else peer.rtt

    def _reported(self, a: str, b: str) -> LinkEntry | None:
        """What ``a``'s latest summary says of its link to ``b``."""
        held = self._summaries.get(a)
        if held is None:
            return None
        return next((e for e in held[1].links if e.peer == b), None)

    def _leg(self, a: str, b: str) -> float | None:
        """Score of the leg a-b from the summaries (None: nobody said; 0: broken)."""
        scores: list[float] = []
        for x, y in ((a, b), (b, a)):
            entry = self._reported(x, y)
            if entry is not None:
                if entry.state != LinkState.DIRECT:
                    return 0.0
                scores.append(leg_score(entry.success, entry.rtt_ms / 1000.0, self.config.rtt_scale))
        return min(scores) if scores else None

    def relay_score(self, relay: str, dest: str) -> float:
        """How good ``relay`` is for reaching ``dest`` (0 when it cannot be used).
        Also ranks SWIM's indirect-probe helpers for a target ``dest``."""
        if relay in (dest, self.self_id):
            return 0.0
        mine = self._peers.get(relay)
        if mine is not None and mine.broken:
            return 0.0
        own = (leg_score(mine.success(), mine.rtt, self.config.rtt_scale)
               if mine is not None else UNKNOWN_LEG)
        far = self._leg(relay, dest)
        if far is None:
            peer = self._peers.get(dest)
            far = 1.0 if peer is not None and peer.witness == relay else UNKNOWN_LEG
        return own * far

    # ------------------------------------------------------------ routing

    def route(self, dest: str, now: float) -> Route:
        """Direct while the path to ``dest`` is not known broken, else the best relay."""
        peer = self._peers.get(dest)
        if peer is None or not peer.broken:
            return DIRECT_ROUTE
        for relay, until in list(peer.bad_relays.items()):
            if until <= now:
                del peer.bad_relays[relay]
        if peer.relay and self._usable(dest, peer, peer.relay):
            return Route(peer.relay, True)
        best, best_score = "", 0.0
        for relay in sorted(self._members):
            if relay in peer.bad_relays:
                continue
            score = self.relay_score(relay, dest)
            if score > best_score:
                best, best_score = relay, score
        if best != peer.relay:
            peer.relay = best
            self._version += 1
        return Route(best, True)

    def _usable(self, dest: str, peer: _Peer, relay: str) -> bool:
        return (relay in self._members and relay not in peer.bad_relays
                and self.relay_score(relay, dest) > 0.0)

    def relay_failed(self, dest: str, relay: str, now: float) -> None:
        """``relay`` could not pass our frame to ``dest``: use another for a while."""
        peer = self._peers.get(dest)
        if peer is None:
            return
        peer.bad_relays[relay] = now + self.config.relay_retry
        if peer.relay == relay:
            peer.relay = ""
            self._version += 1

    # ------------------------------------------------------------ summaries

    def _shape(self) -> tuple[tuple[str, bool, str], ...]:
        """Which of our links are broken and over which relay (what relay choice
        reads; RTTs and success rates move slowly and do not count)."""
        return tuple((n, p.broken, p.relay) for n, p in sorted(self._peers.items()) if p.broken)

    def summary_due(self, since_last: float) -> bool:
        """Whether a summary should go now, ``since_last`` seconds after the last one
        (the caller ticks every ``summary_interval``): at once when a link changed
        state, else every ``summary_refresh``."""
        if since_last >= self.config.summary_refresh:
            return True
        return since_last >= self.config.summary_interval and self._shape() != self._sent_shape

    def summary(self) -> LinkSummary:
        """Our links for the peers: broken ones first, then the best RTTs."""
        def entry(node: str, peer: _Peer) -> LinkEntry:
            state = LinkState.DIRECT
            if peer.broken:
                state = LinkState.RELAYED if peer.relay else LinkState.DOWN
            rtt_ms = round(peer.rtt * 1000.0, 3) if peer.rtt is not None else 0.0
            return LinkEntry(node, int(state), peer.relay, rtt_ms, round(peer.success(), 3))

        ranked = sorted(self._peers.items(),
                        key=lambda item: (not item[1].broken, item[1].rtt or 0.0, item[0]))
        links = tuple(entry(n, p) for n, p in ranked[: self.config.max_summary_entries])
        self._sent_shape = self._shape()
        self._version += 1
        return LinkSummary(self.self_id, self._version, links)

    def on_summary(self, summary: LinkSummary, now: float) -> None:
        """A peer's summary; an older version than the one held is ignored."""
        if summary.origin == self.self_id:
            return
        held = self._summaries.get(summary.origin)
        if held is not None and held[1].version > summary.version:
            return
        if held is None and len(self._summaries) >= MAX_PEERS:
            del self._summaries[next(iter(self._summaries))]
        self._summaries[summary.origin] = (now, summary)

    def pairs(self) -> list[PairView]:
        """Every directed link known: ours, then each summary's (``status --json``)."""
        out: list[PairView] = []
        for node, peer in sorted(self._peers.items()):
            state = LinkState.DIRECT
            if peer.broken:
                state = LinkState.RELAYED if peer.relay else LinkState.DOWN
            rtt = round(peer.rtt * 1000.0, 3) if peer.rtt is not None else None
            out.append(PairView(self.self_id, node, state, peer.relay, rtt))
        for origin, (_heard, summary) in sorted(self._summaries.items()):
            for e in summary.links:
                out.append(PairView(origin, e.peer, LinkState(e.state), e.via,
                                    e.rtt_ms if e.rtt_ms > 0 else None))
        return out
