"""Control API method handlers (docs/internals.md §4).

Writes become state-machine commands committed through Raft (forwarded to
the leader from followers); reads are linearizable unless ``stale`` is set.
Every request's params are type-checked against ``METHOD_PARAMS`` before its
handler runs (``stale: "yes"`` is a ``bad_request``, not true).  Parameter
errors raise ``ProtocolError`` or ``ValueError`` (→ ``bad_request``); unknown
ids raise ``TaskError`` (→ ``not_found``); no quorum raises ``NoQuorumError``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent.control.params import ListOf, MapOf, Schema, check_params
from agent.crypto import decode_key
from agent.errors import LocalError, TaskError
from agent.runtime import views
from agent.state import builders
from agent.state.commands import KvCas, KvDelete, KvPut, encode_command_decoded
from agent.state.machine import ApplyResult

if TYPE_CHECKING:
    from agent.runtime.agent import Agent

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

_RID: Schema = {"rid": str}
_KV: Schema = {"ns": str, "key": str}
_READ: Schema = {"stale": bool}
_VALUE = (bytes, str)  # a str value is stored as its UTF-8 bytes

METHOD_PARAMS: dict[str, Schema] = {
    "status": {},
    "members": {},
    "report": {},
    "kv.get": {**_KV, **_READ},
    "kv.list": {"ns": str, "prefix": str, **_READ},
    "kv.put": {**_KV, "value": _VALUE, **_RID},
    "kv.delete": {**_KV, **_RID},
    "kv.cas": {**_KV, "expected": _VALUE, "value": _VALUE, **_RID},
    "proposal.create": {"title": str, "body": str, "threshold": float, **_RID},
    "proposal.vote": {"id": int, "approve": bool, **_RID},
    "proposal.list": _READ,
    "node.drain": {"node": str, **_RID},
    "node.undrain": {"node": str, **_RID},
    "leader.transfer": {"to": str},
    "keys.list": {},
    "keys.install": {"key": str},
    "keys.use": {"key_id": str},
    "keys.remove": {"key_id": str},
    "shutdown": {},
    "task.submit": {
        "argv": ListOf(str), "shell": str, "env": MapOf(str), "cwd": str, "caps": ListOf(str),
        "key": str, "strategy": str, "priority": int, "retries": int, "timeout": float,
        "restartable": bool, "mem": int, "pids": int, **_RID,
    },
    "task.list": _READ,
    "task.get": {"id": str, **_READ},
    "task.cancel": {"id": str, **_RID},
    "task.logs": {"id": str, "stream": str, "offset": int},
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
        return handler(params)

    return checked


def _str(params: dict[str, Any], name: str, default: str | None = None) -> str:
    value = params.get(name, default)
    if not isinstance(value, str):
        raise ValueError(f"parameter {name!r} must be a string")
    return value


def _bytes(params: dict[str, Any], name: str) -> bytes:
    value = params.get(name)
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, bytes):
        raise ValueError(f"parameter {name!r} must be bytes")
    return value


def _rid(params: dict[str, Any]) -> str:
    rid = params.get("rid") or uuid.uuid4().hex
    if not isinstance(rid, str) or len(rid) > 128:
        raise ValueError("parameter 'rid' must be a string of at most 128 characters")
    return rid


def _check_applied(result: ApplyResult) -> None:
    if not result.ok:
        message = result.error or "rejected"
        if "unknown" in message or "not found" in message:
            raise TaskError(message)
        raise ValueError(message)


def _applied_value(result: ApplyResult) -> Any:
    _check_applied(result)
    return result.value


def build_handlers(agent: Agent) -> dict[str, Handler]:
    consensus = agent.consensus
    state = consensus.state

    async def commit(command: bytes) -> ApplyResult:
        result = await consensus.propose(command, agent.send_to_node)
        _check_applied(result)
        return result

    def commit_value(body: KvPut | KvDelete | KvCas, rid: str) -> asyncio.Future[Any]:
        # The KV writes' path: a future resolved from the apply loop to the
        # result's value, no coroutine or task per write (see ControlServer);
        # the leader applies the decoded command it keeps instead of decoding.
        data, decoded = encode_command_decoded(body, rid, time.time())
        return consensus.submit(data, agent.send_to_node, _applied_value, decoded)

    async def read(params: dict[str, Any]) -> None:
        if not params.get("stale", False):
            await consensus.read_barrier()

    async def status(params: dict[str, Any]) -> Any:
        return views.status(agent)

    async def members(params: dict[str, Any]) -> Any:
        return [views.member_row(agent, m) for m in agent.membership.members()]

    async def report(params: dict[str, Any]) -> Any:
        return views.report(agent)

    async def kv_get(params: dict[str, Any]) -> Any:
        await read(params)
        entry = state.kv_get(_str(params, "ns", "default"), _str(params, "key"))
        if entry is None:
            return {"value": None, "found": False, "index": state.applied_index}
        return {"value": entry.value, "found": True, "index": entry.mod_index}

    async def kv_list(params: dict[str, Any]) -> Any:
        await read(params)
        return {"items": state.kv_list(_str(params, "ns", "default"), _str(params, "prefix", ""))}

    def kv_put(params: dict[str, Any]) -> asyncio.Future[Any]:
        body = KvPut(_str(params, "ns", "default"), _str(params, "key"), _bytes(params, "value"))
        return commit_value(body, _rid(params))

    def kv_delete(params: dict[str, Any]) -> asyncio.Future[Any]:
        return commit_value(KvDelete(_str(params, "ns", "default"), _str(params, "key")), _rid(params))

    def kv_cas(params: dict[str, Any]) -> asyncio.Future[Any]:
        expected = params.get("expected")
        body = KvCas(
            _str(params, "ns", "default"), _str(params, "key"),
            None if expected is None else _bytes(params, "expected"), _bytes(params, "value"),
        )
        return commit_value(body, _rid(params))

    def eligible_voters() -> int:
        return sum(1 for m in agent.membership.members() if m.state == "alive")

    async def proposal_create(params: dict[str, Any]) -> Any:
        threshold = float(params.get("threshold", 0.67))
        cmd = builders.cmd_proposal_create(
            _str(params, "title"), _str(params, "body", ""), agent.config.name,
            _rid(params), time.time(), threshold=threshold, eligible=eligible_voters(),
        )
        return (await commit(cmd)).value

    async def proposal_vote(params: dict[str, Any]) -> Any:
        raw_id = params.get("id")
        try:
            proposal_id = int(raw_id)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"bad proposal id {raw_id!r}") from None
        proposal = state.proposal(proposal_id)
        if proposal is None:
            raise TaskError(f"no proposal {proposal_id}")
        from agent.state.proposals import validate_proposal

        problem = validate_proposal(proposal)
        if problem is not None and params.get("approve"):
            # Agents validate a proposal locally before approving it.
            raise ValueError(f"refusing to approve proposal {proposal_id}: {problem}")
        cmd = builders.cmd_proposal_vote(
            proposal_id, agent.config.name, bool(params.get("approve")), _rid(params),
            time.time(), eligible=eligible_voters(),
        )
        return (await commit(cmd)).value

    async def proposal_list(params: dict[str, Any]) -> Any:
        await read(params)
        return state.proposal_rows()

    async def node_drain(params: dict[str, Any]) -> Any:
        node = _resolve_node(agent, _str(params, "node"))
        return (await commit(builders.cmd_node_drain(node, _rid(params), time.time()))).value

    async def node_undrain(params: dict[str, Any]) -> Any:
        node = _resolve_node(agent, _str(params, "node"))
        return (await commit(builders.cmd_node_undrain(node, _rid(params), time.time()))).value

    async def leader_transfer(params: dict[str, Any]) -> Any:
        to = params.get("to")
        if not consensus.node.is_leader():
            raise LocalError("leadership transfer must be asked of the leader "
                             f"({views.name_of(agent, consensus.node.leader_id)})")
        if to:
            target = _resolve_node(agent, str(to))
        else:
            others = [v for v in consensus.node.conf.voters if v != agent.node_id]
            if not others:
                raise LocalError("no other voter to transfer leadership to")
            target = others[0]
        consensus.node.transfer_leadership(target)
        consensus.wake()
        return {"to": views.name_of(agent, target)}

    async def keys_list(params: dict[str, Any]) -> Any:
        return _keys_view(agent)

    async def keys_install(params: dict[str, Any]) -> Any:
        agent.transport.keyring.install(decode_key(_str(params, "key")))
        return _keys_view(agent)

    async def keys_use(params: dict[str, Any]) -> Any:
        agent.transport.keyring.use(_str(params, "key_id"))
        return _keys_view(agent)

    async def keys_remove(params: dict[str, Any]) -> Any:
        agent.transport.keyring.remove(_str(params, "key_id"))
        return _keys_view(agent)

    async def shutdown(params: dict[str, Any]) -> Any:
        agent.request_stop()
        return {}

    handlers: dict[str, Handler] = {
        "status": status,
        "members": members,
        "report": report,
        "kv.get": kv_get,
        "kv.put": kv_put,
        "kv.delete": kv_delete,
        "kv.cas": kv_cas,
        "kv.list": kv_list,
        "proposal.create": proposal_create,
        "proposal.vote": proposal_vote,
        "proposal.list": proposal_list,
        "node.drain": node_drain,
        "node.undrain": node_undrain,
        "leader.transfer": leader_transfer,
        "keys.list": keys_list,
        "keys.install": keys_install,
        "keys.use": keys_use,
        "keys.remove": keys_remove,
        "shutdown": shutdown,
    }
    handlers.update(agent.tasks.handlers(commit, read))
    return {method: strict(method, handler) for method, handler in handlers.items()}


def _resolve_node(agent: Agent, id_or_name: str) -> str:
    for m in agent.membership.members():
        if id_or_name in (m.id, m.meta.name):
            return m.id
    node = agent.consensus.state.resolve_node(id_or_name)
    if node is None:
        raise TaskError(f"unknown node {id_or_name!r}")
    return node


def _keys_view(agent: Agent) -> dict[str, Any]:
    ring = agent.transport.keyring
    return {"keys": [{"id": k.key_id, "primary": k.primary} for k in ring.list()]}
