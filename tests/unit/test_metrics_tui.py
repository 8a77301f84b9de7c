"""Issue 15: the TUI's sparklines and Metrics view, drawn from the agent's history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from support.wait import wait_until_async
from textual.widgets import Static
from tui.tui_helpers import static_text

from meshtui.app import MeshApp
from meshtui.screens.metrics import MetricsScreen
from meshtui.widgets.sparkline import BLOCKS, Sparkline, sparkline

STATUS = {
    "node": "n1", "id": "id-n1", "addr": "127.0.0.1:1", "members": [],
    "consensus": {"engine": "raft", "role": "leader", "term": 2, "leader": "n1", "commit_index": 5,
                  "applied_index": 5, "voters": ["n1"], "learners": [], "paused": False},
    "tasks": {"queued": 0, "running": 0, "done": 0, "failed": 0},
    "partitioned": False, "read_only": False, "alarms": [],
}


def test_sparkline_scales_resamples_and_shows_gaps() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == BLOCKS
    assert sparkline([], 4) == "    "
    assert sparkline([None, 2.0, None, 2.0], 4) == " " + BLOCKS[-1] + " " + BLOCKS[-1]
    assert sparkline([3.0] * 10, 5) == BLOCKS[-1] * 5  # flat, scaled from zero
    assert sparkline([3.0] * 10, 5, zero_based=False) == BLOCKS[len(BLOCKS) // 2] * 5
    assert sparkline([0.0] * 3, 3) == BLOCKS[0] * 3
    assert len(sparkline(list(range(1000)), 40)) == 40  # resampled to the width
    assert sparkline([-1.0, 1.0], 2) == BLOCKS[0] + BLOCKS[-1]  # negative: min..max


class FakeAgent:
    """A control client answering the calls the app and the Metrics view make."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.alive = asyncio.Event()

    async def call(self, method: str, **params: Any) -> Any:
        self.calls.append((method, params))
        if method == "status":
            return STATUS
        if method == "metrics.history":
            return {"timeframe": 600.0, "step": 1, "bucket_s": 5.0, "start": 0.0,
                    "series": {"members_alive": [3.0, 3.0, 2.0, None, 3.0], "hotspots": [0.0, 1.0]}}
        if method == "report":
            return {"leader_changes": 4, "throughput_msgs_per_s": {"10s": 120.5, "1m": 99.0},
                    "hotspots": ["n2"], "partition_recovery_s": 1.25, "crash_tolerance_f": 1,
                    "byzantine_tolerance_f": 0, "vote_participation": 0.6667}
        return []

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        await self.alive.wait()
        if False:  # pragma: no cover - an async generator that yields nothing
            yield {}

    def subscribe(self, topics: list[str]) -> AsyncIterator[dict[str, Any]]:
        return self._events()

    async def close(self) -> None:
        self.alive.set()


async def test_metrics_view_draws_the_history_and_the_report() -> None:
    agent = FakeAgent()

    async def factory() -> FakeAgent:
        return agent

    app = MeshApp(factory, "fake://n1", status_interval=3600.0, backoff=(0.05, 0.2))  # type: ignore[arg-type]
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until_async("connected", lambda: app.client is not None, 10, 0.02, sleep=pilot.pause)
        await pilot.press("5")
        await wait_until_async("metrics screen", lambda: isinstance(app.screen, MetricsScreen), 10, 0.02,
                               sleep=pilot.pause)
        screen = app.screen
        assert isinstance(screen, MetricsScreen)
        await wait_until_async("history drawn", lambda: screen.query_one("#spark-members_alive", Sparkline)
                               .values == [3.0, 3.0, 2.0, None, 3.0], 10, 0.02, sleep=pilot.pause)
        figures = static_text(screen.query_one("#metrics-figures", Static))
        assert "leader changes 4" in figures and "n2" in figures and "1.25" in figures
        history_calls = [p for m, p in agent.calls if m == "metrics.history"]
        assert history_calls and history_calls[-1]["timeframe"] == "10m"
        await pilot.press("t")  # next timeframe
        def asked_1h() -> bool:
            return any(p.get("timeframe") == "1h" for m, p in agent.calls if m == "metrics.history")

        await wait_until_async("1h asked", asked_1h, 10, 0.02, sleep=pilot.pause)
