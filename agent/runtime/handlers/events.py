"""``events.*`` (user events, Serf-style) and ``topology.optimize``.

``events.send {name, payload, to, from, wait}`` publishes an event to one node
(a name or id) or to every node (``to`` "all" or empty) and, with ``wait``
seconds, answers once every expected node acknowledged it: ``{id, name, to,
expected, delivered, pending, resends}`` (node names).  ``events.list {since,
name, limit}`` reads the events this node received, oldest first, each with
a local ``seq`` (pass the last one as ``since`` to poll).  ``events.status
{id}`` is the delivery of an event this node sent.  ``topology.optimize
{apply, avoid}`` scores the voters by RTT and moves leadership to the closest one
when that is a clear gain (``runtime/topology.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.errors import LocalError, TaskError
from agent.runtime.handlers.common import param_bytes, param_str
from agent.runtime.ports import Handler


class EventsPort(Protocol):
    """The user-events driver (``runtime/events_driver.py``) as the methods use it."""

    async def send(
        self, name: str, payload: bytes, *, to: str = ..., sender: str = ..., wait: float = ...
    ) -> dict[str, Any]: ...

    def status(self, event_id: str) -> dict[str, Any] | None: ...

    def inbox(self, since: int, name: str, limit: int) -> dict[str, Any]: ...


class TopologyPort(Protocol):
    """``runtime/topology.py`` as ``topology.optimize`` uses it."""

    async def optimize(self, apply: bool = ..., avoid: str = ...) -> dict[str, Any]: ...


MAX_LIST = 1000
"""Most events one ``events.list`` returns."""


def handlers(events_port: EventsPort | None, topology_port: TopologyPort | None) -> dict[str, Handler]:
    """``None`` for a part this agent does not run: its methods answer an error."""

    def need_events() -> EventsPort:
        if events_port is None:
            raise LocalError("user events are not running on this agent")
        return events_port

    def need_topology() -> TopologyPort:
        if topology_port is None:
            raise LocalError("topology optimisation is not running on this agent")
        return topology_port

    async def events_send(params: dict[str, Any]) -> Any:
        payload = param_bytes(params, "payload") if params.get("payload") is not None else b""
        return await need_events().send(
            param_str(params, "name"), payload, to=param_str(params, "to", ""),
            sender=param_str(params, "from", ""), wait=float(params.get("wait") or 0.0),
        )

    async def events_list(params: dict[str, Any]) -> Any:
        since = int(params.get("since") or 0)
        limit = min(MAX_LIST, int(params.get("limit") or MAX_LIST))
        return need_events().inbox(since, param_str(params, "name", ""), limit)

    async def events_status(params: dict[str, Any]) -> Any:
        event_id = param_str(params, "id")
        found = need_events().status(event_id)
        if found is None:
            raise TaskError(f"event {event_id} not found (not sent from this node, or forgotten)")
        return found

    async def topology_optimize(params: dict[str, Any]) -> Any:
        apply = params.get("apply")
        return await need_topology().optimize(
            apply=True if apply is None else bool(apply), avoid=param_str(params, "avoid", ""))

    return {
        "events.send": events_send,
        "events.list": events_list,
        "events.status": events_status,
        "topology.optimize": topology_optimize,
    }
