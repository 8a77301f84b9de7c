"""``replicas.list`` and ``replicas.replace``: PBFT's replica group (issue 13).

The replica set changes only by this explicit command, agreed through PBFT
itself (``agent/pbft/reconfig.py``; the runtime side is
``agent/runtime/pbft_roles.py``): the request is ordered like any other, every
correct replica decides it the same way, and it takes effect at the next
checkpoint boundary.  A cluster on Raft refuses both methods with one line.
Names or ids are accepted for OLD and NEW; refusals are one line
(``bad_request``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from agent.errors import TaskError
from agent.runtime.handlers.common import param_str
from agent.runtime.ports import Handler, NodeNamer


@runtime_checkable
class ReplicaSetPort(Protocol):
    """What the PBFT driver offers (``PbftRoles``)."""

    def replica_set(self) -> dict[str, Any]: ...

    async def replace_replica(self, old: str, new: str) -> dict[str, Any]: ...


NOT_PBFT = "replicas: this cluster runs Raft; the replica group is PBFT's (consensus = \"pbft\")"


def handlers(port: ReplicaSetPort | None, names: NodeNamer) -> dict[str, Handler]:
    """``port``: the PBFT driver, or None under Raft (both methods refuse)."""

    def named(rows: list[str]) -> list[dict[str, str]]:
        return [{"id": node, "name": names.name_of(node) or node} for node in rows]

    async def replicas_list(params: dict[str, Any]) -> Any:
        if port is None:
            raise ValueError(NOT_PBFT)
        view = port.replica_set()
        pending = view.get("pending")
        return {
            **view,
            "replicas": named(view["replicas"]),
            "followers": named(view["followers"]),
            "pending": {**pending, "replicas": named(pending["replicas"])} if pending else None,
        }

    async def replicas_replace(params: dict[str, Any]) -> Any:
        if port is None:
            raise ValueError(NOT_PBFT)
        old = _resolve(names, param_str(params, "old"))
        new = _resolve(names, param_str(params, "new"))
        done = await port.replace_replica(old, new)
        return {
            "old": names.name_of(old) or old,
            "new": names.name_of(new) or new,
            "effective_after": done.get("effective_after"),
        }

    return {"replicas.list": replicas_list, "replicas.replace": replicas_replace}


def _resolve(names: NodeNamer, who: str) -> str:
    """A node name or id -> its id (an unknown name is left as given, so the
    driver's checks say what is wrong with it)."""
    try:
        return names.resolve(who)
    except TaskError:
        return who
