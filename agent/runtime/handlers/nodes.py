"""``node.*``, ``leader.transfer`` and ``shutdown``: the cluster's nodes and this one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.errors import LocalError
from agent.runtime.handlers.common import committer, param_str, request_id
from agent.runtime.ports import Handler, Leadership, NodeNamer, Proposer
from agent.state import builders


def handlers(
    raft: Proposer,
    leadership: Leadership,
    names: NodeNamer,
    *,
    node_id: str,
    stop: Callable[[], None],
) -> dict[str, Handler]:
    """``node_id``: this node; ``stop()`` asks the agent to shut down."""
    commit = committer(raft)

    async def node_drain(params: dict[str, Any]) -> Any:
        node = names.resolve(param_str(params, "node"))
        return (await commit(builders.cmd_node_drain(node, request_id(params), time.time()))).value

    async def node_undrain(params: dict[str, Any]) -> Any:
        node = names.resolve(param_str(params, "node"))
        return (await commit(builders.cmd_node_undrain(node, request_id(params), time.time()))).value

    async def leader_transfer(params: dict[str, Any]) -> Any:
        to = params.get("to")
        if not leadership.is_leader():
            raise LocalError("leadership transfer must be asked of the leader "
                             f"({names.name_of(leadership.leader_id)})")
        if to:
            target = names.resolve(str(to))
        else:
            others = [v for v in leadership.voters() if v != node_id]
            if not others:
                raise LocalError("no other voter to transfer leadership to")
            target = others[0]
        leadership.transfer_leadership(target)
        return {"to": names.name_of(target)}

    async def shutdown(params: dict[str, Any]) -> Any:
        stop()
        return {}

    return {
        "node.drain": node_drain,
        "node.undrain": node_undrain,
        "leader.transfer": leader_transfer,
        "shutdown": shutdown,
    }
