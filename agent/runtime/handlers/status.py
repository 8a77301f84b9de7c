"""``status``, ``members``, ``report`` and ``metrics.history``: read-only views of
this agent (``views.py``; the metrics and their history: ``agent/metrics/``)."""

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
        return views.report(sources, params.get("timeframe") or None)

    async def metrics_history(params: dict[str, Any]) -> Any:
        if sources.metrics is None:
            raise ValueError("this agent keeps no metrics history")
        points = int(params.get("points") or 120)
        return sources.metrics.history_view(params.get("timeframe") or "10m", points)

    return {"status": status, "members": members, "report": report, "metrics.history": metrics_history}
