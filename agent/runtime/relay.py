"""Relays: reliable messages around a broken direct path, over one other peer.

Theory of operation
-------------------
The link-state core (``agent.links.state.LinkTable``) knows, per peer, whether
our direct path works and which relay reaches a peer whose path does not.
This module is its runtime: it sends the core's ``LinkPing`` probes and
``LinkSummary`` datagrams, feeds back what comes in, and carries reliable
messages (everything ``PeerRouter`` sends over a stream: Raft appends, votes
and ReadIndex, forwarded writes and reads, task output, scheduler bids and
moves, push-pull) to a peer whose direct path is broken:

* the origin seals the message end to end for the destination (channel RELAY,
  ``agent.envelope``, "Relayed frames"), preceded by a ``Hello`` naming its
  listen address, and sends ``RelayFrame(origin, dest, hop=0, packet)`` to the
  relay over the relay's ordinary stream;
* the relay passes the packet on, unopened, as ``hop=1`` over its own stream
  to the destination -- if its direct path there works and that stream's
  queue holds fewer than ``relay_queue`` messages; otherwise it drops the
  frame, counts it (``relay_drops``) and answers ``RelayNack``, and the origin
  picks another relay for that destination for ``relay_retry`` seconds;
* the destination opens the packet (tag, key, the RELAY replay window); a
  frame a relay altered fails the tag and is counted (``relay_tampered``); a
  frame without a valid cookie is answered with a RELAY_GRANT sent back the
  same way, and the origin resends what it sealed without a cookie (up to
  ``resend_max`` messages of the last ``resend_window`` seconds) once the
  grant is in (cookies held in an ``agent.runtime.cookies.CookieJar`` keyed
  by node id).

One hop: a relay forwards only hop-0 frames and only to the destination they
name; a destination takes only frames addressed to itself.  No loops, no
chains.  When a path is found broken, the reliable messages sent directly to
that peer in the last ``resend_window`` seconds are sent again over the relay
(what was in flight on the dead path; Raft and forwarded writes are
idempotent) and the dead connection is closed, so the healed path starts on a
fresh connection instead of a TCP retransmission backoff.

Connections: every few seconds outbound streams idle for ``idle_close``
seconds are closed, and the transport keeps at most ``max_streams`` outbound
streams besides the leader's replication streams (``Transport.set_stream_cap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from agent import wire
from agent.crypto import SealError
from agent.envelope import NO_COOKIE, Channel, CookieNeeded, Grant, sender_digest
from agent.errors import ProtocolError
from agent.links.config import LinkConfig
from agent.links.state import LinkTable, PairView
from agent.runtime.cookies import CookieJar, GrantLimiter
from agent.runtime.inbound import join_batch, split_batch
from agent.runtime.messages import LinkPing, LinkPong, LinkSummary, RelayFrame, RelayNack
from agent.runtime.transport import MAX_STREAM_PAYLOAD, Transport

log = logging.getLogger(__name__)

RELAY_MESSAGES = (LinkPing, LinkPong, LinkSummary, RelayFrame, RelayNack)
"""The message classes this module handles (routed by ``PeerRouter``)."""
RELAY_OVERHEAD = 256
"""Bytes a RelayFrame adds around a sealed message (ids, Hello, envelope): a
message that would not fit a stream frame then is sent directly, never relayed."""
IDLE_SWEEP = 5.0
"""Seconds between two sweeps for idle outbound streams."""
MEMBER_REFRESH = 0.25
"""Seconds between two reads of the live members: the list changes rarely, and
reading it on every wake-up cost an idle agent a visible share of its CPU."""
POLL_FLOOR = 0.05
"""Seconds the loop sleeps at least between two rounds, so probes that fall due
within 50 ms of each other go out in one wake-up (a probe timeout of 0.2 s is
then noticed at most 50 ms late)."""

Deliver = Callable[[str, bytes], None]
"""``(sender's listen address, encoded message)``: the router's inbound path."""
Members = Callable[[], Iterable[tuple[str, str]]]
"""The live members as (node id, listen address)."""


@dataclass(slots=True)
class RelayStats:
    """Counters for ``meshtui report`` → ``links``."""

    relayed_out: int = 0
    """Messages we sent over a relay (as origin)."""
    relayed_in: int = 0
    """Relayed messages delivered to us (as destination)."""
    relayed_forwarded: int = 0
    """Frames we passed on as a relay."""
    relay_drops: int = 0
    """Frames we refused as a relay (no direct path onwards, queue full, a hop-1 frame)."""
    relay_nacks_in: int = 0
    """Relays that told us they could not pass a frame on."""
    relay_tampered: int = 0
    """Relayed frames whose tag did not verify: altered on the way (or forged)."""
    relay_replays: int = 0
    """Relayed frames refused as replays."""
    relay_refused: int = 0
    """Relayed frames refused otherwise (no cookie yet: answered with a grant; malformed)."""
    resent: int = 0
    """Messages sent again over a relay when their direct path was found broken."""
    unrelayable: int = 0
    """Messages to a broken peer sent directly for want of a relay (or too large)."""
    probes_spared: int = 0
    """Link probes not sent: the stream to that peer had just made a round trip."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RelayService:
    """Link probing, summaries and relayed delivery for one node (see module doc)."""

    def __init__(self, transport: Transport, node_id: str, config: LinkConfig,
                 deliver: Deliver) -> None:
        self._transport = transport
        self.node_id = node_id
        self.config = config
        self.table = LinkTable(config, node_id)
        self.stats = RelayStats()
        self._deliver = deliver
        self._members: Members = lambda: ()
        self._addr: dict[str, str] = {}  # node id -> listen address
        self._node: dict[str, str] = {}  # listen address -> node id
        self._jar = CookieJar()  # RELAY cookies, keyed by destination node id
        self._grants = GrantLimiter()
        self._recent: dict[str, deque[tuple[float, bytes]]] = {}
        self._awaiting: dict[str, deque[tuple[float, bytes]]] = {}  # relayed before a grant
        self._broken: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_summary = float("-inf")
        self._last_sweep = 0.0
        self._last_refresh = float("-inf")

    # ------------------------------------------------------------ lifecycle

    def use_members(self, members: Members) -> None:
        self._members = members

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="links")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            try:
                self.poll(now)
            except Exception:
                log.exception("link-state round failed")
            delay = min(self.table.next_deadline(), self._last_summary + self.config.summary_interval)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(POLL_FLOOR, min(delay - time.monotonic(), 0.5))):
                    await self._wake.wait()

    def poll(self, now: float) -> None:
        """One round: members, probe timeouts, due probes, summaries, breaks, idle streams."""
        if now - self._last_refresh >= MEMBER_REFRESH:
            self._last_refresh = now
            self._refresh_members(now)
        table = self.table
        table.tick(now)
        transport = self._transport
        for node, seq in table.due_probes(now, self._round_trip):
            addr = self._addr.get(node)
            if addr is not None:
                transport.send_datagram(addr, wire.encode(LinkPing(seq, self.node_id)))
        self.stats.probes_spared = table.probes_spared
        if table.summary_due(now - self._last_summary):
            self._last_summary = now
            data = wire.encode(table.summary())
            for node in table.tracked():
                addr = self._addr.get(node)
                if addr is not None:
                    transport.send_datagram(addr, data)
        self._on_breaks(now)
        if now - self._last_sweep >= IDLE_SWEEP:
            self._last_sweep = now
            transport.close_idle(now, self.config.idle_close)

    def _round_trip(self, node: str) -> float | None:
        """Our stream to ``node`` made a round trip within one probe interval: its RTT."""
        addr = self._addr.get(node)
        if addr is None:
            return None
        return self._transport.stream_round_trip(addr, self.config.probe_interval)

    def _refresh_members(self, now: float) -> None:
        addr: dict[str, str] = {}
        for node, at in self._members():
            addr[node] = at
        self._addr = addr
        self._node = {at: node for node, at in addr.items()}
        self.table.set_members(set(addr), now)
        for held in (self._recent, self._awaiting):
            for node in [n for n in held if n not in addr]:
                del held[node]

    def _on_breaks(self, now: float) -> None:
        broken = set(self.table.broken_peers())
        for node in broken - self._broken:
            addr = self._addr.get(node)
            if addr is not None:
                self._transport.drop_peer(addr)  # a fresh connection once it heals
            recent = self._recent.pop(node, None)
            log.info("direct path to %s broken; relaying", node[:12])
            for sent, data in recent or ():
                if now - sent <= self.config.resend_window and self._relay(node, data, now):
                    self.stats.resent += 1
        self._broken = broken

    # ------------------------------------------------------------ lookups

    def node_of(self, addr: str) -> str | None:
        return self._node.get(addr)

    def addr_of(self, node: str) -> str | None:
        return self._addr.get(node)

    def links(self) -> list[PairView]:
        return self.table.pairs()

    def connect_failed(self, addr: str) -> None:
        """A stream connection to ``addr`` was refused or reset: one direct failure."""
        node = self._node.get(addr)
        if node is not None:
            self.table.observe_failure(node, time.monotonic())

    # ------------------------------------------------------------ sending

    def send(self, node: str, addr: str | None, data: bytes) -> None:
        """A reliable message to ``node`` (at ``addr``): direct, or over a relay."""
        now = time.monotonic()
        if node and not self.table.direct_ok(node) and self._relay(node, data, now):
            return
        if addr is None:
            return
        self._transport.send_stream(addr, data)
        if node:
            if self.table.note_active(node, now):
                self._wake.set()  # its next probe came forward
            recent = self._recent.get(node)
            if recent is None:
                recent = self._recent[node] = deque(maxlen=self.config.resend_max)
            recent.append((now, data))

    def _relay(self, dest: str, data: bytes, now: float) -> bool:
        """Send ``data`` to ``dest`` over its relay; False if there is none."""
        route = self.table.route(dest, now)
        via_addr = self._addr.get(route.via) if route.via else None
        if via_addr is None or len(data) > MAX_STREAM_PAYLOAD - RELAY_OVERHEAD:
            self.stats.unrelayable += 1
            return False
        envelope = self._transport.envelope
        cookie = self._jar.cookie_for(dest)
        hello = wire.encode(wire.Hello(self.node_id, self._transport.listen_addr))
        packet = envelope.seal(Channel.RELAY, join_batch([hello, data]), cookie or NO_COOKIE)
        self._jar.sent(dest, envelope.sequences[Channel.RELAY], data, False, now)
        if cookie is None:  # refused for want of a cookie: kept, sent again with the grant
            awaiting = self._awaiting.get(dest)
            if awaiting is None:
                awaiting = self._awaiting[dest] = deque(maxlen=self.config.resend_max)
            awaiting.append((now, data))
        self._transport.send_stream(via_addr, wire.encode(RelayFrame(self.node_id, dest, 0, packet)))
        self.stats.relayed_out += 1
        return True

    # ------------------------------------------------------------ inbound

    def on_message(self, from_addr: str, msg: object) -> None:
        """A message of :data:`RELAY_MESSAGES` from ``from_addr``."""
        now = time.monotonic()
        if isinstance(msg, LinkPing):
            self._transport.send_datagram(from_addr, wire.encode(LinkPong(msg.seq, self.node_id)))
        elif isinstance(msg, LinkPong):
            self.table.on_pong(msg.source, msg.seq, now)
        elif isinstance(msg, LinkSummary):
            self.table.on_summary(msg, now)
        elif isinstance(msg, RelayNack):
            self.stats.relay_nacks_in += 1
            relay = self._node.get(from_addr)
            if relay is not None:
                self.table.relay_failed(msg.dest, relay, now)
        elif isinstance(msg, RelayFrame):
            if msg.hop == 0 and msg.dest != self.node_id:
                self._forward(from_addr, msg)
            elif msg.hop == 1 and msg.dest == self.node_id:
                self._receive(msg, now)
            else:
                self.stats.relay_drops += 1
                self._transport.send_stream(from_addr, wire.encode(RelayNack(msg.dest, "hop")))

    def _forward(self, from_addr: str, msg: RelayFrame) -> None:
        """Pass a hop-0 frame on to its destination, or refuse it."""
        dest_addr = self._addr.get(msg.dest)
        reason = ""
        if self._node.get(from_addr) != msg.origin or msg.origin == msg.dest:
            reason = "hop"
        elif dest_addr is None or not self.table.direct_ok(msg.dest):
            reason = "no_path"
        elif self._transport.queued(dest_addr) >= self.config.relay_queue:
            reason = "queue_full"
        if reason or dest_addr is None:
            self.stats.relay_drops += 1
            self._transport.send_stream(from_addr, wire.encode(RelayNack(msg.dest, reason)))
            return
        self._transport.send_stream(dest_addr, wire.encode(RelayFrame(msg.origin, msg.dest, 1, msg.packet)))
        self.stats.relayed_forwarded += 1
        now = time.monotonic()
        if self.table.note_active(msg.dest, now) | self.table.note_active(msg.origin, now):
            self._wake.set()

    def _receive(self, msg: RelayFrame, now: float) -> None:
        """A hop-1 frame for us: open it end to end and deliver what it carries."""
        envelope = self._transport.envelope
        try:
            opened = envelope.open_relay(msg.packet)
        except CookieNeeded as refused:
            self.stats.relay_refused += 1
            if self._grants.allow(msg.origin, now):
                self._send_grant(msg.origin, envelope.seal_relay_grant(refused, self.node_id), now)
            return
        except SealError as exc:
            if exc.reason == "tag":
                self.stats.relay_tampered += 1
                log.warning("a relayed frame from %s failed its tag: altered on the way",
                            msg.origin[:12])
            elif exc.reason == "replay":
                self.stats.relay_replays += 1
            else:
                self.stats.relay_refused += 1
            return
        if isinstance(opened, Grant):
            dest = opened.listen_addr
            self._jar.learn(dest, opened, now)
            if self._jar.cookie_for(dest) == opened.cookie:
                for sent, data in self._awaiting.pop(dest, ()):
                    if now - sent <= self.config.resend_window:
                        self.send(dest, self._addr.get(dest), data)
            return
        sender, payload = opened
        try:
            items = split_batch(payload)
            hello = wire.decode(items[0]) if items else None
        except ProtocolError:
            hello = None
        if (not isinstance(hello, wire.Hello) or hello.node_id != msg.origin
                or sender_digest(hello.node_id) != sender):
            self.stats.relay_refused += 1
            return
        self.stats.relayed_in += len(items) - 1
        if self.table.note_active(msg.origin, now):
            self._wake.set()
        for item in items[1:]:
            self._deliver(hello.listen_addr, item)

    def _send_grant(self, origin: str, packet: bytes, now: float) -> None:
        """A RELAY_GRANT back to ``origin``: over its relay, or directly if it works."""
        route = self.table.route(origin, now)
        via_addr = self._addr.get(route.via) if route.via else None
        if via_addr is not None:
            self._transport.send_stream(via_addr, wire.encode(RelayFrame(self.node_id, origin, 0, packet)))
            return
        addr = self._addr.get(origin)
        if addr is not None:  # hop 1 straight to it: it takes frames addressed to itself
            self._transport.send_stream(addr, wire.encode(RelayFrame(self.node_id, origin, 1, packet)))
