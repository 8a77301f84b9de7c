"""``keys.*``: the cluster keyring -- install, switch the sealing key, remove."""

from __future__ import annotations

from typing import Any

from agent.crypto import decode_key
from agent.runtime.handlers.common import param_str
from agent.runtime.ports import Handler, KeyringPort


def handlers(keyring: KeyringPort) -> dict[str, Handler]:
    def view() -> dict[str, Any]:
        return {"keys": [{"id": k.key_id, "primary": k.primary} for k in keyring.list()]}

    async def keys_list(params: dict[str, Any]) -> Any:
        return view()

    async def keys_install(params: dict[str, Any]) -> Any:
        keyring.install(decode_key(param_str(params, "key")))
        return view()

    async def keys_use(params: dict[str, Any]) -> Any:
        keyring.use(param_str(params, "key_id"))
        return view()

    async def keys_remove(params: dict[str, Any]) -> Any:
        keyring.remove(param_str(params, "key_id"))
        return view()

    return {
        "keys.list": keys_list,
        "keys.install": keys_install,
        "keys.use": keys_use,
        "keys.remove": keys_remove,
    }
