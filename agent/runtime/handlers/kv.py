"""``kv.*``: the replicated key-value namespaces.

A ``kv.put`` with ``ttl`` (seconds) commits ``kv.put_ttl``: the key expires
``ttl`` after the command's time, the leader commits its removal
(``runtime/kv_expiry.py``), and reads here never show it past its expiry.
``kv.search`` takes a glob (``*``, ``?``, ``[...]``) or a prefix.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from agent.control.pending import Pending
from agent.runtime.handlers.common import (
    applied_value,
    param_bytes,
    param_str,
    reader,
    request_id,
)
from agent.runtime.ports import Handler, KvReads, Proposer
from agent.state.commands import (
    Command,
    KvCas,
    KvDelete,
    KvPut,
    KvPutTtl,
    PutRow,
    encode_command_decoded,
    put_command,
    usual_put,
)
from agent.state.machine import ApplyResult, ValueIfOk


@runtime_checkable
class DecodedSubmit(Protocol):
    """A proposer that takes a validated command before it is encoded (the Raft
    driver: ``consensus_requests.submit_decoded``), so a leader's ``kv.put`` that
    goes out in a ``kv.puts`` entry is never packed on its own."""

    def submit_decoded(
        self, decoded: Command | PutRow, finish: Callable[[ApplyResult], Any] | None = None
    ) -> Pending[Any] | asyncio.Future[Any]: ...


def handlers(raft: Proposer, state: KvReads) -> dict[str, Handler]:
    read = reader(raft)
    submit_decoded = raft.submit_decoded if isinstance(raft, DecodedSubmit) else None
    put_value = ValueIfOk(applied_value)  # applied_value's answer; an ok row's value at once

    def commit_value(
        body: KvPut | KvPutTtl | KvDelete | KvCas, rid: str
    ) -> Pending[Any] | asyncio.Future[Any]:
        # The KV writes' path: a Pending the leader resolves from its apply loop to
        # the result's value, no coroutine, task or loop handle per write (see
        # ControlServer; a follower's is the task forwarding it);
        # the leader applies the decoded command it keeps instead of decoding.
        data, decoded = encode_command_decoded(body, rid, time.time())
        return raft.submit(data, finish=applied_value, decoded=decoded)

    async def kv_get(params: dict[str, Any]) -> Any:
        await read(params)
        ns, key = param_str(params, "ns", "default"), param_str(params, "key")
        entry = state.kv_get(ns, key)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= time.time()):
            return {"value": None, "found": False, "index": state.applied_index}
        found = {"value": entry.value, "found": True, "index": entry.mod_index}
        return found if entry.expires_at is None else {**found, "expires_at": entry.expires_at}

    async def kv_list(params: dict[str, Any]) -> Any:
        await read(params)
        ns, prefix = param_str(params, "ns", "default"), param_str(params, "prefix", "")
        return {"items": state.kv_list(ns, prefix, now=time.time())}

    async def kv_search(params: dict[str, Any]) -> Any:
        await read(params)
        ns, pattern = param_str(params, "ns", "default"), param_str(params, "pattern", "")
        return {"items": state.kv_search(ns, pattern, time.time())}

    def kv_put(params: dict[str, Any]) -> Pending[Any] | asyncio.Future[Any]:
        if submit_decoded is not None:
            # The usual put (every param of its exact type, a rid, no ttl): the
            # checks below would pass and keep these values, so its row goes at
            # once; anything else takes them, with their refusals.
            get = params.get
            ns, key, value, rid = get("ns", "default"), get("key"), get("value"), get("rid")
            if (
                type(ns) is str and type(key) is str and type(value) is bytes
                and type(rid) is str and rid and get("ttl") is None
            ):
                at = time.time()
                if usual_put(rid, at, ns, key, value):
                    return submit_decoded((rid, at, ns, key, value), put_value)
        ns, key = param_str(params, "ns", "default"), param_str(params, "key")
        value, ttl = param_bytes(params, "value"), params.get("ttl")
        if ttl is None or ttl == 0:
            if submit_decoded is not None:  # validated here, encoded only if needed
                rid, at = request_id(params), time.time()
                if usual_put(rid, at, ns, key, value):  # as its row: no objects made
                    return submit_decoded((rid, at, ns, key, value), put_value)
                return submit_decoded(put_command(ns, key, value, rid, at), put_value)
            return commit_value(KvPut(ns, key, value), request_id(params))
        ttl_ms = round(float(ttl) * 1000) if math.isfinite(float(ttl)) else 0
        if ttl_ms < 1:
            raise ValueError("parameter 'ttl' must be a positive number of seconds")
        return commit_value(KvPutTtl(ns, key, value, ttl_ms), request_id(params))

    def kv_delete(params: dict[str, Any]) -> Pending[Any] | asyncio.Future[Any]:
        ns, key = param_str(params, "ns", "default"), param_str(params, "key")
        return commit_value(KvDelete(ns, key), request_id(params))

    def kv_cas(params: dict[str, Any]) -> Pending[Any] | asyncio.Future[Any]:
        expected = params.get("expected")
        body = KvCas(
            param_str(params, "ns", "default"), param_str(params, "key"),
            None if expected is None else param_bytes(params, "expected"),
            param_bytes(params, "value"),
        )
        return commit_value(body, request_id(params))

    return {
        "kv.get": kv_get,
        "kv.put": kv_put,
        "kv.delete": kv_delete,
        "kv.cas": kv_cas,
        "kv.list": kv_list,
        "kv.search": kv_search,
    }
