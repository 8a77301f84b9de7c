"""Node names: from a node id to what an operator calls it, and back.

SWIM's member list knows every live node's name (its metadata); the
replicated state knows every node that ever registered, including ones gone
from the member list.  Both are asked, SWIM first (it is current).
"""

from __future__ import annotations

from agent.errors import TaskError
from agent.runtime.ports import Members, StateQueries


class NodeNames:
    """Node ids and names, resolved against the member list, then the state."""

    def __init__(self, members: Members, state: StateQueries) -> None:
        self._members = members
        self._state = state

    def name_of(self, node_id: str | None) -> str | None:
        """The display name of ``node_id`` (its id if it never registered; None for none)."""
        if not node_id:
            return None
        member = self._members.member(node_id)
        if member is not None:
            return member.meta.name
        return self._state.name_of(node_id)

    def resolve(self, id_or_name: str) -> str:
        """The node id an operator means by ``id_or_name``; ``TaskError`` if none."""
        for m in self._members.members():
            if id_or_name in (m.id, m.meta.name):
                return m.id
        node = self._state.resolve_node(id_or_name)
        if node is None:
            raise TaskError(f"unknown node {id_or_name!r}")
        return node
