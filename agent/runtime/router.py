"""The peer router: every message to or from another node goes through here.

Theory of operation
-------------------
The router owns the sealed transport (``transport.py``) and sits between it
and the components that speak to peers:

* inbound, every packet the transport opened (a datagram or one stream
  message) is decoded by ``agent.wire`` and handed to the one handler routed
  for its message class.  A packet that does not decode (``ProtocolError``),
  or whose class nobody routes, is dropped and counted in ``decode_errors``;
  a handler's ``LocalError`` is logged.  Hostile input never stops the agent;
* outbound, components send by node id (``send_to_node``: Raft, task output,
  bids), looked up in the peer directory (SWIM's member list), or straight to
  an address (``send_to_addr``: SWIM itself, and replies to the address a
  request came from);
* a stream connection that ends is reported to the directory, which may
  probe that peer early.

Routes are registered by the composition root (``agent.py``) once the
component that owns a message class exists; until then, and until the
directory is attached, packets of that class are dropped and sends by node
id go nowhere -- what a node that is still starting would do anyway.

This is the one place relays plug in (``relay.py``, issue 20): every reliable
message -- ``send_to_node``, and ``send_to_addr`` with ``reliable`` to an
address that is a member's -- goes through :meth:`RelayService.send`, which
sends it directly while the direct path to that node works and over one
relay while it is broken, without the cores knowing.  Datagrams (SWIM's
probes and gossip) never take a relay: SWIM has its own indirect probes, and
a broken path must stay visible to it.  Relayed messages are delivered here
as if they had come from their origin's listen address.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from agent import wire
from agent.crypto import Keyring
from agent.errors import LocalError, ProtocolError
from agent.links.config import LinkConfig
from agent.links.state import PairView
from agent.runtime.ports import PeerDirectory
from agent.runtime.relay import RELAY_MESSAGES, Members, RelayService, RelayStats
from agent.runtime.transport import Transport
from agent.runtime.transport_stats import TransportStats

log = logging.getLogger(__name__)

Route = Callable[[str, Any], None]
"""A message handler: ``(sender's listen address, decoded message)``."""

M = TypeVar("M")


class PeerRouter:
    """Decode and dispatch inbound packets; send by node id or address."""

    def __init__(self, *, bind: str, port: int, keyring: Keyring, node_id: str,
                 links: LinkConfig | None = None) -> None:
        self._transport = Transport(
            bind, port, keyring, node_id, self._on_packet, self._on_packet,
            on_connection_lost=self._on_connection_lost,
            on_connect_failed=self._on_connect_failed,
        )
        self._relay = RelayService(self._transport, node_id, links or LinkConfig.lan(),
                                   self._on_packet)
        self._routes: dict[type, Route] = {}
        self._directory: PeerDirectory | None = None
        self.decode_errors = 0
        """Packets dropped because they did not decode, or no route takes their class."""
        self.route(RELAY_MESSAGES, self._relay.on_message)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the transport's port (``OSError`` if it cannot)."""
        await self._transport.start()
        self._relay.start()

    async def close(self) -> None:
        await self._relay.close()
        await self._transport.close()

    @property
    def port(self) -> int:
        """The bound port (after ``start``; the OS picks one for port 0)."""
        return self._transport.port

    def advertise(self, addr: str) -> None:
        """Tell peers to answer our streams at ``addr`` ("host:port")."""
        self._transport.advertise = addr

    @property
    def stats(self) -> TransportStats:
        return self._transport.stats

    @property
    def relay_stats(self) -> RelayStats:
        return self._relay.stats

    def links(self) -> list[PairView]:
        """Every directed link this node knows of (its own and its peers' summaries)."""
        return self._relay.links()

    def broken_links(self) -> int:
        """Peers whose direct path is broken now, as this node sees them."""
        return len(self._relay.table.broken_peers())

    def reachable(self, node: str) -> bool:
        """The link layer reaches ``node`` now, directly or over a relay (LinkTable)."""
        return self._relay.table.reachable(node, time.monotonic())

    def relay_score(self, relay: str, dest: str) -> float:
        """The relay reputation of ``relay`` for ``dest`` (ranks SWIM's helpers too)."""
        return self._relay.table.relay_score(relay, dest)

    def observe_probe(self, target: str, via: str, rtt: float | None) -> None:
        """SWIM's probe outcome for ``target``: a direct Ack (``via`` "") or one
        relayed by helper ``via``."""
        relay = self._relay
        if via:
            relay.table.observe_indirect(target, via)
        else:
            relay.table.observe_direct(target, time.monotonic(), rtt)

    # ------------------------------------------------------------ wiring

    def route(self, classes: Iterable[type[M]], handler: Callable[[str, M], None]) -> None:
        """Deliver messages of ``classes`` to ``handler``; each class has one route."""
        for cls in classes:
            if cls in self._routes:
                raise LookupError(f"{cls.__name__} is routed twice")
            self._routes[cls] = handler

    def use_directory(self, directory: PeerDirectory) -> None:
        """Look node ids up in ``directory`` and report lost connections to it."""
        self._directory = directory

    def use_members(self, members: Members, *, max_streams: int,
                    replicating: Callable[[str], bool]) -> None:
        """The live members (node id, address) for link state and relays; keep at
        most ``max_streams`` outbound streams besides those to nodes
        ``replicating`` names (the leader's replication streams)."""
        self._relay.use_members(members)
        relay = self._relay

        def exempt(addr: str) -> bool:
            node = relay.node_of(addr)
            return node is not None and replicating(node)

        self._transport.set_stream_cap(max_streams, exempt)

    # ------------------------------------------------------------ inbound

    def _on_packet(self, from_addr: str, payload: bytes) -> None:
        try:
            msg = wire.decode(payload)
        except ProtocolError as exc:
            self.decode_errors += 1
            log.debug("dropped a malformed message from %s: %s", from_addr, exc)
            return
        route = self._routes.get(type(msg))
        if route is None:
            self.decode_errors += 1
            return
        try:
            route(from_addr, msg)
        except LocalError as exc:
            log.warning("message from %s refused: %s", from_addr, exc)

    def _on_connect_failed(self, addr: str) -> None:
        self._relay.connect_failed(addr)

    def _on_connection_lost(self, addr: str) -> None:
        if self._directory is not None:
            self._directory.connection_lost(addr)

    # ------------------------------------------------------------ outbound

    def addr_of(self, node_id: str) -> str | None:
        """Where ``node_id`` listens, if the directory knows it."""
        if self._directory is None:
            return None
        return self._directory.addr_of(node_id)

    def send_to_node(self, node_id: str, msg: object) -> None:
        """Send ``msg`` reliably to ``node_id``: over its stream, or over a relay
        while its direct path is broken; dropped if its address is unknown."""
        self._relay.send(node_id, self.addr_of(node_id), wire.encode(msg))

    def send_to_addr(self, addr: str, msg: object, reliable: bool = True) -> None:
        """Send ``msg`` to ``addr``: reliably (a member's address may take a relay,
        as :meth:`send_to_node`), or as one datagram if not ``reliable``."""
        data = wire.encode(msg)
        if reliable:
            self._relay.send(self._relay.node_of(addr) or "", addr, data)
        else:
            self._transport.send_datagram(addr, data)
