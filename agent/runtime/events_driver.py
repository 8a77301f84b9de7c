"""The asyncio side of user events: wire in and out, the resend timer, waiting for acks.

``user_events.UserEvents`` decides everything (sans-IO); this driver feeds it
peer messages from the router, the alive members from SWIM and the clocks,
sends what it returns over the sealed streams (``send_to_node``), ticks it
for resends, and lets a control call wait until every expected node has
acknowledged its event (``send(..., wait=...)``).  The control methods are
``handlers/events.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from agent.runtime.event_messages import EventAck, UserEvent
from agent.runtime.ports import Members, NodeNamer
from agent.runtime.user_events import Outgoing, Send, UserEvents

MAX_WAIT = 30.0
"""Longest a caller may wait for acknowledgements (seconds): past the resends, a
missing ack will not come."""
EVERYONE = ("", "all", "*")
"""What ``to`` may say to mean every node."""


class UserEventsDriver:
    """Runs a ``UserEvents`` core on the agent's loop (module doc)."""

    def __init__(
        self, core: UserEvents, send: Callable[[str, object], None], members: Members,
        names: NodeNamer,
    ) -> None:
        self._core = core
        self._send = send
        self._members = members
        self._names = names
        self._waiters: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------ the wire

    def on_message(self, from_addr: str, msg: object) -> None:
        if isinstance(msg, UserEvent):
            via = next((m.id for m in self._members.members() if m.addr == from_addr), "")
            self._dispatch(self._core.receive(time.time(), msg, via, self._alive()))
        elif isinstance(msg, EventAck):
            out = self._core.ack(msg)
            if out is not None and not out.pending and msg.id in self._waiters:
                self._waiters[msg.id].set()

    def _dispatch(self, sends: Send) -> None:
        for node_id, msg in sends:
            self._send(node_id, msg)

    def _alive(self) -> list[str]:
        """The members an event is for: alive or merely suspected (a suspect member is
        usually a slow one; only dead or departed members are left out, as Serf does)."""
        return [m.id for m in self._members.members() if m.state in ("alive", "suspect")]

    async def run(self) -> None:
        """Resend unacknowledged events until cancelled."""
        interval = self._core.config.retransmit_interval / 2
        while True:
            await asyncio.sleep(interval)
            self._dispatch(self._core.tick(time.monotonic()))

    # ------------------------------------------------------------ control

    async def send(
        self, name: str, payload: bytes, *, to: str = "", sender: str = "", wait: float = 0.0
    ) -> dict[str, Any]:
        """Publish an event (``to``: a node name or id, or everyone); with ``wait``,
        return once every expected node acknowledged it or ``wait`` seconds passed."""
        target = "" if to in EVERYONE else self._names.resolve(to)
        if not 0 <= wait <= MAX_WAIT:
            raise ValueError(f"wait must be 0-{MAX_WAIT:g} seconds")
        event_id = uuid.uuid4().hex
        out, sends = self._core.publish(
            time.monotonic(), time.time(), event_id, name, payload, to=target, sender=sender,
            peers=self._alive(),
        )
        self._dispatch(sends)
        if wait > 0 and out.pending:
            done = self._waiters[event_id] = asyncio.Event()
            try:
                await asyncio.wait_for(done.wait(), wait)
            except TimeoutError:
                pass
            finally:
                self._waiters.pop(event_id, None)
        return self.view(out)

    def status(self, event_id: str) -> dict[str, Any] | None:
        out = self._core.outgoing(event_id)
        return None if out is None else self.view(out)

    def view(self, out: Outgoing) -> dict[str, Any]:
        name = self._names.name_of
        event = out.event
        return {
            "id": event.id,
            "name": event.name,
            "to": name(event.to) if event.to else "all",
            "expected": sorted(name(n) or n for n in out.expected),
            "delivered": sorted(name(n) or n for n in out.delivered),
            "pending": sorted(name(n) or n for n in out.pending),
            "resends": out.tries,
        }

    def inbox(self, since: int, name: str, limit: int) -> dict[str, Any]:
        rows = [dict(row) for row in self._core.inbox(since, name, limit)]
        for row in rows:
            row["to"] = (self._names.name_of(row["to"]) or row["to"]) if row["to"] else "all"
        return {
            "events": rows,
            "last_seq": self._core.last_seq,
            "dropped": self._core.dropped,
            "duplicates": self._core.duplicates,
        }
