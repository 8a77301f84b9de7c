"""Control API method handlers (docs/internals.md §4), one module per area.

``status.py`` (status, members, report), ``kv.py``, ``proposals.py``,
``nodes.py`` (drain, leader transfer, shutdown), ``keys.py``, ``replicas.py``
(PBFT's replica group), ``raftlog.py`` (the
Raft log and replication progress for the TUI); the ``task.*``
methods are the task runtime's (``TaskRuntime.handlers``).  Each area takes
the small Protocols of ``ports.py`` it uses, never the agent.

Writes become state-machine commands committed through Raft (forwarded to
the leader from followers); reads are linearizable unless ``stale`` is set.
Every request's params are type-checked against ``METHOD_PARAMS`` before its
handler runs (``stale: "yes"`` is a ``bad_request``, not true).  Parameter
errors raise ``ProtocolError`` or ``ValueError`` (→ ``bad_request``); unknown
ids raise ``TaskError`` (→ ``not_found``); no quorum raises ``NoQuorumError``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agent.control.params import ListOf, MapOf, Schema, check_params
from agent.runtime.handlers import artifacts, events, keys, kv, nodes, proposals, raftlog, replicas, status
from agent.runtime.handlers.artifacts import ReplicaPort
from agent.runtime.handlers.common import check_applied, reader
from agent.runtime.handlers.events import EventsPort, TopologyPort
from agent.runtime.leader_wait import REQUEST_TIMEOUT, request_timeout_param
from agent.runtime.ports import (
    ControlConsensus,
    ControlReads,
    Handler,
    KeyringPort,
    NodeNamer,
    TaskHandlers,
)
from agent.runtime.sched_submit import CommitBatcher, submit_many
from agent.runtime.views import StatusSources

__all__ = ["METHOD_PARAMS", "ControlPorts", "Handler", "build_handlers", "strict"]

_RID: Schema = {"rid": str}
_KV: Schema = {"ns": str, "key": str}
_READ: Schema = {"stale": bool}
_VALUE = (bytes, str)  # a str value is stored as its UTF-8 bytes

METHOD_PARAMS: dict[str, Schema] = {
    "status": {},
    "members": {},
    "report": {"timeframe": str},
    "metrics.history": {"timeframe": str, "points": int},
    "kv.get": {**_KV, **_READ},
    "kv.list": {"ns": str, "prefix": str, **_READ},
    "kv.put": {**_KV, "value": _VALUE, "ttl": float, **_RID},
    "kv.search": {"ns": str, "pattern": str, **_READ},
    "kv.delete": {**_KV, **_RID},
    "kv.cas": {**_KV, "expected": _VALUE, "value": _VALUE, **_RID},
    "proposal.create": {"title": str, "body": str, "threshold": float, **_RID},
    "proposal.vote": {"id": int, "approve": bool, **_RID},
    "proposal.list": _READ,
    "node.drain": {"node": str, **_RID},
    "node.undrain": {"node": str, **_RID},
    "leader.transfer": {"to": str},
    "consensus.log": {"after": int, "limit": int},
    "consensus.progress": {},
    "keys.list": {},
    "keys.install": {"key": str},
    "keys.use": {"key_id": str},
    "keys.remove": {"key_id": str},
    "shutdown": {},
    "events.send": {"name": str, "payload": _VALUE, "to": str, "from": str, "wait": float},
    "events.list": {"since": int, "name": str, "limit": int},
    "events.status": {"id": str},
    "topology.optimize": {"apply": bool, "avoid": str},
    "task.submit": {
        "argv": ListOf(str), "shell": str, "env": MapOf(str), "cwd": str, "caps": ListOf(str),
        "key": str, "strategy": str, "priority": int, "retries": int, "timeout": float,
        "restartable": bool, "mem": int, "pids": int, "artifacts": ListOf(str), **_RID,
    },
    "task.submit_many": {"tasks": ListOf(dict)},
    "task.list": _READ,
    "task.get": {"id": str, **_READ},
    "task.cancel": {"id": str, **_RID},
    "task.logs": {"id": str, "stream": str, "offset": int, "attempt": int},
    "artifact.list": {"id": str, "attempt": int},
    "artifact.get": {"id": str, "name": str, "attempt": int, "offset": int},
    "replicas.prune": {"older_than": float},
    "replicas.list": {},
    "replicas.replace": {"old": str, "new": str},
}
"""Every control method's params and their kinds, in one place (see
``agent.control.params.check_params``: strict, ``None`` is absent, params not
named here are ignored).  A method added to the API must be added here."""


def strict(method: str, handler: Handler) -> Handler:
    """``handler`` behind a check of its params against ``METHOD_PARAMS[method]``.

    Plain (not async) so a future-returning handler stays one: a bad param
    raises straight out of the call, which the server answers ``bad_request``.
    """
    schema = METHOD_PARAMS.get(method)
    if schema is None:
        raise LookupError(f"control method {method!r} has no entry in METHOD_PARAMS")

    def checked(params: dict[str, Any]) -> Awaitable[Any]:
        check_params(method, params, schema)
        timeout = request_timeout_param(params.get("request_timeout"))
        if timeout is None:
            return handler(params)
        # The client's request timeout reaches the Raft driver's leader wait
        # (leader_wait.py): set around the call for a future-returning handler
        # (its task copies the context), inside the coroutine for the others.
        token = REQUEST_TIMEOUT.set(timeout)
        try:
            result = handler(params)
        finally:
            REQUEST_TIMEOUT.reset(token)
        return _within(result, timeout) if inspect.iscoroutine(result) else result

    return checked


async def _within(coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
    token = REQUEST_TIMEOUT.set(timeout)  # the running task's context, for this request
    try:
        return await coro
    finally:
        REQUEST_TIMEOUT.reset(token)


@dataclass(frozen=True, slots=True)
class ControlPorts:
    """Everything the control methods reach, as narrow interfaces."""

    consensus: ControlConsensus
    state: ControlReads
    """The replicated state, read-only."""
    names: NodeNamer
    keyring: KeyringPort
    sources: StatusSources
    tasks: TaskHandlers
    node_id: str
    node_name: str
    eligible_voters: Callable[[], int]
    """How many members may vote on a proposal now (the alive ones)."""
    stop: Callable[[], None]
    """Ask the agent to shut down."""
    replicas: ReplicaPort | None = None
    """Output and artifact copies (``artifact.*``, ``replicas.prune``)."""
    events: EventsPort | None = None
    """User events (``runtime/events_driver.py``); None: the ``events.*`` methods refuse."""
    topology: TopologyPort | None = None
    """Leader placement by RTT (``runtime/topology.py``); None: ``topology.optimize`` refuses."""


def build_handlers(ports: ControlPorts) -> dict[str, Handler]:
    """Every control method, each behind its param check (``strict``)."""
    raft = ports.consensus
    handlers: dict[str, Handler] = {
        **status.handlers(ports.sources),
        **kv.handlers(raft, ports.state),
        **proposals.handlers(
            raft, ports.state, voter_name=ports.node_name, eligible_voters=ports.eligible_voters
        ),
        **nodes.handlers(raft, raft, ports.names, node_id=ports.node_id, stop=ports.stop),
        **keys.handlers(ports.keyring),
        **events.handlers(ports.events, ports.topology),
        **raftlog.handlers(raft, ports.names),
        # A client's task writes that arrive together commit as one batch entry.
        **ports.tasks.handlers(
            CommitBatcher(ports.tasks.compatible(lambda cmd: raft.propose(cmd)), check_applied).commit,
            reader(raft),
        ),
        **artifacts.handlers(ports.replicas),
        **replicas.handlers(raft if isinstance(raft, replicas.ReplicaSetPort) else None, ports.names),
    }
    # Many tasks in one request, each checked and committed as its own task.submit.
    handlers["task.submit_many"] = submit_many(handlers["task.submit"], METHOD_PARAMS["task.submit"])
    return {method: strict(method, handler) for method, handler in handlers.items()}
