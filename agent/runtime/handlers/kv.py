"""``kv.*``: the replicated key-value namespaces."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agent.runtime.handlers.common import (
    applied_value,
    param_bytes,
    param_str,
    reader,
    request_id,
)
from agent.runtime.ports import Handler, KvReads, Proposer
from agent.state.commands import KvCas, KvDelete, KvPut, encode_command_decoded


def handlers(raft: Proposer, state: KvReads) -> dict[str, Handler]:
    read = reader(raft)

    def commit_value(body: KvPut | KvDelete | KvCas, rid: str) -> asyncio.Future[Any]:
        # The KV writes' path: a future resolved from the apply loop to the
        # result's value, no coroutine or task per write (see ControlServer);
        # the leader applies the decoded command it keeps instead of decoding.
        data, decoded = encode_command_decoded(body, rid, time.time())
        return raft.submit(data, finish=applied_value, decoded=decoded)

    async def kv_get(params: dict[str, Any]) -> Any:
        await read(params)
        entry = state.kv_get(param_str(params, "ns", "default"), param_str(params, "key"))
        if entry is None:
            return {"value": None, "found": False, "index": state.applied_index}
        return {"value": entry.value, "found": True, "index": entry.mod_index}

    async def kv_list(params: dict[str, Any]) -> Any:
        await read(params)
        ns, prefix = param_str(params, "ns", "default"), param_str(params, "prefix", "")
        return {"items": state.kv_list(ns, prefix)}

    def kv_put(params: dict[str, Any]) -> asyncio.Future[Any]:
        ns, key = param_str(params, "ns", "default"), param_str(params, "key")
        return commit_value(KvPut(ns, key, param_bytes(params, "value")), request_id(params))

    def kv_delete(params: dict[str, Any]) -> asyncio.Future[Any]:
        ns, key = param_str(params, "ns", "default"), param_str(params, "key")
        return commit_value(KvDelete(ns, key), request_id(params))

    def kv_cas(params: dict[str, Any]) -> asyncio.Future[Any]:
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
    }
