"""``status``, ``members`` and ``report``: read-only views of this agent (``views.py``)."""

from __future__ import annotations

from typing import Any

from agent.runtime import views
from agent.runtime.ports import Handler
from agent.runtime.views import StatusSources


def handlers(sources: StatusSources) -> dict[str, Handler]:
    async def status(params: dict[str, Any]) -> Any:
        return views.status(sources)

    async def members(params: dict[str, Any]) -> Any:
        return [views.member_row(sources, m) for m in sources.members.members()]

    async def report(params: dict[str, Any]) -> Any:
        return views.report(sources)

    return {"status": status, "members": members, "report": report}
